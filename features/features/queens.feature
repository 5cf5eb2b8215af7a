Feature: Several queens, one truth
  Queens keep no state of their own: they fold the same log, and the log decides races between them.

  @REG-3 @Gap-C4
  Scenario: Two queens racing for one worker's only slot never grant it twice
    Given a running cluster
    And a second queen serving the same cluster
    When 6 chat completions arrive at once, split between the two queens
    Then every request completed, or was refused with HTTP 503 and code "ALL_SLOTS_BUSY"
    And in the log no slot was ever claimed while it was still held
    And every claimed slot was released

  @DR-2
  Scenario: A queen that is killed and restarted serves again from the log
    Given a running cluster
    And a second queen serving the same cluster
    When the second queen is killed with SIGKILL and started again
    Then the restarted queen lists the same ready worker as the log
    And asking the restarted queen "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

  @REG-6
  Scenario: Two requests reaching one worker's only slot at once: one wins, the other gets WORKER_ALREADY_BUSY
    Given a running cluster
    When two work items for the worker's only slot reach it at the same moment
    Then the worker accepts exactly one and refuses the other with "WORKER_ALREADY_BUSY"
    And once the accepted one has finished, the worker's slot is free and it serves the queen again
