Feature: Configuration files
  Every flag of the queen, the hive and the worker is also a key of a TOML file (`--config FILE`),
  named as the flag with `_` for `-`. The environment overrides the file; a flag overrides both.
  A file the process cannot use stops it before it does anything; SIGHUP reads the file again.

  @CFG-1
  Scenario Outline: A process whose config file is invalid refuses to start, naming the key and the reason
    Given a running cluster
    When rbee-<process> is started with a config file holding "<line>"
    Then it exits with code 1 and "INVALID_CONFIG", naming "<key>" and saying "<reason>"

    Examples:
      | process | line                           | key                | reason                     |
      | queen   | queue_timeout_secs = 'soon'    | queue_timeout_secs | invalid digit              |
      | queen   | queue_timout_secs = 5          | queue_timout_secs  | no such key                |
      | queen   | no_auth = 'yes'                | no_auth            | expected true or false     |
      | queen   | bind = 'everywhere'            | bind               | invalid socket address     |
      | queen   | cors_origins = { a = 1 }       | cors_origins       | not a table                |
      | queen   | bind = [                       | queen.toml         | TOML parse error           |
      | hive    | allowed_hosts = ['ftp://m']    | allowed_hosts      | not an http(s) URL         |
      | hive    | restart = 'sometimes'          | restart            | sometimes                  |
      | worker  | slots = 'many'                 | slots              | invalid digit              |
      | worker  | log_level = 'info,[['          | log_level          | invalid                    |

  @CFG-3
  Scenario: The environment overrides the file, and a flag overrides both
    Given a running cluster
    When a queen is started whose config file binds port A and whose environment binds port B
    Then that queen answers on port B, and nothing on port A
    When that queen is stopped, and one is started whose file binds port A, environment port B and --bind port C
    Then that queen answers on port C, and nothing on ports A and B

  @CFG-2
  Scenario: A queen takes new CORS origins on SIGHUP; what needs a restart waits; a broken file changes nothing
    Given a running cluster
    And a queen whose config file allows pages from "https://one.example"
    Then a page from "https://two.example" may not call that queen
    When its file allows "https://two.example" instead and binds another port, and the queen gets SIGHUP
    Then a page from "https://two.example" may call that queen, still on the port it started on
    And the queen's log says "cors_origins" was reloaded and "bind" takes effect at the next start
    When its file is no longer TOML and the queen gets SIGHUP
    Then the queen's log says the configuration was not reloaded, naming the file
    And a page from "https://two.example" may call that queen, still on the port it started on

  @CFG-2
  Scenario: A hive takes a new allowed model directory on SIGHUP
    Given a running cluster without workers
    And a copy of the default model in a directory no hive allows
    And a hive of its own on a new node, its config file allowing no such directory
    When I pull the copy onto that hive's node with rbee models pull
    Then the pull fails with exit code 1 and "SOURCE_NOT_ALLOWED"
    When its file allows the copy's directory, and the hive gets SIGHUP
    Then the hive's log says "allowed_dirs" was reloaded
    When I pull the copy onto that hive's node with rbee models pull
    Then the pull succeeds and the copy is in the catalog of that hive's node
