Feature: The log is the system of record: backup, restore, replay and old schemas

  @DR-1
  Scenario: Back up, wipe the data directory, and rbee up --restore brings the cluster back from the file
    Given a cluster of my own serving the default model
    And I note the digest of the registry and catalog folded from its log, and its last sequence
    When I back up its log to a file
    And I wipe its data directory and run rbee up --restore with the file in a fresh one
    Then the registry and catalog folded from the restored log up to that sequence have the noted digest
    And no worker the backup recorded is offered, only the one the new cluster started
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"
    And the archive holds every event of the log, by sequence and event id

  @Gap-F8
  Scenario: Backup, wipe, restore gives back every projection
    Given a running cluster
    And I note the digest of the registry and catalog folded from its log
    When I back up its log to a file
    And I restore the file into a fresh, empty JetStream
    Then the registry and catalog folded from the restored log have the same digest
    And restoring the file again into the now non-empty log is refused with "RESTORE_TARGET_NOT_EMPTY"
    And a backup file with one byte changed is refused with "INVALID_BACKUP" and restores nothing

  @CAT-5
  Scenario: Events written with an older schema are upcast on read
    Given a running cluster without workers
    When an older rbee records a schema 1 model registration in the log
    Then rbee events tail shows it as model.registered with its memory requirement filled in
    And the queen's catalog serves the model it names
    And replaying the log shows the model in the catalog with nothing lost

  @CAT-4
  Scenario: A corrupt stored catalog is detected, set aside and rebuilt from the log
    Given a running cluster
    And a second queen with the event store, which has checkpointed the registry and catalog
    When the stored checkpoint is corrupted and that queen is restarted
    Then the queen reports that the corrupt checkpoint was set aside and the state rebuilt from the log
    And the corrupt checkpoint is kept aside in Postgres with its reason
    And the queen's registry and catalog equal a replay of the log
    And a checkpoint is written again
    When I run rbee projections rebuild
    Then it stores a checkpoint with the digest of a replay of the log and sets the previous one aside

  @DR-2
  Scenario: A queen rebuilds from the Postgres archive when JetStream no longer holds the old events
    Given a cluster of my own serving the default model
    And I note the digest of the registry and catalog folded from its log
    And every event of its log is archived in Postgres
    When its queen is killed, its checkpoint removed and the older half of its events purged from JetStream
    And a queen with the event store starts on it
    Then the queen reports that the purged events were read from the Postgres archive
    And the queen's registry and catalog have the noted digest
    And rbee replay, reading the purged events from the archive as the queen did, gives the noted digest
    And asking the restarted queen "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

  @CAT-6
  Scenario: A catalogued model whose file was deleted is removed from the catalog
    Given a cluster of my own serving the default model, checking its catalog every second
    And rbee models lists the default model on its node
    When the model file is deleted from the node's disk
    Then the log records model.removed for that node, naming the missing file
    And rbee models no longer lists it
