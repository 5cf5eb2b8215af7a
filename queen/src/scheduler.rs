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

/// Claims tried after a conflict even when the queue wait is over (a request with no wait left).
const MIN_CONFLICT_RETRIES: usize = 8;
/// The longest random pause before choosing again after losing a claim.
const CONFLICT_PAUSE_MS: u128 = 20;

/// Where a request goes: among the ready workers of `model` with a free slot, the least loaded
/// (busy slots over slots); among equals, the one on the least loaded machine (busy slots over
/// slots of every worker on its node, whatever their model), so load spreads across hives; then
/// the one idle longest; then the smaller id, so the choice is deterministic. Workers in `avoid`
/// (they did not answer this request) are not chosen.
pub fn choose<'a>(view: &'a ClusterView, model: &'a str, avoid: &[String]) -> Option<&'a Worker> {
    let load = |busy: usize, slots: u32| busy as f64 / slots.max(1) as f64;
    let node_load = |node: &str| {
        let (busy, slots) = view
            .registry
            .workers
            .values()
            .filter(|w| w.node == node)
            .fold((0, 0), |(busy, slots), w| (busy + w.busy.len(), slots + w.slots.max(1)));
        load(busy, slots)
    };
    let candidates = view.registry.workers_for(model).filter(|w| w.can_take_request() && !avoid.contains(&w.id));
    candidates.min_by(|a, b| {
        load(a.busy.len(), a.slots)
            .total_cmp(&load(b.busy.len(), b.slots))
            .then_with(|| node_load(&a.node).total_cmp(&node_load(&b.node)))
            .then_with(|| a.last_active_ms.cmp(&b.last_active_ms))
            .then_with(|| a.id.cmp(&b.id))
    })
}

/// Whether waiting can help: some worker for `model` not in `avoid` is ready (but busy) or still loading.
fn may_free_up(view: &ClusterView, model: &str, avoid: &[String]) -> bool {
    view.registry
        .workers_for(model)
        .any(|w| matches!(w.state, WorkerState::Ready | WorkerState::Loading) && !avoid.contains(&w.id))
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

/// Claims a slot for `request` on a worker not in `avoid`, waiting up to `wait` for one to free up.
#[allow(clippy::too_many_arguments)]
pub async fn claim_slot(
    view: &LiveView,
    log: &EventLog,
    model: &str,
    request: &str,
    max_tokens: Option<u32>,
    wait: Duration,
    avoid: &[String],
    meta: &Meta,
) -> Result<Claim, ApiError> {
    if !view.read(|v| v.registry.workers_for(model).next().is_some() || v.catalog.knows(model)) {
        return Err(ApiError::model_not_found(model));
    }
    // Losing a claim to another queen (or to the worker) is not a reason to give up: choose again
    // until the queue wait ends, after a random pause, so racing queens fall out of step.
    let deadline = tokio::time::Instant::now() + wait;
    let mut conflicts = 0;
    loop {
        // Wait for a free slot only while one may come: a ready worker is busy, or one is loading.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let found = view
            .wait_until(left, |v| match choose(v, model, avoid) {
                Some(w) => Some(Ok((w.id.clone(), w.context_length))),
                None if !may_free_up(v, model, avoid) => Some(Err(unavailable(v, model))),
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
        conflicts += 1;
        if tokio::time::Instant::now() >= deadline && conflicts >= MIN_CONFLICT_RETRIES {
            return Err(
                ApiError::new(Code::AllSlotsBusy, "too much contention for a slot; retry shortly").retry_after(1)
            );
        }
        let pause = uuid::Uuid::new_v4().as_u128() % CONFLICT_PAUSE_MS;
        tokio::time::sleep(Duration::from_millis(pause as u64)).await;
    }
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

#[cfg(test)]
mod placement {
    use super::*;
    use rbee_bus::Position;

    fn worker(id: &str, node: &str, model: &str, slots: u32, busy: u32, last_active_ms: u64) -> Worker {
        Worker {
            id: id.into(),
            node: node.into(),
            model: model.into(),
            backend: "cpu".into(),
            pid: 1,
            state: WorkerState::Ready,
            state_since_ms: 0,
            context_length: 4096,
            slots,
            busy: (0..busy).map(|s| (s, format!("r{s}"))).collect(),
            position: Position::default(),
            last_heartbeat_ms: Some(0),
            last_active_ms,
        }
    }

    fn view(workers: Vec<Worker>) -> ClusterView {
        let mut v = ClusterView::default();
        for w in workers {
            v.registry.workers.insert(w.id.clone(), w);
        }
        v
    }

    fn chosen(v: &ClusterView) -> Option<String> {
        choose(v, "m", &[]).map(|w| w.id.clone())
    }

    #[test]
    fn the_least_loaded_worker_wins() {
        let v = view(vec![worker("a", "n1", "m", 4, 2, 0), worker("b", "n2", "m", 4, 1, 9)]);
        assert_eq!(chosen(&v).as_deref(), Some("b"));
    }

    #[test]
    fn among_equals_the_least_loaded_machine_wins() {
        // a and b are idle; a's machine is busy with another model's worker.
        let v = view(vec![
            worker("a", "n1", "m", 2, 0, 0),
            worker("x", "n1", "other", 2, 2, 0),
            worker("b", "n2", "m", 2, 0, 9),
        ]);
        assert_eq!(chosen(&v).as_deref(), Some("b"));
    }

    #[test]
    fn then_the_worker_idle_longest_wins_and_full_workers_never_do() {
        let v = view(vec![worker("a", "n1", "m", 1, 0, 50), worker("b", "n2", "m", 1, 0, 10)]);
        assert_eq!(chosen(&v).as_deref(), Some("b"));
        let v = view(vec![worker("a", "n1", "m", 1, 1, 0)]);
        assert_eq!(chosen(&v), None);
    }

    #[test]
    fn a_worker_that_did_not_answer_is_not_chosen_again() {
        let v = view(vec![worker("a", "n1", "m", 2, 0, 0), worker("b", "n2", "m", 2, 1, 0)]);
        assert_eq!(choose(&v, "m", &["a".to_string()]).map(|w| w.id.as_str()), Some("b"));
        assert_eq!(choose(&v, "m", &["a".to_string(), "b".to_string()]).map(|w| w.id.as_str()), None);
    }
}
