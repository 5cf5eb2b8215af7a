Feature: Faults at random under load, and load for a long time

  The chaos test kills or freezes every kind of process at random moments while clients stream,
  then checks what must hold whatever happened. It runs for RBEE_CHAOS_SECS (300 in the test
  command; longer by hand) and prints its seed: RBEE_CHAOS_SEED replays the same faults. The soak
  streams for RBEE_SOAK_SECS (300 in the test command; RBEE_SOAK_SECS=3600 for an hour by hand).

  @REL-8
  Scenario: Chaos: a worker, the hive, the queen, nats-server and Postgres killed or frozen at random under load
    Given a cluster of my own serving the default model, with 1 more workers started
    When the greedy answer to "Name three flowers bees like." with max_tokens 32 is noted from one request alone
    And 6 clients stream it while a worker, the hive, the queen, nats-server and Postgres are killed or frozen at random
    Then no stream hung, and every stream completed with exactly the noted text or ended with an error
    When the cluster is whole again
    Then every completed request was accepted, and finished by the worker its last acceptance names, in the log
    And no outbox holds an event
    And the archive holds every event of the log, by sequence and event id
    And no slot is held
    And the queen's view equals a fresh fold of the log

  @LOAD-2
  Scenario: A soak: memory stays flat, and no process, slot or subscription leaks
    Given a cluster of my own serving the default model
    When the greedy answer to "Name three flowers bees like." with max_tokens 32 is noted from one request alone
    And 4 clients stream it for the soak's length while the processes' memory is sampled
    Then every stream completed with exactly the noted text
    And the memory of the queen, the hive, the worker and nats-server stayed flat
    And the same processes run, and the hive has no other child
    And no slot is held
    And nats-server holds no more subscriptions than at rest
