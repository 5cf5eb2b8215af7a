Feature: The log is the system of record: backup, restore, replay and old schemas

  @Gap-F8 @DR-1
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
