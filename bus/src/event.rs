//! The domain events of rbee. Every fact about the cluster is one of these, appended to the log.
//!
//! The enum is a versioned contract: postcard encodes variants by index, so new variants are only ever
//! added at the end and existing fields never change shape. A change of shape is a new schema version
//! with an upcaster in [`crate::envelope`].

use serde::{Deserialize, Serialize};

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
    /// Stable error code, e.g. `MODEL_NOT_FOUND`, `WORKER_BINARY_MISSING`.
    pub code: String,
    pub message: String,
}

/// The cluster dropped a worker it no longer hears from (the process may be gone or cut off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRemoved {
    pub worker: String,
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
    pub slot: u32,
    pub request: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReleased {
    pub worker: String,
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
    /// Stable error code when `finish_reason` is `Error`.
    pub error_code: Option<String>,
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
}

/// The kinds of aggregate an event belongs to; the second token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggregateKind {
    Node,
    Worker,
    Model,
    Request,
}

impl AggregateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateKind::Node => "node",
            AggregateKind::Worker => "worker",
            AggregateKind::Model => "model",
            AggregateKind::Request => "request",
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
        }
    }
}
