Feature: Nothing lost, nothing hangs: the log, the archive and every stream under faults

  A cluster's dependencies go away and come back. Serving goes on where it can, the processes say
  what is wrong instead of answering "ok", and nothing the log holds is left out of the archive.

  @REL-3
  Scenario: Postgres down: serving goes on, the archiver retries and says so, and the archive equals the log afterwards
    Given a cluster of my own serving the default model
    When the cluster's Postgres is stopped
    Then asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"
    And /health answers 503, the archiver retrying and behind the log
    When the cluster's Postgres is started again
    Then /health answers 200 with status "ok" and the archive caught up
    And the archive holds every event of the log, by sequence and event id

  @REL-6
  Scenario: With nats-server gone, readiness and requests say so at once
    Given a cluster of my own serving the default model
    Then /readyz answers 200
    And the hive's /readyz answers 200
    When the cluster's nats-server is killed
    Then /readyz answers 503 naming "NATS"
    And the hive's /readyz answers 503 naming "NATS"
    And /health answers 503 with status "degraded"
    And a chat request is refused within 2 seconds with HTTP 503 and code "EVENT_LOG_UNAVAILABLE"

  @REL-4
  Scenario: An undecodable message is quarantined: every reader and CLI command goes on
    Given a cluster of my own serving the default model
    When the admin publishes a 2-byte message without headers on "rbee.ev.junk"
    Then rbee events tail --no-follow shows it as undecodable, with its subject and sequence
    And rbee workers, rbee replay and rbee replay at its sequence each answer, rbee replay counting it as skipped
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"
    When I create an API key named "after-junk" with rbee keys create
    Then rbee replay at every sequence of the log answers with the registry
    And the queen's log reports the undecodable event with its sequence and subject

  @REL-5
  Scenario: A queen that dies mid-stream leaves no generation running for nobody
    Given a cluster of my own serving the default model
    And a second queen serving the same cluster
    When a streaming request with max_tokens 2000 runs through the second queen, which is killed after its first tokens
    Then within 2 seconds of the kill the worker records the request cancelled and releases its slot
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

  @REL-1
  Scenario: nats-server paused while a request ends: its outcome waits in the worker's outbox, shown in the hive's metrics, and reaches the log
    Given a cluster of my own serving the default model
    When a streaming request with max_tokens 48 runs and nats-server is paused for 25 seconds right after its first tokens
    Then the log holds the request's request.finished and slot.released, each once
    And the request completes with finish_reason "length" and 48 tokens
    And the worker's outbox is empty

  @REL-7
  Scenario: rbee up after only the queen died starts the queen again and reuses everything else
    Given a cluster of my own serving the default model
    When its queen is killed and rbee up runs again
    Then the queen answers again on its recorded port, recovered from its checkpoint
    And nats-server, Postgres, the hive and the worker are the same processes as before
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

  @REL-9 @INF-2
  Scenario: A burst of four times the slots is queued in order, each request told its place, none refused
    Given a cluster of my own whose worker has 2 slots
    When 8 chat requests with max_tokens 24 are sent 100 ms apart, without waiting for answers
    Then every one completes with 24 tokens, none refused
    And the later ones were told they waited behind others
    And the log accepted them in the order they were sent

  @Gap-G12d
  Scenario: A queued request whose client goes away leaves the queue and never runs
    Given a cluster of my own whose worker has 1 slots
    When a request with max_tokens 200 runs and a second one, queued behind it, is abandoned by its client
    Then once the first has finished, the log holds no request but the first
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

  @Gap-G12e
  Scenario: A request whose deadline passes ends with REQUEST_TIMEOUT, and the worker stops it and frees the slot
    Given a cluster of my own serving the default model
    When I ask for 2000 tokens with the header x-request-timeout 1
    Then the answer is HTTP 408 with code "REQUEST_TIMEOUT"
    And the log records that request cancelled for its deadline, its end and its slot released
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

  @REL-2
  Scenario: nats-server killed and started again mid-stream: the stream ends with an error event at once, and no event is lost
    Given a cluster of my own serving the default model
    When a streaming request with max_tokens 400 runs and nats-server is killed right after its first tokens
    Then the stream ends with an error event "EVENT_LOG_UNAVAILABLE" within 2 seconds of the kill
    When nats-server is started again on its port and store
    Then the log holds the request's request.finished and slot.released, each once
    And the queen is ready again once it hears the worker
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"
    And the worker was never marked stale: the queen judges no silence it could not hear

  @LOAD-1
  Scenario: 100 concurrent streams all complete, each with exactly the text the request gives alone
    Given a cluster of my own whose worker has 4 slots
    When the greedy answer to "Name three flowers bees like." with max_tokens 16 is noted from one request alone
    And 100 streaming requests of it run at once
    Then every stream completes with 16 tokens and exactly the noted text, in order, ending with [DONE]

  @Gap-F1
  Scenario: A worker killed mid-stream: the stream moves to another worker and the client gets exactly the uninterrupted text
    Given a cluster of my own serving the default model, with 1 more workers started
    When the greedy answer to "Tell me a long story about a bee." with max_tokens 400 is noted from one request alone
    And it is streamed again and the worker serving it is killed with SIGKILL after its first tokens
    Then the stream completes with exactly the noted text and token count, ending with [DONE]
    And the log shows the request accepted by the killed worker, then by the other one, which finished it
    And the queen's /metrics counts 1 moved stream

  @Gap-F1
  Scenario: A moved stream is not stopped by the end its first worker records late
    Given a cluster of my own serving the default model
    When the greedy answer to "Tell me a long story about a bee." with max_tokens 400 is noted from one request alone
    And it is streamed again and, after its first tokens, the log records that the request was given up by another worker and by an earlier run on this one
    Then the stream completes with exactly the noted text and token count, ending with [DONE]

  @REL-5
  Scenario: A queen paused mid-stream: its worker gives the request up, and the resumed queen moves it back with identical text
    Given a cluster of my own serving the default model
    When the greedy answer to "Tell me a long story about a bee." with max_tokens 600 is noted from one request alone
    And it is streamed again and the queen is paused for 4 seconds after its first tokens
    Then the stream completes with exactly the noted text and token count, ending with [DONE]
    And the log shows the worker gave the request up, then took it again and finished it
    And the queen's /metrics counts 1 moved stream

  @REL-8
  Scenario: A slot claimed for a request that never reaches the worker (its queen died in between) is released by the worker
    Given a cluster of my own serving the default model
    When a slot of the worker is claimed, as a queen claims it, for a request that never reaches the worker
    Then rbee workers shows that slot held for the request
    And within 20 seconds the worker records the slot released for that request, and rbee workers shows it free
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"
