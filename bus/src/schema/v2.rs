//! Schema 2, frozen: the event shapes rbee wrote before start commands named a backend and device.
//! Every type the schema names is copied here, so later changes cannot change how these bodies decode.
//! Schema 2 -> 3: `WorkerStartRequested` gained `backend` (older commands mean `cpu`) and `device`.

use serde::{Deserialize, Serialize};

use super::v3 as next;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    Loading,
    Ready,
    Draining,
    Stopped,
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
    Error,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStartRequested {
    pub node: String,
    pub worker: String,
    pub model: String,
    pub source: String,
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
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStateChanged {
    pub worker: String,
    pub state: WorkerState,
    pub context_length: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerExited {
    pub worker: String,
    pub node: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

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
    pub error_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCancelled {
    pub request: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRegistered {
    pub model: String,
    pub node: String,
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub memory_required_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStartFailed {
    pub worker: String,
    pub node: String,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRemoved {
    pub worker: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRemoved {
    pub model: String,
    pub node: String,
    pub reason: String,
}

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

super::unit_for_unit!(WorkerState => next::WorkerState { Loading, Ready, Draining, Stopped, Stale });
super::unit_for_unit!(FinishReason => next::FinishReason { Stop, Length, Cancelled, Error });
super::field_for_field!(NodeRegistered => next::NodeRegistered { node, ram_total_bytes, ram_available_bytes, cores, disk_free_bytes, hive_version });
super::field_for_field!(WorkerRegistered => next::WorkerRegistered { worker, node, model, slots, pid, backend });
super::field_for_field!(WorkerStateChanged => next::WorkerStateChanged { worker, state, context_length });
super::field_for_field!(WorkerExited => next::WorkerExited { worker, node, exit_code, signal });
super::field_for_field!(WorkerHeartbeat => next::WorkerHeartbeat { worker, node, busy_slots });
super::field_for_field!(SlotClaimed => next::SlotClaimed { worker, slot, request });
super::field_for_field!(SlotReleased => next::SlotReleased { worker, slot, request });
super::field_for_field!(RequestAccepted => next::RequestAccepted { request, model, worker, slot, max_tokens, stream });
super::field_for_field!(RequestFinished => next::RequestFinished { request, worker, finish_reason, prompt_tokens, completion_tokens, time_to_first_token_ms, duration_ms, error_code });
super::field_for_field!(RequestCancelled => next::RequestCancelled { request, reason });
super::field_for_field!(ModelRegistered => next::ModelRegistered { model, node, path, size_bytes, sha256, memory_required_bytes });
super::field_for_field!(WorkerStartFailed => next::WorkerStartFailed { worker, node, code, message });
super::field_for_field!(WorkerRemoved => next::WorkerRemoved { worker, reason });
super::field_for_field!(ModelRemoved => next::ModelRemoved { model, node, reason });

/// Commands of schema 2 ran workers on the CPU, on any device.
impl From<WorkerStartRequested> for next::WorkerStartRequested {
    fn from(e: WorkerStartRequested) -> Self {
        next::WorkerStartRequested {
            node: e.node,
            worker: e.worker,
            model: e.model,
            source: e.source,
            sha256: e.sha256,
            slots: e.slots,
            backend: "cpu".into(),
            device: None,
        }
    }
}

super::variant_for_variant!(Event => next::Event { NodeRegistered, WorkerStartRequested, WorkerRegistered, WorkerStateChanged, WorkerExited, WorkerHeartbeat, SlotClaimed, SlotReleased, RequestAccepted, RequestFinished, RequestCancelled, ModelRegistered, WorkerStartFailed, WorkerRemoved, ModelRemoved });
