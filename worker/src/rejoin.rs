//! A worker the log dropped while it could not be heard comes back. A queen removes a worker whose
//! heartbeats stop (the process was paused, or its machine cut off from NATS), but the process may
//! live on and be heard again. When this worker sees its own removal, or gets its connection to
//! NATS back, it reads its aggregate; if the log no longer has it registered, it registers again
//! (an optimistic append, so a process registering the same id at that moment wins or loses
//! cleanly) and says it is ready. Requests it was running when removed were moved or ended by
//! then; it gives them up as any abandoned request ([`crate::requesters`]).

use std::sync::Arc;
use std::time::Duration;

use rbee_bus::outbox::Outbox;
use rbee_bus::{Event, EventLog, Meta, WorkerRegistered, WorkerState, WorkerStateChanged};

use crate::registration::Outcome;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Attempts at registering again when the aggregate moves under the append (the worker's own
/// outbox sending what it held).
const ATTEMPTS: usize = 3;

/// Registers this worker again whenever it was removed, until `stop` (the worker drains).
pub async fn watch(
    log: EventLog,
    outbox: Arc<Outbox>,
    registered: WorkerRegistered,
    context_length: u32,
    removed: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut connected = log.is_connected();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let check = tokio::select! {
            _ = stop.cancelled() => return,
            _ = removed.notified() => true,
            _ = tick.tick() => {
                let now = log.is_connected();
                let back = now && !connected;
                connected = now;
                back
            }
        };
        if check {
            register_again(&log, &outbox, &registered, context_length).await;
        }
    }
}

async fn register_again(log: &EventLog, outbox: &Outbox, registered: &WorkerRegistered, context_length: u32) {
    let meta = Meta { correlation: Some(registered.worker.clone()), traceparent: None };
    for _ in 0..ATTEMPTS {
        match crate::registration::register(log, registered, &meta).await {
            Ok(Outcome::AlreadyRegistered) => return,
            Ok(Outcome::Moved) => continue,
            Ok(Outcome::Registered) => {
                tracing::warn!("the log removed this worker while it could not be heard; registered again");
                let ready = Event::WorkerStateChanged(WorkerStateChanged {
                    worker: registered.worker.clone(),
                    node: registered.node.clone(),
                    state: WorkerState::Ready,
                    context_length,
                });
                if let Err(e) = outbox.record(ready, &meta) {
                    tracing::error!(error = %e, "could not record being ready again");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not register again; will try when heard of next");
                return;
            }
        }
    }
}
