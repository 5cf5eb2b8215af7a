Feature: Nobody gets in: every client of the bus speaks only as the role it holds

  rbee up makes the cluster's NATS identities and starts nats-server requiring them. Each role may
  publish and subscribe only its own subjects, and the server enforces it. Every attack below is
  tried by a client without credentials and by clients holding the wrong role; each is refused by
  the server, the log does not change and the cluster goes on serving.

  @SEC-7
  Scenario Outline: Nobody but the queen and the serving worker reads prompts or tokens
    Given a running cluster
    When a client <who> subscribes to "rbee.work.>" and "rbee.tok.>"
    Then nats-server refuses that client
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"
    And that client received no message

    Examples:
      | who                         |
      | without credentials         |
      | as the operator             |
      | as a worker of its node     |
      | as the hive of another node |

  @SEC-8
  Scenario Outline: Nobody streams tokens under the serving worker's name
    Given a running cluster
    When a client <who> publishes a token frame as the serving worker
    Then nats-server refuses that client
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

    Examples:
      | who                         |
      | without credentials         |
      | as the operator             |
      | as a worker of its node     |
      | as the hive of another node |

  @SEC-9
  Scenario Outline: Nobody registers a worker but the worker itself
    Given a running cluster
    And I note the number of events in the log
    When a client <who> registers a forged worker of the default model on the cluster's node
    Then nats-server refuses that client
    And the log holds no event of the forged worker and no more events of other kinds than noted
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

    Examples:
      | who                         |
      | without credentials         |
      | as the operator             |
      | as a worker of its node     |
      | as the hive of another node |

  @SEC-10
  Scenario Outline: Nobody but the queen claims a slot
    Given a running cluster
    And I note the number of events in the log
    When a client <who> claims every slot of the serving worker
    Then nats-server refuses that client
    And the log holds no more slot events than noted
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

    Examples:
      | who                         |
      | without credentials         |
      | as the operator             |
      | as a worker of its node     |
      | as the hive of another node |

  @SEC-11
  Scenario Outline: Nobody but the admin commands a hive
    Given a running cluster
    And I note the number of events in the log
    And a listener on a free local port that counts connections
    When a client <who> asks the cluster's hive to start a worker from a URL on that port
    Then nats-server refuses that client
    And the log holds no event of the forged worker and no more events of other kinds than noted
    And after 3 seconds the listener has had no connection

    Examples:
      | who                         |
      | without credentials         |
      | as the operator             |
      | as a worker of its node     |
      | as the hive of another node |

  @SEC-12
  Scenario Outline: Nobody but the admin deletes or purges a stream or a consumer
    Given a running cluster
    And I note the number of events in the log
    When a client <who> asks JetStream to delete and purge the event stream and delete the archiver
    Then nats-server refuses that client and JetStream answered none of it
    And the event stream and the archiver's consumer are still there, with at least the noted events

    Examples:
      | who                         |
      | without credentials         |
      | as the operator             |
      | as a worker of its node     |
      | as the hive of another node |
      | as the queen                |

  @SEC-9
  Scenario: A worker that registers another worker on its own subject is not believed
    Given a running cluster
    When a client as a worker of its node registers a forged worker on its own subject
    Then nats-server stores it, and rbee workers does not list the forged worker
    And the queen's log reports FORGED_EVENT for it

  @SEC-9
  Scenario: A hive that registers another node's worker on its own node is not believed
    Given a running cluster
    When a client as the hive of another node registers the serving worker's id on its own node
    Then nats-server stores it, and rbee workers still lists that worker on the cluster's node only
    And the queen's log reports FORGED_EVENT for it
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

  @SEC-14
  Scenario Outline: The role the queens use may only read and append the archive
    Given a running cluster
    And every event of its log is archived in Postgres
    When the role the queens use runs "<statement>" on the event store
    Then Postgres refuses it for lack of privilege
    And the archive still holds every event it held

    Examples:
      | statement                                                |
      | DELETE FROM events                                       |
      | UPDATE events SET event_type = 'forged'                  |
      | TRUNCATE events                                          |
      | ALTER TABLE events DISABLE TRIGGER events_append_only    |
      | DROP TABLE events                                        |
      | CREATE TABLE forged (x int)                              |
      | COPY (SELECT 1) TO PROGRAM 'touch /tmp/rbee-forged'      |
      | ALTER ROLE rbee SUPERUSER                                |

  @SEC-14
  Scenario: The event store takes no connection without a password
    Given a running cluster
    When a client connects to the event store as the role the queens use without its password
    Then Postgres refuses the connection

  @SEC-16
  Scenario Outline: A model source outside the hive's allow-list is refused before any connection
    Given a running cluster without workers
    And a listener on a free local port that counts connections
    When I pull "<source>" onto the cluster's node with rbee models pull
    Then the pull fails with exit code 1 and "SOURCE_NOT_ALLOWED"
    And after 2 seconds the listener has had no connection
    And the log holds no download or catalog entry of the model "forged-source"

    Examples:
      | source                                         |
      | http://127.0.0.1:{port}/forged.gguf            |
      | https://user@127.0.0.1:{port}/forged.gguf      |
      | file:///etc/passwd                             |
      | file:///root/.cache/rbee/models/../../../etc/hostname |

  @SEC-13
  Scenario: rbee down stops only the processes it started, whatever the log says
    Given a cluster of my own without workers, with 0 more hives on its node
    And an unrelated process whose command line names the worker "forged-worker"
    When a client as the admin records worker "forged-worker" on the cluster's node with that process's pid
    And I stop the cluster with rbee down
    Then the unrelated process is still alive
    And the processes rbee up started are gone

  @SEC-6
  Scenario: No secret of the cluster is ever shown, and secret files are its owner's alone
    Given a running cluster
    Then asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"
    When I gather the cluster's secrets: its API key, database passwords and NATS seeds
    Then none of them appears in the logs of its processes, their command lines, /health or /metrics
    And none of them appears in rbee events tail or in a backup of its log
    And every file of its trust directory, and its API key file, is readable by its owner only
    And rbee-queen --help does not show the value of RBEE_DATABASE_URL

  @SEC-5
  Scenario: Over mutual TLS with per-role credentials, both ends prove the cluster's CA and a hive cannot speak as the queen
    Given a cluster of my own started with --nats-tls
    Then a client that does not trust the cluster's CA cannot connect, even with the admin's credentials
    And a client that connects without TLS is refused, even with the admin's credentials
    And a client that shows no certificate of the cluster is refused, even with the admin's credentials
    When a client as the hive of its node, over TLS, sends the serving worker a work item and listens to tokens
    Then nats-server refuses that client
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"
