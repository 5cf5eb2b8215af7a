Feature: Workers live and die cleanly under their hive

  The hive checks a worker's backend, device and memory before it starts it, runs the right
  binary pinned to its cores, watches it load, restarts it after a crash, stops it when idle, drains
  it on shutdown, kills it when it hangs, and adopts it when the hive itself restarts. Every step is
  an event; no worker process outlives its hive.

  @LIFE-1 @PRE-1
  Scenario: A worker shows its loading, then is ready
    Given a running cluster without workers
    And a hive of its own on a new node
    When a worker is started on that node
    Then the start printed the worker registered and loading, then ready
    And the log holds worker.registered, then worker.state_changed to ready, for it
    And the hive logged that preflight passed with the RAM it found

  @LIFE-2
  Scenario: A worker that does not load in time is killed
    Given a running cluster without workers
    And a hive of its own on a new node, with RBEE_LOADING_TIMEOUT_SECS=0.05
    When a worker is started on that node
    Then the start fails with exit code 1 and "LOADING_TIMEOUT"
    And the log records the worker signalled 9 for "loading_timeout"
    And no process of the worker is left

  @LIFE-3
  Scenario: A crashed worker is recorded and restarted
    Given a running cluster without workers
    And a hive of its own on a new node
    And a worker is started on that node
    When the worker process is killed with SIGKILL
    Then the log records its exit with signal 9
    And the worker is registered again with a new pid and becomes ready

  @LIFE-4
  Scenario: A worker that ignores SIGTERM is killed after the grace period
    Given a running cluster without workers
    And a hive of its own on a new node, with RBEE_WORKER_GRACE_SECS=1
    And a worker is started on that node
    When the worker process is paused and the hive is stopped
    Then the hive exits with code 0 and no process of the worker is left
    And the log records the worker signalled 15 for "shutdown", then 9 for "grace_expired"
    And the log records its exit with signal 9

  @LIFE-5 @Gap-F7
  Scenario: A hive stopped with a request in flight lets it finish
    Given a running cluster without workers
    And a hive of its own on a new node
    And a worker is started on that node
    When a streaming request with max_tokens 48 is running and the hive is stopped
    Then a request sent while the worker drained was refused with HTTP 503 and code "NO_READY_WORKER", and no slot of the worker was claimed after it began draining
    And the request completes with finish_reason "length" and 48 tokens
    And the log records the worker draining, then its exit with code 0
    And the hive exits with code 0 and no process of the worker is left

  @LIFE-6
  Scenario: An idle worker is stopped and the hive keeps running
    Given a running cluster without workers
    And a hive of its own on a new node, with RBEE_IDLE_TIMEOUT_SECS=1.5
    And a worker is started on that node
    Then the log records the worker signalled 15 for "idle_timeout"
    And the log records its exit with code 0
    And the hive is still running

  @LIFE-7 @Gap-F6
  Scenario: A restarted hive adopts the workers still running
    Given a running cluster without workers
    And a hive of its own on a new node
    And a worker is started on that node
    When the hive is killed with SIGKILL and started again
    Then the restarted hive adopted the worker, which keeps its pid
    And the worker answers a chat completion, listed once in the registry
    And when the hive is stopped no process of the worker is left

  @LIFE-8
  Scenario: Five workers stop in parallel within the grace period
    Given a running cluster without workers
    And a hive of its own on a new node, with RBEE_WORKER_GRACE_SECS=10
    And 5 workers are started on that node
    When the hive is stopped
    Then the hive exits with code 0 within 10 seconds and no worker process is left
    And the log records all 5 workers signalled with SIGTERM, several of them before any exited
    And the log records 5 worker exits with code 0

  @Gap-R4
  Scenario: A CPU worker is pinned to the configured cores
    Given a running cluster without workers
    And a hive of its own on a new node, with RBEE_CPU_CORES=0
    And a worker is started on that node
    Then the worker process may run on core 0 only

  @WP-1
  Scenario: The worker binary configured for the backend is the one that runs
    Given a running cluster without workers
    And a copy of the worker binary in a directory of its own
    And a hive of its own on a new node, whose cpu worker binary is that copy
    When a worker is started on that node
    Then the worker process runs that copy

  @WP-2
  Scenario: A missing worker binary is a clear error
    Given a running cluster without workers
    And a hive of its own on a new node, with RBEE_WORKER_BIN=/nonexistent/rbee-worker
    When a worker is started on that node
    Then the start fails with exit code 1 and "WORKER_BINARY_MISSING"
    And the start's error mentions "/nonexistent/rbee-worker"

  @WP-2
  Scenario: A worker binary that is not executable is a clear error
    Given a running cluster without workers
    And a copy of the worker binary in a directory of its own, not executable
    And a hive of its own on a new node, whose cpu worker binary is that copy
    When a worker is started on that node
    Then the start fails with exit code 1 and "WORKER_BINARY_NOT_EXECUTABLE"

  @WP-3
  Scenario: cuda and metal requested together
    Given a running cluster without workers
    And a hive of its own on a new node
    When a worker is started on that node with --backend cuda,metal
    Then the start fails with exit code 1 and "INCOMPATIBLE_FEATURES"
    And the start's error mentions "NVIDIA"

  @PRE-4
  Scenario: A backend this machine lacks
    Given a running cluster without workers
    And a hive of its own on a new node
    When a worker is started on that node with --backend metal
    Then the start fails with exit code 1 and "BACKEND_UNAVAILABLE"
    And the start's error mentions "available: cpu"

  @PRE-5
  Scenario: A device number out of range
    Given a running cluster without workers
    And a hive of its own on a new node
    When a worker is started on that node with --device 3
    Then the start fails with exit code 1 and "INVALID_DEVICE"
    And the start's error mentions "one device, 0"

  @PRE-2
  Scenario: Not enough RAM for the model
    Given a running cluster without workers
    And a hive of its own on a new node, with RBEE_RAM_FACTOR_PERCENT=1000000
    When a worker is started on that node
    Then the start fails with exit code 1 and "INSUFFICIENT_RAM"
    And the start's error mentions "MB are available; try a smaller quantisation"
    And no worker was spawned on that node

  @PRE-6
  Scenario: Not enough disk for the model
    Given a cluster whose hives download from the model hub double
    And a hive of its own on a new node, its models on a 20 MB filesystem
    When I pull the default model to that node
    Then the pull fails with exit code 1 and "INSUFFICIENT_DISK"
    And the pull's error mentions "rbee models rm"
    And the model is not catalogued and no file of it is left on the node

  # Alone (@serial): the RAM other scenarios take and free would blur the margin.
  @PRE-3 @serial
  Scenario: RAM that drops while the model downloads fails the check just before the spawn
    Given a cluster whose hives download from the model hub double
    And a hive of its own on a new node whose RAM factor leaves 2 GiB of the RAM free now to spare
    And the hub stalls the default model at 30% until released
    When a worker for the default model is started on that node from the hub, in the background
    And 4 GiB of RAM are taken while the download stalls, and then the hub goes on
    Then the background start fails with exit code 1 and "INSUFFICIENT_RAM"
    And the start showed the download's progress up to its verified end
    And no worker was spawned on that node

  @LIFE-8
  Scenario: rbee down leaves no process behind, workers included
    Given a cluster of my own serving the default model, with 2 more workers started
    When I run rbee down
    Then rbee down exits 0 and no process the cluster started is left, workers included

  # Alone (@serial): the scenario's own writers keep the disk busy, not the CPU load of others.
  @Gap-R7 @serial
  Scenario: A busy disk is warned about before the model loads
    Given a running cluster without workers
    And a hive of its own on a new node, with RBEE_DISK_BUSY_WARN_PERCENT=25
    And the disk holding its models is kept busy
    When a worker is started on that node
    Then the hive warned that the models' disk is busy before it spawned the worker

  # This machine has no GPU: the hive reads these from an inventory file instead of NVML (the NVML
  # path is compiled and runs, finding none), and the cuda worker binary is the CPU one.
  @Gap-R1
  Scenario: Of several GPUs, the one with most free VRAM is chosen, and why is logged
    Given a running cluster without workers
    And a hive of its own on a new node with these GPUs, and the CPU worker standing in for the cuda one:
      | index | free MB | temperature |
      | 0     | 4000    | 60          |
      | 1     | 20000   | 70          |
      | 2     | 12000   | 50          |
    When a worker is started on that node with --backend cuda
    Then the worker process is given GPU 1 only
    And the hive logged that GPU 1 has the most free VRAM

  @Gap-R3
  Scenario: A GPU above its temperature limit takes no worker
    Given a running cluster without workers
    And a hive of its own on a new node with these GPUs, and the CPU worker standing in for the cuda one:
      | index | free MB | temperature |
      | 0     | 20000   | 92          |
    When a worker is started on that node with --backend cuda --device 0
    Then the start fails with exit code 1 and "GPU_TOO_HOT"
    And no worker was spawned on that node

  @Gap-R5
  Scenario: Enough VRAM in total but not on one GPU
    Given a running cluster without workers
    And a hive of its own on a new node with these GPUs, and the CPU worker standing in for the cuda one:
      | index | free MB | temperature |
      | 0     | 80      | 50          |
      | 1     | 80      | 50          |
    When a worker is started on that node with --backend cuda
    Then the start fails with exit code 1 and "VRAM_FRAGMENTED"
    And no worker was spawned on that node
