@docker
Feature: The compose cluster: three NATS servers, two queens behind a balancer, two machines

  One cluster of docker-compose.yml, started from nothing by `scripts/cluster up` (its images built
  here from a Debian base made by debootstrap), serves these scenarios and is taken down after the
  last of them. Each service is lost in turn while clients stream through the balancer and a
  client appends events. Without a Docker engine these scenarios fail saying so;
  RBEE_SKIP_DOCKER=1 leaves them out, and the closing lines say how many.

  @CLU-1
  Scenario: The cluster starts from nothing and answers through the balancer
    Given the compose cluster is up
    Then a chat request through the balancer is answered
    And the registry shows a ready worker of the default model on hive-a and on hive-b
    And the log holds the registration of hive-a and of hive-b
    And the event log has 3 replicas, all current
    And no process of the cluster runs as root

  @E2E-3
  Scenario: Requests spread across the machines
    Given the compose cluster is up
    When 10 requests are sent one after another through the balancer
    Then the log shows the workers of hive-a and of hive-b each took at least 4 of them

  @CLU-2
  Scenario: The NATS server leading the event log is killed under load
    Given the compose cluster is up
    When the greedy answer to "Name three flowers bees like." with max_tokens 24 is noted from one request alone
    And 4 clients stream it while events are appended, and the server leading the log is killed 8 s in and started again 20 s later
    Then no stream hung, and every stream completed with exactly the noted text or ended with an error
    And streams completed while it was gone and after it came back
    And appends were acknowledged while it was gone
    And every append that was acknowledged is in the log
    And the event log has 3 replicas, all current

  @CLU-4
  Scenario: A queen is killed behind the balancer under load
    Given the compose cluster is up
    When the greedy answer to "Name three flowers bees like." with max_tokens 24 is noted from one request alone
    And 4 clients stream it while events are appended, and queen-1 is killed 8 s in and started again 20 s later
    Then no stream hung, and every stream completed with exactly the noted text or ended with an error
    And at most 4 streams did not complete, and none with another text
    And streams completed while it was gone and after it came back

  @CLU-3 @REG-3
  Scenario: A machine cut off from the network: its worker is marked stale, the other serves, one registry after it heals
    Given the compose cluster is up
    When the greedy answer to "Name three flowers bees like." with max_tokens 24 is noted from one request alone
    And 4 clients stream it while hive-b is cut off from the network 5 s in and reconnected 45 s later
    Then no stream hung, and every stream completed with exactly the noted text or ended with an error
    And at most 4 streams did not complete, and none with another text
    And the log marked the worker of hive-b stale while it was cut off
    And streams completed while it was gone and after it came back
    And within 120 seconds the registry shows a ready worker of the default model on hive-b
    And within 60 seconds the registry holds one worker on hive-a and one on hive-b, no slot held

  @REL-3
  Scenario: The Postgres container is away for 30 s under load
    Given the compose cluster is up
    When the greedy answer to "Name three flowers bees like." with max_tokens 24 is noted from one request alone
    And 4 clients stream it while postgres is stopped 5 s in and started again 30 s later
    Then every stream completed with exactly the noted text
    And appends were acknowledged while it was gone
    And the archive holds every event of the log, by sequence and event id

  @E2E-5
  Scenario: Both queens and both machines restarted one at a time under load, no request lost
    Given the compose cluster is up
    When the greedy answer to "Name three flowers bees like." with max_tokens 24 is noted from one request alone
    And 4 clients stream it while queen-1, queen-2, hive-a and hive-b are restarted one at a time
    Then every stream completed with exactly the noted text
    And the registry shows a ready worker of the default model on hive-a and on hive-b

  @CLU-5
  Scenario: A new machine joins with one command and serves
    Given the compose cluster is up
    When a machine hive-c joins with one command
    Then within 180 seconds the registry shows a ready worker of the default model on hive-c
    And one of 6 requests sent one after another through the balancer is served by the worker of hive-c
