//! The catalogue of error codes: every failure a user, an operator or another process can meet has
//! one stable code, an HTTP status and a one-line meaning. Codes travel in events and frames as this
//! enum, in HTTP bodies and CLI messages as their names (`MODEL_NOT_FOUND`).
//!
//! Postcard encodes a variant by its index and events carry codes, so the order below is part of
//! the event schema: new codes are only ever added at the end (a test pins the order).

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($variant:ident $name:literal $status:literal $meaning:literal;)*) => {
        /// A stable error code. See the module documentation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum Code {
            $(#[doc = $meaning] $variant,)*
        }

        impl Code {
            /// Every code, in schema order.
            pub const ALL: &[Code] = &[$(Code::$variant),*];

            /// The name users see: `MODEL_NOT_FOUND`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $name,)* }
            }

            /// The HTTP status this failure answers with.
            pub fn http_status(self) -> u16 {
                match self { $(Code::$variant => $status,)* }
            }

            /// What the code means, in one line.
            pub fn meaning(self) -> &'static str {
                match self { $(Code::$variant => $meaning,)* }
            }
        }
    };
}

codes! {
    // The HTTP API.
    InvalidRequest "INVALID_REQUEST" 400 "a field is missing or out of range (`param` names it)";
    ContextLengthExceeded "CONTEXT_LENGTH_EXCEEDED" 400 "prompt + `max_tokens` do not fit the model's context";
    InvalidChat "INVALID_CHAT" 400 "the messages cannot be rendered with the model's chat template";
    ModelNotFound "MODEL_NOT_FOUND" 404 "no worker, node or model hub has the model";
    RequestNotFound "REQUEST_NOT_FOUND" 404 "no request with that id";
    NotFound "NOT_FOUND" 404 "no such endpoint";
    RequestTooLarge "REQUEST_TOO_LARGE" 413 "the body is over `--max-body-bytes`";
    NoReadyWorker "NO_READY_WORKER" 503 "the model's workers are still loading, stale or draining";
    AllSlotsBusy "ALL_SLOTS_BUSY" 503 "other queens kept taking the free slots first";
    WorkerUnreachable "WORKER_UNREACHABLE" 503 "the chosen worker did not take the request";
    WorkerAlreadyBusy "WORKER_ALREADY_BUSY" 503 "the worker's slots, or its state, changed under the request; retry";
    InferenceFailed "INFERENCE_FAILED" 502 "the worker failed while generating";
    GenerationStalled "GENERATION_STALLED" 504 "the worker sent no token within the token timeout";
    // The log and the archive.
    EventLogUnavailable "EVENT_LOG_UNAVAILABLE" 503 "nats-server (JetStream) cannot be reached or refused the operation";
    EventStoreUnavailable "EVENT_STORE_UNAVAILABLE" 503 "the Postgres event store cannot be reached or refused the operation";
    UndecodableEvent "UNDECODABLE_EVENT" 500 "an event in the log cannot be decoded by this rbee";
    CheckpointOutdated "CHECKPOINT_OUTDATED" 500 "a projection checkpoint has an older snapshot schema; rebuilt from the log";
    CheckpointCorrupt "CHECKPOINT_CORRUPT" 500 "a projection checkpoint failed its checks; rebuilt from the log";
    CheckpointForeign "CHECKPOINT_FOREIGN" 500 "a projection checkpoint was folded from another log; rebuilt";
    // Names, references and configuration.
    InvalidName "INVALID_NAME" 400 "a node, worker or model name breaks the naming rule";
    InvalidModelSource "INVALID_MODEL_SOURCE" 400 "a model reference is not `hf:org/repo[:file]`, `https://...`, `file://` or a path";
    InvalidConfig "INVALID_CONFIG" 400 "a configuration value is out of range";
    InvalidArgument "INVALID_ARGUMENT" 400 "a command-line argument is out of range";
    InvalidFilter "INVALID_FILTER" 400 "a filter names an unknown value";
    // Workers.
    WorkerAlreadyRegistered "WORKER_ALREADY_REGISTERED" 409 "another live worker holds that id";
    WorkerNotFound "WORKER_NOT_FOUND" 404 "no worker with that id";
    InvalidState "INVALID_STATE" 409 "the worker is not in a state that allows this";
    InvalidWorkItem "INVALID_WORK_ITEM" 400 "a work item sent to a worker could not be decoded";
    ModelUnreadable "MODEL_UNREADABLE" 500 "the worker cannot read its model file";
    ModelInvalid "MODEL_INVALID" 422 "the file is not a usable GGUF model";
    LoadingTimeout "LOADING_TIMEOUT" 504 "the worker was not ready within the loading timeout";
    WorkerExited "WORKER_EXITED" 500 "the worker exited while starting";
    RegistryFull "REGISTRY_FULL" 503 "the hive runs `--max-workers` already; remove stale workers";
    WorkerBinaryMissing "WORKER_BINARY_MISSING" 500 "the worker binary for the backend does not exist";
    WorkerBinaryNotExecutable "WORKER_BINARY_NOT_EXECUTABLE" 500 "the worker binary for the backend is not executable";
    WorkerSpawnFailed "WORKER_SPAWN_FAILED" 500 "the worker process could not be started";
    DataDirUnusable "DATA_DIR_UNUSABLE" 500 "the hive cannot create or write its data directory";
    // Preflight.
    InvalidBackend "INVALID_BACKEND" 400 "the backend is not one of `cpu`, `cuda`, `metal`, `auto`";
    IncompatibleFeatures "INCOMPATIBLE_FEATURES" 400 "backends that cannot run in one worker were asked together";
    BackendUnavailable "BACKEND_UNAVAILABLE" 400 "the backend is not on this node (the message lists those that are)";
    InvalidDevice "INVALID_DEVICE" 400 "the GPU index does not exist (the message lists valid ones)";
    InsufficientRam "INSUFFICIENT_RAM" 503 "the node lacks the RAM the model needs";
    InsufficientVram "INSUFFICIENT_VRAM" 503 "no GPU has the VRAM the model needs";
    VramFragmented "VRAM_FRAGMENTED" 503 "enough VRAM in total, but on no single GPU";
    GpuTooHot "GPU_TOO_HOT" 503 "the GPU is above `--max-gpu-temperature-c`";
    // Models and downloads.
    ModelInUse "MODEL_IN_USE" 409 "a worker serves the model";
    RemoveFailed "REMOVE_FAILED" 500 "the model file could not be deleted";
    ProvisionFailed "PROVISION_FAILED" 500 "the model could not be made available on the node";
    ChecksumMismatch "CHECKSUM_MISMATCH" 422 "the file's sha256 is not the expected one";
    AccessDenied "ACCESS_DENIED" 403 "the model hub refused access (set `HF_TOKEN`)";
    AmbiguousModelFile "AMBIGUOUS_MODEL_FILE" 400 "the repository has several .gguf files; name one";
    RateLimited "RATE_LIMITED" 429 "over a rate limit: an API key's own (retry after `Retry-After` seconds), or the model hub's for a download";
    DownloadFailed "DOWNLOAD_FAILED" 502 "the download failed after its retries";
    DownloadTimeout "DOWNLOAD_TIMEOUT" 504 "no bytes arrived within the stall timeout, after the retries";
    DownloadTakenOver "DOWNLOAD_TAKEN_OVER" 409 "another live hive process holds the download, or took it over";
    InsufficientDisk "INSUFFICIENT_DISK" 507 "not enough free disk for the model; remove models";
    DiskFull "DISK_FULL" 507 "the disk filled during the download; the partial file is removed";
    // The CLI and the local cluster.
    Interrupted "INTERRUPTED" 499 "the user interrupted the command (Ctrl+C; exit 130)";
    IoError "IO_ERROR" 500 "a local file could not be read or written";
    BindFailed "BIND_FAILED" 500 "the HTTP listener could not bind its address";
    PortInUse "PORT_IN_USE" 409 "the port is taken; pass another";
    NoFreePort "NO_FREE_PORT" 500 "no free local port could be found";
    BinaryMissing "BINARY_MISSING" 500 "an rbee binary is not beside `rbee` or on PATH";
    SpawnFailed "SPAWN_FAILED" 500 "a local process could not be started";
    CommandFailed "COMMAND_FAILED" 500 "a helper command failed";
    InstallFailed "INSTALL_FAILED" 500 "a prerequisite could not be installed";
    NatsStartFailed "NATS_START_FAILED" 500 "nats-server did not start";
    PostgresNotFound "POSTGRES_NOT_FOUND" 500 "no Postgres binaries on this machine";
    PostgresStartFailed "POSTGRES_START_FAILED" 500 "Postgres did not start";
    QueenStartFailed "QUEEN_START_FAILED" 500 "the queen did not start";
    QueenUnreachable "QUEEN_UNREACHABLE" 503 "the queen's HTTP endpoint cannot be reached";
    HiveUnavailable "HIVE_UNAVAILABLE" 503 "no hive answered for the node";
    HttpError "HTTP_ERROR" 502 "the queen answered with an error that carried no code";
    StreamBroken "STREAM_BROKEN" 502 "the answer's stream ended before `[DONE]`";
    InvalidBackup "INVALID_BACKUP" 400 "the file is not a usable rbee backup";
    RestoreTargetNotEmpty "RESTORE_TARGET_NOT_EMPTY" 409 "a restore goes only into an empty log";
    RestoreFailed "RESTORE_FAILED" 500 "an event of the backup was refused by the log";
    Cancelled "CANCELLED" 499 "the request was cancelled (client gone, `DELETE`, Ctrl+C) before it ended";
    InternalError "INTERNAL_ERROR" 500 "a process failed inside (a thread could not start, a task panicked); see its log";
    Unknown "UNKNOWN" 500 "a code this version of rbee does not know (written by another version)";
    // Added with roles and credentials (schema 4 still: codes only ever go at the end).
    NatsAuthFailed "NATS_AUTH_FAILED" 503 "nats-server refused this process's credentials: missing, wrong or for another cluster";
    ClusterNotFound "CLUSTER_NOT_FOUND" 404 "no local cluster is recorded in the data directory; run `rbee up`";
    ForgedEvent "FORGED_EVENT" 500 "an event claims another origin than the subject it was written on; skipped and reported";
    // Added with API keys.
    MissingApiKey "MISSING_API_KEY" 401 "no `Authorization: Bearer <key>` header; `rbee keys create` makes a key";
    InvalidApiKey "INVALID_API_KEY" 401 "the API key is unknown or revoked";
    KeyNotFound "KEY_NOT_FOUND" 404 "no API key with that id";
    SourceNotAllowed "SOURCE_NOT_ALLOWED" 403 "the model source is not on the hive's allow-list (`--allowed-hosts`, `--allowed-dirs`)";
    UnsupportedMediaType "UNSUPPORTED_MEDIA_TYPE" 415 "a JSON endpoint was sent a body that is not `Content-Type: application/json`";
    WorkerLost "WORKER_LOST" 502 "the worker serving the request exited or went silent mid-stream";
    QueueFull "QUEUE_FULL" 503 "the queue of requests waiting for the model is full (`--queue-depth`)";
    QueueTimeout "QUEUE_TIMEOUT" 503 "no slot freed up within the queue timeout (`--queue-timeout-secs`)";
    RequestTimeout "REQUEST_TIMEOUT" 408 "the request's deadline (`x-request-timeout`, `--request-timeout-secs`) passed before it ended";
    // Added with mid-stream failover.
    StreamAbandoned "STREAM_ABANDONED" 502 "the worker stopped the request because no queen read its stream any more; a queen moves it to a worker";
    GenerationTimeout "GENERATION_TIMEOUT" 504 "the generation ran past the worker's time limit (`--generation-timeout-secs`); the text made so far is returned";
    NoReadyQueen "NO_READY_QUEEN" 503 "the load balancer in front of the queens found none ready (all draining, stopped or cut off from NATS)";
    TokensLost "TOKENS_LOST" 502 "part of the answer was lost on its way from the worker (a NATS server went away mid-stream); retry the request";
}

