//! Schema 2, frozen: the event shapes rbee wrote before start commands named a backend and device.
//!
//! Only what changed is redefined here; unchanged variants reuse today's structs.
//! Schema 2 -> 3: `WorkerStartRequested` gained `backend` (older commands mean `cpu`) and `device`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::event;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStartRequested {
    pub node: String,
    pub worker: String,
    pub model: String,
    pub source: String,
    pub sha256: Option<String>,
    pub slots: u32,
}

impl From<WorkerStartRequested> for event::WorkerStartRequested {
    fn from(e: WorkerStartRequested) -> Self {
        event::WorkerStartRequested {
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    NodeRegistered(event::NodeRegistered),
    WorkerStartRequested(WorkerStartRequested),
    WorkerRegistered(event::WorkerRegistered),
    WorkerStateChanged(event::WorkerStateChanged),
    WorkerExited(event::WorkerExited),
    WorkerHeartbeat(event::WorkerHeartbeat),
    SlotClaimed(event::SlotClaimed),
    SlotReleased(event::SlotReleased),
    RequestAccepted(event::RequestAccepted),
    RequestFinished(event::RequestFinished),
    RequestCancelled(event::RequestCancelled),
    ModelRegistered(event::ModelRegistered),
    WorkerStartFailed(event::WorkerStartFailed),
    WorkerRemoved(event::WorkerRemoved),
    ModelRemoved(event::ModelRemoved),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeV2 {
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
            Event::ModelRegistered(e) => New::ModelRegistered(e),
            Event::WorkerStartFailed(e) => New::WorkerStartFailed(e),
            Event::WorkerRemoved(e) => New::WorkerRemoved(e),
            Event::ModelRemoved(e) => New::ModelRemoved(e),
        }
    }
}

impl From<EnvelopeV2> for Envelope {
    fn from(old: EnvelopeV2) -> Self {
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
