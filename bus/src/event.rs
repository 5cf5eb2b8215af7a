//! The domain events of rbee. Every fact about the cluster is one of these, appended to the log.
//!
//! The enum is a versioned contract: postcard encodes variants by index, so new variants are only ever
//! added at the end and existing fields never change shape. A change of shape is a new schema version
//! frozen in [`crate::schema`] with an upcast to these types.

use serde::{Deserialize, Serialize};

use crate::code::Code;

/// What a worker is doing, as far as the cluster knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    /// Registered; the model is being loaded.
    Loading,
    /// Model loaded; slots may be claimed.
    Ready,
    /// Finishing its in-flight requests; takes no new ones.
    Draining,
    /// Gone: exited or stopped.
    Stopped,
    /// Heartbeats stopped arriving: takes no new requests; removed when idle or after a grace period.
    Stale,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Loading => "loading",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Stopped => "stopped",
            WorkerState::Stale => "stale",
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// The model emitted its end-of-sequence token.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The request was cancelled (client gone, Ctrl+C, `DELETE`).
    Cancelled,
    /// The worker failed; the request carries an error code.
    Error,
}

impl FinishReason {
    /// The OpenAI wire name (`"stop"`, `"length"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistered {
    pub node: String,
    pub ram_total_bytes: u64,
    pub ram_available_bytes: u64,
    pub cores: u32,
    pub disk_free_bytes: u64,
    pub hive_version: String,
}

/// A command to a hive: start a worker for a model. Read by the hive through a durable consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStartRequested {
    pub node: String,
    pub worker: String,
    pub model: String,
    /// Where the hive gets the model if it is not in its catalog yet (`file:` path for now).
    pub source: String,
    /// Expected sha256 of the model file, hex; checked when the hive provisions it.
    pub sha256: Option<String>,
    pub slots: u32,
    /// Requested backend: `cpu`, `cuda`, `metal`, or `auto` (schema 3; older commands mean `cpu`).
    pub backend: String,
    /// GPU index; `None` lets the hive choose (the one with most free VRAM).
    pub device: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRegistered {
    pub worker: String,
    pub node: String,
    pub model: String,
    pub slots: u32,
    pub pid: u32,
    /// e.g. `cpu`; later `cuda:0`.
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStateChanged {
    pub worker: String,
    /// The worker's node (schema 6; empty in older events).
    pub node: String,
    pub state: WorkerState,
    /// Context window of the loaded model, known once it is loaded (0 before).
    pub context_length: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerExited {
    pub worker: String,
    pub node: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// A hive could not start a requested worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStartFailed {
    pub worker: String,
    pub node: String,
    pub code: Code,
    pub message: String,
}

/// The cluster dropped a worker it no longer hears from (the process may be gone or cut off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRemoved {
    pub worker: String,
    /// The worker's node (schema 6; empty in older events).
    pub node: String,
    pub reason: String,
}

/// A catalogued model left a node (its file is gone, or it was removed on purpose).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRemoved {
    pub model: String,
    pub node: String,
    pub reason: String,
}

/// Liveness: published on `RBEE_HB`, one kept per worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    pub worker: String,
    pub node: String,
    pub busy_slots: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotClaimed {
    pub worker: String,
    /// The worker's node (schema 6; empty in older events).
    pub node: String,
    pub slot: u32,
    pub request: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReleased {
    pub worker: String,
    /// The worker's node (schema 6; empty in older events).
    pub node: String,
    pub slot: u32,
    pub request: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAccepted {
    pub request: String,
    pub model: String,
    pub worker: String,
    pub slot: u32,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    /// The id of the API key that made the request (schema 5; None before keys, or with `--no-auth`).
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFinished {
    pub request: String,
    pub worker: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub time_to_first_token_ms: u64,
    pub duration_ms: u64,
    /// Set when `finish_reason` is `Error`.
    pub error_code: Option<Code>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCancelled {
    pub request: String,
    /// `client_disconnected`, `user_interrupt`, `deleted`, ...
    pub reason: String,
}

/// Schema 2 added `memory_required_bytes`; schema 1 events are upcast with [`estimated_memory_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRegistered {
    pub model: String,
    pub node: String,
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// Memory (RAM, or VRAM on a GPU) needed to serve the model: weights plus working room.
    pub memory_required_bytes: u64,
}

/// The memory a GGUF model of `size_bytes` needs to serve: the weights plus a fifth for the KV cache
/// and activations (measured on SmolLM2-135M: 98 MB file, ~115 MB of tensors and caches at 4k context).
pub fn estimated_memory_bytes(size_bytes: u64) -> u64 {
    size_bytes.saturating_add(size_bytes / 5)
}

/// A command to a hive: make a model available on its node (download it unless it is there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPullRequested {
    pub node: String,
    pub model: String,
    /// `hf:org/repo[:file]`, `https://...` or `file:///path`.
    pub source: String,
    pub sha256: Option<String>,
}

/// A command to a hive: delete a model's file from its node and the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRemoveRequested {
    pub node: String,
    pub model: String,
}

/// A hive claimed the download of a model to its node (the claim is the append, under optimistic
/// concurrency: one downloader per model and node). `resume_from` > 0 continues a partial file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadStarted {
    /// `<node>.<model>`: see [`download_id`].
    pub download: String,
    pub node: String,
    pub model: String,
    pub source: String,
    /// Total size when the source says it (0 when unknown).
    pub total_bytes: u64,
    /// The checksum the file must have, from the request or the hub.
    pub sha256: Option<String>,
    pub resume_from: u64,
    /// The claiming hive process: an id of this run, and its pid on the node.
    pub owner: String,
    pub pid: u32,
}

