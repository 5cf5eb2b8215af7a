//! Liveness from heartbeats. A worker not heard from for the heartbeat timeout is marked stale (it
//! takes no new requests); a stale worker that is idle, or has been stale longer than the grace
//! period, is removed; a stale worker whose heartbeats come back is ready again.
//!
//! Every queen may run this: each decision is an optimistic append at the worker's position, so
//! when two queens decide at once the log takes one and refuses the other.

use std::time::Duration;

use rbee_bus::{
    AppendError, Event, EventLog, Expected, Meta, Position, WorkerRemoved, WorkerState, WorkerStateChanged,
};
use rbee_projections::{ClusterView, LiveView, Worker};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub heartbeat_timeout: Duration,
    pub stale_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    MarkStale,
    Revive,
    Remove(String),
}

fn silent_ms(w: &Worker, now_ms: u64) -> u64 {
    now_ms.saturating_sub(w.last_heartbeat_ms.unwrap_or(w.state_since_ms))
}

/// What to do about each worker, given the view at `now_ms`. Pure: the reaper's whole policy.
pub fn decide(view: &ClusterView, now_ms: u64, l: &Liveness) -> Vec<(String, Position, Decision)> {
    let timeout = l.heartbeat_timeout.as_millis() as u64;
    let grace = l.stale_grace.as_millis() as u64;
    view.registry
        .workers
        .values()
        .filter_map(|w| {
            let silent = silent_ms(w, now_ms) > timeout;
            let decision = match w.state {
                WorkerState::Loading | WorkerState::Ready | WorkerState::Draining if silent => Decision::MarkStale,
                WorkerState::Stale if !silent => Decision::Revive,
                WorkerState::Stale if w.busy.is_empty() => Decision::Remove("no heartbeat".into()),
                WorkerState::Stale if now_ms.saturating_sub(w.state_since_ms) > grace => Decision::Remove(format!(
                    "no heartbeat; {} request(s) abandoned after the grace period",
                    w.busy.len()
                )),
                _ => return None,
            };
            Some((w.id.clone(), w.position, decision))
        })
        .collect()
}

/// Runs the reaper until `shutdown`.
pub async fn run(log: EventLog, view: LiveView, liveness: Liveness, shutdown: CancellationToken) {
    // A queen that just started has not listened for a whole timeout yet: it judges no one before.
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = tokio::time::sleep(liveness.heartbeat_timeout) => {}
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = rbee_bus::envelope::now_ms();
        for (worker, position, decision) in view.read(|v| decide(v, now, &liveness)) {
            let event = match &decision {
                Decision::MarkStale => state(&worker, WorkerState::Stale),
                Decision::Revive => state(&worker, WorkerState::Ready),
                Decision::Remove(reason) => {
                    Event::WorkerRemoved(WorkerRemoved { worker: worker.clone(), reason: reason.clone() })
                }
            };
            match log.append(event, Expected::At(position), &Meta::default()).await {
                Ok(_) => tracing::warn!(%worker, ?decision, "liveness"),
                // The worker's aggregate moved on (another queen decided, or the worker spoke): look again next tick.
                Err(AppendError::Conflict { .. }) => {}
                Err(e) => tracing::error!(%worker, error = %e, "liveness decision not recorded"),
            }
        }
    }
}

fn state(worker: &str, state: WorkerState) -> Event {
    Event::WorkerStateChanged(WorkerStateChanged { worker: worker.into(), state, context_length: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::*;

    const L: Liveness = Liveness { heartbeat_timeout: Duration::from_secs(10), stale_grace: Duration::from_secs(30) };

    fn view_with(state: WorkerState, heartbeat_ms: u64, state_since_ms: u64, busy: bool) -> ClusterView {
        let mut v = ClusterView::default();
        let mut seq = 0;
        let mut fold = |event: Event, at_ms: u64| {
            seq += 1;
            let mut envelope = Envelope::new(event.clone(), seq, &Meta::default());
            envelope.at_ms = at_ms;
            v.apply(&Recorded { stream_seq: seq, subject: subjects::for_event(&event), envelope });
        };
        let reg = WorkerRegistered {
            worker: "w1".into(),
            node: "n".into(),
            model: "m".into(),
            slots: 1,
            pid: 1,
            backend: "cpu".into(),
        };
        fold(Event::WorkerRegistered(reg), 0);
        fold(
            Event::WorkerStateChanged(WorkerStateChanged {
                worker: "w1".into(),
                state: WorkerState::Ready,
                context_length: 4096,
            }),
            0,
        );
        if busy {
            fold(Event::SlotClaimed(SlotClaimed { worker: "w1".into(), slot: 0, request: "r1".into() }), 0);
        }
        if state != WorkerState::Ready {
            fold(
                Event::WorkerStateChanged(WorkerStateChanged { worker: "w1".into(), state, context_length: 0 }),
                state_since_ms,
            );
        }
        fold(
            Event::WorkerHeartbeat(WorkerHeartbeat { worker: "w1".into(), node: "n".into(), busy_slots: 0 }),
            heartbeat_ms,
        );
        v
    }

    fn decisions(v: &ClusterView, now: u64) -> Vec<Decision> {
        decide(v, now, &L).into_iter().map(|(_, _, d)| d).collect()
    }

    #[test]
    fn a_ready_worker_with_recent_heartbeats_is_left_alone() {
        assert!(decisions(&view_with(WorkerState::Ready, 100_000, 0, false), 105_000).is_empty());
    }

    #[test]
    fn a_silent_worker_is_marked_stale_busy_or_not() {
        assert_eq!(decisions(&view_with(WorkerState::Ready, 100_000, 0, false), 110_001), [Decision::MarkStale]);
        assert_eq!(decisions(&view_with(WorkerState::Ready, 100_000, 0, true), 110_001), [Decision::MarkStale]);
    }

    #[test]
    fn a_stale_idle_worker_is_removed_at_once() {
        assert!(matches!(
            decisions(&view_with(WorkerState::Stale, 100_000, 111_000, false), 112_000)[..],
            [Decision::Remove(_)]
        ));
    }

    #[test]
    fn a_stale_busy_worker_keeps_its_request_until_the_grace_period_ends() {
        let v = view_with(WorkerState::Stale, 100_000, 111_000, true);
        assert!(decisions(&v, 140_000).is_empty(), "within grace: the current request may finish");
        assert!(matches!(decisions(&v, 141_001)[..], [Decision::Remove(_)]));
    }

    #[test]
    fn a_stale_worker_heard_from_again_is_revived() {
        assert_eq!(decisions(&view_with(WorkerState::Stale, 120_000, 111_000, false), 121_000), [Decision::Revive]);
    }
}
