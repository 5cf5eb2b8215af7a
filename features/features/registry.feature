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