/// One more chunk is on disk (synced). Carries what a successor needs to resume without rereading:
/// the offset and the SHA-256 state after it (eight big-endian words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadProgressed {
    pub download: String,
    pub offset: u64,
    pub total_bytes: u64,
    pub sha256_state: Vec<u8>,
    pub bytes_per_sec: u64,
}

/// An attempt failed and will be retried after `delay_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRetried {
    pub download: String,
    pub attempt: u32,
    pub code: Code,
    pub message: String,
    pub delay_ms: u64,
}

/// The file is complete and verified (followed by `model.registered`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadFinished {
    pub download: String,
    pub size_bytes: u64,
    pub sha256: String,
}

/// The download gave up; the partial file is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadFailed {
    pub download: String,
    pub code: Code,
    pub message: String,
}

/// The hive sent a signal to a worker process, and why (`shutdown`, `grace_expired`, `loading_timeout`,
/// `idle_timeout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSignalled {
    pub worker: String,
    pub node: String,
    pub pid: u32,
    pub signal: i32,
    pub reason: String,
}

/// A hive would not remove a model (e.g. a worker serves it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRemoveRefused {
    pub model: String,
    pub node: String,
    pub code: Code,
    pub message: String,
}

/// What one API key may use; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub concurrent_requests: Option<u32>,
}

/// An API key of the queens was made. The secret itself is never recorded, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreated {
    /// The key's public id, `k-` and 12 hex digits; requests record it.
    pub key: String,
    pub name: String,
    /// SHA-256 of the whole secret token, hex.
    pub secret_sha256: String,
    pub limits: KeyLimits,
}

/// An API key may no longer be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRevoked {
    pub key: String,
    pub reason: String,
}

/// The id of the download of `model` to `node`.
pub fn download_id(node: &str, model: &str) -> String {
    format!("{node}.{model}")
}

/// Every event rbee records. New variants go at the end (postcard encodes the index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    NodeRegistered(NodeRegistered),
    WorkerStartRequested(WorkerStartRequested),
    WorkerRegistered(WorkerRegistered),
    WorkerStateChanged(WorkerStateChanged),
    WorkerExited(WorkerExited),
    WorkerHeartbeat(WorkerHeartbeat),
    SlotClaimed(SlotClaimed),
    SlotReleased(SlotReleased),
    RequestAccepted(RequestAccepted),
    RequestFinished(RequestFinished),
    RequestCancelled(RequestCancelled),
    ModelRegistered(ModelRegistered),
    WorkerStartFailed(WorkerStartFailed),
    WorkerRemoved(WorkerRemoved),
    ModelRemoved(ModelRemoved),
    ModelPullRequested(ModelPullRequested),
    ModelRemoveRequested(ModelRemoveRequested),
    DownloadStarted(DownloadStarted),
    DownloadProgressed(DownloadProgressed),
    DownloadRetried(DownloadRetried),
    DownloadFinished(DownloadFinished),
    DownloadFailed(DownloadFailed),
    WorkerSignalled(WorkerSignalled),
    ModelRemoveRefused(ModelRemoveRefused),
    KeyCreated(KeyCreated),
    KeyRevoked(KeyRevoked),
}

/// The kinds of aggregate an event belongs to; the second token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggregateKind {
    Node,
    Worker,
    Model,
    Request,
    /// `rbee.ev.download.<node>.<model>`
    Download,
    /// An API key of the queens.
    Key,
}

impl AggregateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateKind::Node => "node",
            AggregateKind::Worker => "worker",
            AggregateKind::Model => "model",
            AggregateKind::Request => "request",
            AggregateKind::Download => "download",
            AggregateKind::Key => "key",
        }
    }
}

