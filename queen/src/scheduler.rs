//! Choosing a worker and claiming one of its slots. The worker aggregate's rules decide the claim
//! ([`rbee_projections::aggregate::worker`]) and it is an optimistic append on the worker: if
//! another queen (or the worker itself) appended first, the server refuses ours, we wait for our
//! view to catch up, and choose again. No lock, no double grant.

use std::time::Duration;

use rbee_bus::{Code, Event, EventLog, Expected, Meta, SlotReleased, WorkerState};
use rbee_projections::aggregate::worker::WorkerCommand;
use rbee_projections::aggregate::{CommandError, on_worker};
use rbee_projections::{ClusterView, LiveView, Worker};

use crate::error::ApiError;

/// A slot this queen holds for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub worker: String,
    pub node: String,
    pub slot: u32,
    pub context_length: u32,
}

const MAX_CONFLICT_RETRIES: usize = 8;

/// The least-loaded ready worker for `model` with a free slot.
pub fn choose<'a>(view: &'a ClusterView, model: &'a str) -> Option<&'a Worker> {
    view.registry.workers_for(model).filter(|w| w.can_take_request()).min_by(|a, b| {
        let load = |w: &Worker| w.busy.len() as f64 / w.slots.max(1) as f64;
        load(a).total_cmp(&load(b)).then_with(|| a.id.cmp(&b.id))
    })
}

/// Whether waiting can help: some worker for `model` is ready (but busy) or still loading.
fn may_free_up(view: &ClusterView, model: &str) -> bool {
    view.registry.workers_for(model).any(|w| matches!(w.state, WorkerState::Ready | WorkerState::Loading))
}

/// Why no worker can be chosen right now, as the error the client sees.
fn unavailable(view: &ClusterView, model: &str) -> ApiError {
    let mut workers = view.registry.workers_for(model).peekable();
    if workers.peek().is_none() {
        if view.catalog.knows(model) {
            return ApiError::new(Code::NoReadyWorker, format!("no worker serves {model} yet; start one (rbee up)"))
                .retry_after(5);
        }
        return ApiError::model_not_found(model);
    }
    let states: Vec<WorkerState> = workers.map(|w| w.state).collect();
    if !states.iter().any(|s| matches!(s, WorkerState::Ready | WorkerState::Loading)) {
        return ApiError::new(
            Code::NoReadyWorker,
            format!("no live worker serves {model}: they are stale or draining"),
        )
        .retry_after(5);
    }
    if states.iter().all(|s| *s == WorkerState::Loading) {
        return ApiError::new(Code::NoReadyWorker, format!("the workers for {model} are still loading")).retry_after(2);
    }
    ApiError::new(Code::AllSlotsBusy, format!("every slot serving {model} is busy; retry shortly")).retry_after(1)
}

/// Claims a slot for `request`, waiting up to `wait` for one to free up.
pub async fn claim_slot(
    view: &LiveView,
    log: &EventLog,
    model: &str,
    request: &str,
    max_tokens: Option<u32>,
    wait: Duration,
    meta: &Meta,
) -> Result<Claim, ApiError> {
    if !view.read(|v| v.registry.workers_for(model).next().is_some() || v.catalog.knows(model)) {
        return Err(ApiError::model_not_found(model));
    }
    for _ in 0..MAX_CONFLICT_RETRIES {
        // Wait for a free slot only while one may come: a ready worker is busy, or one is loading.
        let found = view
            .wait_until(wait, |v| match choose(v, model) {
                Some(w) => Some(Ok((w.id.clone(), w.context_length))),
                None if !may_free_up(v, model) => Some(Err(unavailable(v, model))),
                None => None,
            })
            .await;
        let (worker, context_length) = match found {
            Some(Ok(found)) => found,
            Some(Err(e)) => return Err(e),
            None => return Err(view.read(|v| unavailable(v, model))),
        };
        if let Some(m) = max_tokens.filter(|m| context_length > 0 && *m > context_length) {
            return Err(ApiError {
                param: Some("max_tokens"),
                ..ApiError::new(
                    Code::ContextLengthExceeded,
                    format!("max_tokens {m} exceeds the context window of {model}: {context_length} tokens"),
                )
            });
        }
        let command = WorkerCommand::ClaimSlot { request: request.into() };
        match on_worker(log, view, &worker, &command, meta).await {
            Ok(events) => {
                if let Some(Event::SlotClaimed(claimed)) = events.first() {
                    return Ok(Claim { worker, node: claimed.node.clone(), slot: claimed.slot, context_length });
                }
            }
            // The worker filled up, stopped or kept changing meanwhile: choose again.
            Err(CommandError::Rejected(_) | CommandError::Contended) => {}
            Err(CommandError::Unavailable(e)) => return Err(ApiError::log_unavailable(e)),
        }
    }
    Err(ApiError::new(Code::AllSlotsBusy, "too much contention for a slot; retry shortly").retry_after(1))
}

/// Gives a claimed slot back (the worker never started on it).
pub async fn release_slot(log: &EventLog, claim: &Claim, request: &str, meta: &Meta) {
    let event = Event::SlotReleased(SlotReleased {
        worker: claim.worker.clone(),
        node: claim.node.clone(),
        slot: claim.slot,
        request: request.into(),
    });
    if let Err(e) = log.append(event, Expected::Any, meta).await {
        tracing::error!(error = %e, worker = %claim.worker, "slot release not recorded");
    }
}
