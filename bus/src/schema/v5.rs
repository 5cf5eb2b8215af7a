//! Schema 5, frozen: the event shapes rbee wrote before worker and model subjects named their node.
//! Every type the schema names is copied here, so a change to today's types cannot change how these
//! bodies decode. Error codes are today's [`Code`]: the catalogue only ever grows at the end.
//! Schema 5 -> 6: a worker's state changes, removal and slot events name the worker's node (so the
//! subject `rbee.ev.worker.<node>.<worker>` can be derived from them); they were not recorded
//! before, so upcast events name the empty node.

use serde::{Deserialize, Serialize};

use crate::code::Code;
use crate::event as next;

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
    pub backend: String,
    pub device: Option<u32>,
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
pub struct WorkerStartFailed {
    pub worker: String,
    pub node: String,
    pub code: Code,
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
    pub error_code: Option<Code>,
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
pub struct ModelPullRequested {
    pub node: String,
    pub model: String,
    pub source: String,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRemoveRequested {
    pub node: String,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadStarted {
    pub download: String,
    pub node: String,
    pub model: String,
    pub source: String,
    pub total_bytes: u64,
    pub sha256: Option<String>,
    pub resume_from: u64,
    pub owner: String,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadProgressed {
    pub download: String,
    pub offset: u64,
    pub total_bytes: u64,
    pub sha256_state: Vec<u8>,
    pub bytes_per_sec: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRetried {
    pub download: String,
    pub attempt: u32,
    pub code: Code,
    pub message: String,
    pub delay_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadFinished {
    pub download: String,
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadFailed {
    pub download: String,
    pub code: Code,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSignalled {
    pub worker: String,
    pub node: String,
    pub pid: u32,
    pub signal: i32,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRemoveRefused {
    pub model: String,
    pub node: String,
    pub code: Code,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub concurrent_requests: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreated {
    pub key: String,
    pub name: String,
    pub secret_sha256: String,
    pub limits: KeyLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRevoked {
    pub key: String,
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

super::unit_for_unit!(WorkerState => next::WorkerState { Loading, Ready, Draining, Stopped, Stale });
super::unit_for_unit!(FinishReason => next::FinishReason { Stop, Length, Cancelled, Error });
super::field_for_field!(NodeRegistered => next::NodeRegistered { node, ram_total_bytes, ram_available_bytes, cores, disk_free_bytes, hive_version });
super::field_for_field!(WorkerStartRequested => next::WorkerStartRequested { node, worker, model, source, sha256, slots, backend, device });
super::field_for_field!(WorkerRegistered => next::WorkerRegistered { worker, node, model, slots, pid, backend });
super::field_for_field!(WorkerExited => next::WorkerExited { worker, node, exit_code, signal });
super::field_for_field!(WorkerStartFailed => next::WorkerStartFailed { worker, node, code, message });
super::field_for_field!(ModelRemoved => next::ModelRemoved { model, node, reason });
super::field_for_field!(WorkerHeartbeat => next::WorkerHeartbeat { worker, node, busy_slots });
super::field_for_field!(RequestFinished => next::RequestFinished { request, worker, finish_reason, prompt_tokens, completion_tokens, time_to_first_token_ms, duration_ms, error_code });
super::field_for_field!(RequestCancelled => next::RequestCancelled { request, reason });
super::field_for_field!(ModelRegistered => next::ModelRegistered { model, node, path, size_bytes, sha256, memory_required_bytes });
super::field_for_field!(ModelPullRequested => next::ModelPullRequested { node, model, source, sha256 });
super::field_for_field!(ModelRemoveRequested => next::ModelRemoveRequested { node, model });
super::field_for_field!(DownloadStarted => next::DownloadStarted { download, node, model, source, total_bytes, sha256, resume_from, owner, pid });
super::field_for_field!(DownloadProgressed => next::DownloadProgressed { download, offset, total_bytes, sha256_state, bytes_per_sec });
super::field_for_field!(DownloadRetried => next::DownloadRetried { download, attempt, code, message, delay_ms });
super::field_for_field!(DownloadFinished => next::DownloadFinished { download, size_bytes, sha256 });
super::field_for_field!(DownloadFailed => next::DownloadFailed { download, code, message });
super::field_for_field!(WorkerSignalled => next::WorkerSignalled { worker, node, pid, signal, reason });
super::field_for_field!(ModelRemoveRefused => next::ModelRemoveRefused { model, node, code, message });

super::field_for_field!(RequestAccepted => next::RequestAccepted { request, model, worker, slot, max_tokens, stream, key });
super::field_for_field!(KeyLimits => next::KeyLimits { requests_per_minute, tokens_per_minute, concurrent_requests });
super::field_for_field!(KeyCreated => next::KeyCreated { key, name, secret_sha256, limits });
super::field_for_field!(KeyRevoked => next::KeyRevoked { key, reason });

/// The node was not recorded in schema 5.
const UNKNOWN_NODE: String = String::new();

impl From<WorkerStateChanged> for next::WorkerStateChanged {
    fn from(e: WorkerStateChanged) -> Self {
        next::WorkerStateChanged {
            worker: e.worker,
            node: UNKNOWN_NODE,
            state: e.state.into(),
            context_length: e.context_length,
        }
    }
}

impl From<WorkerRemoved> for next::WorkerRemoved {
    fn from(e: WorkerRemoved) -> Self {
        next::WorkerRemoved { worker: e.worker, node: UNKNOWN_NODE, reason: e.reason }
    }
}

impl From<SlotClaimed> for next::SlotClaimed {
    fn from(e: SlotClaimed) -> Self {
        next::SlotClaimed { worker: e.worker, node: UNKNOWN_NODE, slot: e.slot, request: e.request }
    }
}

impl From<SlotReleased> for next::SlotReleased {
    fn from(e: SlotReleased) -> Self {
        next::SlotReleased { worker: e.worker, node: UNKNOWN_NODE, slot: e.slot, request: e.request }
    }
}

super::variant_for_variant!(Event => next::Event {
    NodeRegistered, WorkerStartRequested, WorkerRegistered, WorkerStateChanged, WorkerExited, WorkerHeartbeat, SlotClaimed, SlotReleased, RequestAccepted, RequestFinished, RequestCancelled, ModelRegistered, WorkerStartFailed, WorkerRemoved, ModelRemoved, ModelPullRequested, ModelRemoveRequested, DownloadStarted, DownloadProgressed, DownloadRetried, DownloadFinished, DownloadFailed, WorkerSignalled, ModelRemoveRefused, KeyCreated, KeyRevoked
});