impl Code {
    /// The code named `name` (`"MODEL_NOT_FOUND"`), if there is one.
    pub fn parse(name: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == name)
    }

    /// Whether the failure is the caller's (4xx) rather than the system's.
    pub fn is_client_error(self) -> bool {
        (400..500).contains(&self.http_status())
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_one_name_and_serde_spells_it_the_same() {
        let mut names: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        for code in Code::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(code.as_str()));
            assert_eq!(Code::parse(code.as_str()), Some(*code));
            assert!((400..600).contains(&code.http_status()), "{code}: {}", code.http_status());
            assert!(!code.meaning().is_empty());
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Code::ALL.len(), "two codes share a name");
        assert_eq!(Code::parse("NO_SUCH_CODE"), None);
    }

    /// Events carry codes by index: the catalogue of schema 4 must stay a prefix of today's.
    #[test]
    fn the_order_of_codes_is_frozen() {
        let frozen: Vec<&str> = include_str!("../tests/fixtures/codes_schema4.txt").lines().collect();
        let today: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert!(today.len() >= frozen.len(), "a code was removed");
        assert_eq!(
            &today[..frozen.len()],
            &frozen[..],
            "codes were reordered or renamed: only add new ones at the end"
        );
        for (i, code) in Code::ALL.iter().enumerate() {
            assert_eq!(postcard::to_stdvec(code).unwrap(), postcard::to_stdvec(&(i as u32)).unwrap());
        }
    }
}
