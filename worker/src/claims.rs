//! Claims the worker was never given a request for. A queen claims one of this worker's slots in
//! the log, then hands it the request. A queen that dies, or loses NATS, between the two leaves the
//! slot claimed for a request nobody will run, and the registry would count it busy for ever. The
//! worker hears every claim on itself; one whose request has not reached it within
//! [`CLAIM_GRACE`] is released by the worker, through its outbox. The same subscription tells the
//! worker when the log removed it ([`crate::rejoin`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::outbox::Outbox;
use rbee_bus::{Envelope, Event, Meta, SlotReleased};

/// How long a claimed slot waits for its request. A queen dispatches right after claiming and gives
/// up after 5 s (releasing the slot itself), so a longer silence means no request is coming.
pub const CLAIM_GRACE: Duration = Duration::from_secs(10);

/// The requests this worker was given lately.
#[derive(Default)]
pub struct Given {
    requests: Mutex<HashMap<String, Instant>>,
}

impl Given {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `request` reached this worker (taken or refused: either way a queen still holds it).
    pub fn note(&self, request: &str) {
        let mut requests = self.lock();
        // What is older than a few graces can no longer be asked about.
        requests.retain(|_, at| at.elapsed() < CLAIM_GRACE * 6);
        requests.insert(request.to_string(), Instant::now());
    }

    fn contains(&self, request: &str) -> bool {
        self.lock().contains_key(request)
    }
}

/// Listens to the events on this worker's subject, until the subscription ends: releases each
/// claim whose request did not reach it within [`CLAIM_GRACE`], and wakes `removed` when the log
/// removes this worker.
pub async fn watch(
    mut events: async_nats::Subscriber,
    given: Arc<Given>,
    outbox: Arc<Outbox>,
    (node, worker): (String, String),
    removed: Arc<tokio::sync::Notify>,
) {
    while let Some(msg) = events.next().await {
        let Ok(envelope) = Envelope::decode(msg.headers.as_ref(), &msg.payload) else { continue };
        let claimed = match envelope.event {
            Event::SlotClaimed(claimed) => claimed,
            Event::WorkerRemoved(gone) if gone.worker == worker => {
                removed.notify_one();
                continue;
            }
            _ => continue,
        };
        if claimed.worker != worker {
            continue;
        }
        let (given, outbox, node) = (given.clone(), outbox.clone(), node.clone());
        tokio::spawn(async move {
            tokio::time::sleep(CLAIM_GRACE).await;
            if given.contains(&claimed.request) {
                return;
            }
            tracing::warn!(request = %claimed.request, slot = claimed.slot, "a claim on this worker never brought its request; releasing the slot");
            let released = Event::SlotReleased(SlotReleased {
                worker: claimed.worker,
                node,
                slot: claimed.slot,
                request: claimed.request.clone(),
            });
            let meta = Meta { correlation: Some(claimed.request), traceparent: None };
            if let Err(e) = outbox.record(released, &meta) {
                tracing::error!(error = %e, "release of an orphaned claim not recorded");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_request_is_remembered() {
        let given = Given::default();
        given.note("r1");
        assert!(given.contains("r1"));
        assert!(!given.contains("r2"));
    }
}
