Feature: Models arrive intact: hub downloads are events, resumable and verified

  Every chunk of a download is an event carrying its offset and hash state; a download survives
  dropped connections, stalls, rate limits and a killed hive, and ends with a verified GGUF file or
  a clear error that leaves nothing behind. The hub is a double serving the real model file.

  @DL-1 @CAT-2
  Scenario: A model missing from the node is downloaded from the hub with progress, then registered
    Given a cluster whose hives download from the model hub double
    When I pull the default model from the hub
    Then the pull succeeds, printing progress up to 100%
    And the download was recorded in chunks of 4 MiB up to the file's size
    And the model is catalogued on the node with the hub's checksum, and its file has that checksum

  @CAT-1
  Scenario: A model already on the node is used as it is
    Given a cluster whose hives download from the model hub double
    And the default model was pulled from the hub
    When a worker for it is started from the hub reference
    Then the worker becomes ready and answers a chat completion
    And the hub served the file only once, and the log holds one download.started for the model

  @DL-2
  Scenario: The hub does not have the model
    Given a cluster whose hives download from the model hub double
    And the hub answers 404 for the default model
    When I pull the default model from the hub
    Then the pull fails with exit code 1 and "MODEL_NOT_FOUND"
    And the model is not catalogued and no file of it is left on the node

  @DL-3
  Scenario: The hub refuses access
    Given a cluster whose hives download from the model hub double
    And the hub answers 403 for the default model
    When I pull the default model from the hub
    Then the pull fails with exit code 1 and "ACCESS_DENIED"
    And the pull's error mentions "HF_TOKEN"
    And the model is not catalogued and no file of it is left on the node

  @DL-4
  Scenario: A stalled transfer is abandoned and retried
    Given a cluster whose hives download from the model hub double
    And the hub stalls at 30% of the default model once
    When I pull the default model from the hub
    Then the pull succeeds, printing progress up to 100%
    And the log holds 1 download.retried with code "DOWNLOAD_TIMEOUT"
    And the model is catalogued on the node with the hub's checksum, and its file has that checksum

  @DL-4
  Scenario: A transfer that keeps stalling fails after the retry limit
    Given a cluster whose hives download from the model hub double
    And the hub stalls at 30% of the default model every time
    When I pull the default model from the hub
    Then the pull fails with exit code 1 and "DOWNLOAD_TIMEOUT"
    And the log holds 2 download.retried with code "DOWNLOAD_TIMEOUT"
    And the model is not catalogued and no file of it is left on the node

  @DL-5
  Scenario: A connection reset at 40% resumes where the bytes stopped, re-fetching nothing recorded
    Given a cluster whose hives download from the model hub double
    And the hub cuts the connection at 40% of the default model once
    When I pull the default model from the hub
    Then the pull succeeds, printing progress up to 100%
    And the hub got one Range request, from no earlier than the last recorded chunk and no later than the reset
    And the model is catalogued on the node with the hub's checksum, and its file has that checksum

  @DL-5
  Scenario: A connection that keeps dropping fails after the retry limit
    Given a cluster whose hives download from the model hub double
    And the hub cuts the connection at 40% of the default model every time
    When I pull the default model from the hub
    Then the pull fails with exit code 1 and "DOWNLOAD_FAILED"
    And the model is not catalogued and no file of it is left on the node

  @DL-6
  Scenario: A file whose checksum does not match is deleted and retried, then refused
    Given a cluster whose hives download from the model hub double
    When I pull a hub file whose published checksum is wrong
    Then the pull fails with exit code 1 and "CHECKSUM_MISMATCH"
    And the log holds 2 download.retried with code "CHECKSUM_MISMATCH"
    And the model is not catalogued and no file of it is left on the node

  @DL-7
  Scenario: A file with a corrupt GGUF header is deleted and retried, then refused
    Given a cluster whose hives download from the model hub double
    When I pull a hub file with a corrupt GGUF header
    Then the pull fails with exit code 1 and "MODEL_INVALID"
    And the log holds 2 download.retried with code "MODEL_INVALID"
    And the model is not catalogued and no file of it is left on the node

  @DL-8
  Scenario: Two hives of one node asked for the same model download it once
    Given a cluster whose hives download from the model hub double
    And a second hive on the cluster's node
    And the hub serves at most 40 MB/s
    When two pulls of the default model to the node run at once
    Then both pulls succeed
    And the log holds one download.started for the model, and the hub served the file once

  @DL-9
  Scenario: A hive killed at 60% resumes the download after it restarts
    Given a cluster whose hives download from the model hub double
    And a hive of its own on a new node
    And the hub serves at most 30 MB/s
    When I pull the default model to that node in the background
    And the hive is killed once the download passed 60%
    And the hive is started again
    Then the pull succeeds and printed the percentage the download resumed from
    And the new claim resumed from the last chunk recorded before the kill, with a Range request from there
    And the model is catalogued on the node with the hub's checksum, and its file has that checksum

  @DL-10 @Gap-R6
  Scenario: A bandwidth limit keeps the download under it
    Given a cluster whose hives download from the model hub double
    And a hive of its own on a new node, limited to 40000000 bytes per second
    When I pull the default model to that node
    Then the pull succeeds, printing progress up to 100%
    And the download took at least as long as the limit allows, and every chunk reported a rate under it

  @DL-11
  Scenario: A rate-limited hub is retried after its Retry-After
    Given a cluster whose hives download from the model hub double
    And the hub answers 429 with Retry-After 2 for the default model once
    When I pull the default model from the hub
    Then the pull succeeds, printing progress up to 100%
    And the log holds 1 download.retried with code "RATE_LIMITED"
    And the hub's next request came at least 2 seconds after the 429

  @DL-12
  Scenario: The disk fills up mid-download
    Given a cluster whose hives download from the model hub double
    And a hive of its own on a new node, its models on a 120 MB filesystem
    And the hub serves at most 30 MB/s
    When I pull the default model to that node in the background
    And the filesystem is filled once the download passed 20%
    Then the pull fails with exit code 1 and "DISK_FULL"
    And the model is not catalogued and no file of it is left on the node

  @DL-3
  Scenario: HF_TOKEN is sent to the hub as a bearer token
    Given a cluster whose hives download from the model hub double
    And a hive of its own on a new node, with HF_TOKEN=hf_test_secret
    When I pull the default model to that node
    Then the hub got every request for the file with "Bearer hf_test_secret"

  @CAT-6
  Scenario: rbee models rm deletes the file and frees the disk
    Given a cluster whose hives download from the model hub double
    And the default model was pulled from the hub
    When I remove the model with rbee models rm
    Then rbee models rm says it freed the model's size
    And the model is not catalogued and no file of it is left on the node
    And the log records model.removed for the model, removed on request

  @CAT-6
  Scenario: rbee models rm refuses a model a worker serves
    Given a cluster whose hives download from the model hub double
    And the default model was pulled from the hub
    And a worker for it is started from the hub reference
    When I remove the model with rbee models rm
    Then rbee models rm fails with exit code 1 and "MODEL_IN_USE"
    And the model is catalogued on the node with the hub's checksum, and its file has that checksum

  @CAT-2
  Scenario: A repository with one GGUF file needs no file name
    Given a cluster whose hives download from the model hub double
    When I pull the default model's repository without naming the file
    Then the pull succeeds, printing progress up to 100%
    And the model is catalogued on the node with the hub's checksum, and its file has that checksum
