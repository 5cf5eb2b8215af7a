//! Schema 1, frozen: the event shapes rbee 0.1 wrote, and their upcast to today's types.
//!
//! Postcard is not self-describing, so reading an old body needs the old shapes exactly, variant
//! order included. Only what changed is redefined here; unchanged variants reuse today's structs.
//! Schema 1 -> 2: `ModelRegistered` gained `memory_required_bytes`; then on through schema 2's upcast.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::event::{self, estimated_memory_bytes};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRegistered {
    pub model: String,
    pub node: String,
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    NodeRegistered(event::NodeRegistered),
    WorkerStartRequested(crate::schema_v2::WorkerStartRequested),
    WorkerRegistered(event::WorkerRegistered),
    WorkerStateChanged(event::WorkerStateChanged),
    WorkerExited(event::WorkerExited),
    WorkerHeartbeat(event::WorkerHeartbeat),
    SlotClaimed(event::SlotClaimed),
    SlotReleased(event::SlotReleased),
    RequestAccepted(event::RequestAccepted),
    RequestFinished(event::RequestFinished),
    RequestCancelled(event::RequestCancelled),
    ModelRegistered(ModelRegistered),
    WorkerStartFailed(event::WorkerStartFailed),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeV1 {
    pub id: Uuid,
    pub version: u64,
    pub at_ms: u64,
    pub correlation: Option<String>,
    pub traceparent: Option<String>,
    pub event: Event,
}

impl From<Event> for event::Event {
    fn from(old: Event) -> Self {
        use event::Event as New;
        match old {
            Event::NodeRegistered(e) => New::NodeRegistered(e),
            Event::WorkerStartRequested(e) => New::WorkerStartRequested(e.into()),
            Event::WorkerRegistered(e) => New::WorkerRegistered(e),
            Event::WorkerStateChanged(e) => New::WorkerStateChanged(e),
            Event::WorkerExited(e) => New::WorkerExited(e),
            Event::WorkerHeartbeat(e) => New::WorkerHeartbeat(e),
            Event::SlotClaimed(e) => New::SlotClaimed(e),
            Event::SlotReleased(e) => New::SlotReleased(e),
            Event::RequestAccepted(e) => New::RequestAccepted(e),
            Event::RequestFinished(e) => New::RequestFinished(e),
            Event::RequestCancelled(e) => New::RequestCancelled(e),
            Event::WorkerStartFailed(e) => New::WorkerStartFailed(e),
            Event::ModelRegistered(e) => New::ModelRegistered(event::ModelRegistered {
                memory_required_bytes: estimated_memory_bytes(e.size_bytes),
                model: e.model,
                node: e.node,
                path: e.path,
                size_bytes: e.size_bytes,
                sha256: e.sha256,
            }),
        }
    }
}

impl From<EnvelopeV1> for Envelope {
    fn from(old: EnvelopeV1) -> Self {
        Envelope {
            id: old.id,
            version: old.version,
            at_ms: old.at_ms,
            correlation: old.correlation,
            traceparent: old.traceparent,
            event: old.event.into(),
        }
    }
}