impl Event {
    /// The human-readable type carried in the `Rbee-Event` header, e.g. `worker.registered`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::NodeRegistered(_) => "node.registered",
            Event::WorkerStartRequested(_) => "worker.start_requested",
            Event::WorkerRegistered(_) => "worker.registered",
            Event::WorkerStateChanged(_) => "worker.state_changed",
            Event::WorkerExited(_) => "worker.exited",
            Event::WorkerHeartbeat(_) => "worker.heartbeat",
            Event::SlotClaimed(_) => "slot.claimed",
            Event::SlotReleased(_) => "slot.released",
            Event::RequestAccepted(_) => "request.accepted",
            Event::RequestFinished(_) => "request.finished",
            Event::RequestCancelled(_) => "request.cancelled",
            Event::ModelRegistered(_) => "model.registered",
            Event::WorkerStartFailed(_) => "worker.start_failed",
            Event::WorkerRemoved(_) => "worker.removed",
            Event::ModelRemoved(_) => "model.removed",
            Event::ModelPullRequested(_) => "model.pull_requested",
            Event::ModelRemoveRequested(_) => "model.remove_requested",
            Event::DownloadStarted(_) => "download.started",
            Event::DownloadProgressed(_) => "download.progressed",
            Event::DownloadRetried(_) => "download.retried",
            Event::DownloadFinished(_) => "download.finished",
            Event::DownloadFailed(_) => "download.failed",
            Event::WorkerSignalled(_) => "worker.signalled",
            Event::ModelRemoveRefused(_) => "model.remove_refused",
            Event::KeyCreated(_) => "key.created",
            Event::KeyRevoked(_) => "key.revoked",
        }
    }

    /// The node a worker's or a model's event belongs to. Those aggregates are kept per node
    /// (`rbee.ev.worker.<node>.<worker>`), so only the node's own identities may write them; empty
    /// in events of schema 5 and older that did not record it. `None` for other aggregates.
    pub fn node_scope(&self) -> Option<&str> {
        match self {
            Event::WorkerRegistered(e) => Some(&e.node),
            Event::WorkerStateChanged(e) => Some(&e.node),
            Event::WorkerExited(e) => Some(&e.node),
            Event::WorkerHeartbeat(e) => Some(&e.node),
            Event::SlotClaimed(e) => Some(&e.node),
            Event::SlotReleased(e) => Some(&e.node),
            Event::WorkerStartFailed(e) => Some(&e.node),
            Event::WorkerRemoved(e) => Some(&e.node),
            Event::WorkerSignalled(e) => Some(&e.node),
            Event::ModelRegistered(e) => Some(&e.node),
            Event::ModelRemoved(e) => Some(&e.node),
            Event::ModelRemoveRefused(e) => Some(&e.node),
            _ => None,
        }
    }

    /// The aggregate this event belongs to: it decides the subject and the optimistic-concurrency scope.
    pub fn aggregate(&self) -> (AggregateKind, &str) {
        use AggregateKind::*;
        match self {
            Event::NodeRegistered(e) => (Node, &e.node),
            // A command to a hive lives on its node's subject, so the hive's durable consumer reads it.
            Event::WorkerStartRequested(e) => (Node, &e.node),
            Event::WorkerRegistered(e) => (Worker, &e.worker),
            Event::WorkerStateChanged(e) => (Worker, &e.worker),
            Event::WorkerExited(e) => (Worker, &e.worker),
            Event::WorkerHeartbeat(e) => (Worker, &e.worker),
            Event::SlotClaimed(e) => (Worker, &e.worker),
            Event::SlotReleased(e) => (Worker, &e.worker),
            Event::RequestAccepted(e) => (Request, &e.request),
            Event::RequestFinished(e) => (Request, &e.request),
            Event::RequestCancelled(e) => (Request, &e.request),
            Event::ModelRegistered(e) => (Model, &e.model),
            Event::WorkerStartFailed(e) => (Worker, &e.worker),
            Event::WorkerRemoved(e) => (Worker, &e.worker),
            Event::ModelRemoved(e) => (Model, &e.model),
            // Commands to a hive live on its node's subject.
            Event::ModelPullRequested(e) => (Node, &e.node),
            Event::ModelRemoveRequested(e) => (Node, &e.node),
            Event::DownloadStarted(e) => (Download, &e.download),
            Event::DownloadProgressed(e) => (Download, &e.download),
            Event::DownloadRetried(e) => (Download, &e.download),
            Event::DownloadFinished(e) => (Download, &e.download),
            Event::DownloadFailed(e) => (Download, &e.download),
            Event::WorkerSignalled(e) => (Worker, &e.worker),
            Event::ModelRemoveRefused(e) => (Model, &e.model),
            Event::KeyCreated(e) => (Key, &e.key),
            Event::KeyRevoked(e) => (Key, &e.key),
        }
    }
}
