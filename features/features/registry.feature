Feature: The worker registry is a projection of worker events

  @Gap-C1
  Scenario: Three workers register the same id at once and exactly one wins
    Given a running cluster without workers
    When three worker processes start at once with the same worker id
    Then exactly one of them is still running
    And the other two exit with code 1 saying "WORKER_ALREADY_REGISTERED"
    And the log holds exactly one worker.registered for that id

  @REG-1
  Scenario: A worker is visible through its whole life
    Given a running cluster without workers
    When a worker is started for the default model through rbee up
    Then rbee workers lists it as ready with its model and node
    And rbee workers filtered by its model and by state ready lists it
    And rbee workers filtered by another model or by state loading does not list it
    When that worker process is stopped
    Then rbee workers no longer lists it
    And the log records its state change to stopped and its exit with code 0

  @REG-2
  Scenario: A worker that stops heartbeating is marked stale, no longer routed to, then removed
    Given a running cluster without workers
    And a worker is started for the default model through rbee up
    When that worker process is paused so its heartbeats stop
    Then the log marks it stale, and the registry replayed at that event shows it stale
    And a chat completion for its model is refused with HTTP 503 and code "NO_READY_WORKER"
    And rbee workers no longer lists it
    And the log records worker.removed for it with the reason "no heartbeat"

  @REG-7
  Scenario: A worker that registers again with other capabilities has them updated
    Given a running cluster without workers
    And a worker process registered under a new id with 1 slot
    When that worker stops and a worker registers again under the same id with 2 slots
    Then rbee workers lists that id once, with 2 slots
    And the log holds two worker.registered events for that id, the second after the first one stopped

  @REG-5
  Scenario: A registry at its size limit refuses another worker with REGISTRY_FULL
    Given a cluster of my own serving the default model, with room for 1 worker
    When I ask for one more worker with rbee workers start
    Then rbee exits with code 1 saying "REGISTRY_FULL" and suggesting to remove stale workers
    And the log records worker.start_failed with code "REGISTRY_FULL"
    And rbee workers still lists exactly one worker

  @REG-4
  Scenario: A worker that loses its heartbeat while busy takes no new request, and its request may still finish
    Given a running cluster without workers
    And a worker is started for the default model through rbee up
    And a streaming request of "Write a long story about a bee." with max_tokens 40 is running on it
    When that worker process is paused so its heartbeats stop
    Then the log marks it stale, and the registry replayed at that event shows it stale
    And a chat completion for its model is refused with HTTP 503 and code "NO_READY_WORKER"
    And after the grace period the log records worker.removed for it, saying its request was abandoned
    And the running request's stream ended with an error event "WORKER_LOST" and [DONE]
    When the paused worker process resumes
    Then the resumed worker gives the abandoned request up and releases its slot, its end recorded once
    And the resumed worker registers again, ready, and a chat completion for its model is served by it

  @Gap-C6
  Scenario: A worker registers while stale cleanup runs, and both complete
    Given a running cluster without workers
    And a worker is started for the default model through rbee up
    When that worker process is paused so its heartbeats stop
    And meanwhile another worker is started with rbee workers start
    Then rbee workers lists only the new worker, ready
    And the log records the paused worker's removal and the new worker's registration

  @Gap-C7
  Scenario: Heartbeats arriving while a worker changes state keep the new state and refresh liveness
    Given a running cluster without workers
    And a worker is started for the default model through rbee up
    When that worker is drained with rbee workers drain
    Then rbee workers keeps showing it draining while its heartbeats keep arriving
    And a chat completion for its model is refused with HTTP 503 and code "NO_READY_WORKER"
