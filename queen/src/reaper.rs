//! Liveness from heartbeats. A worker not heard from for the heartbeat timeout is marked stale (it
//! takes no new requests); a stale worker that is idle, or has been stale longer than the grace
//! period, is removed; a stale worker whose heartbeats come back is ready again. A queen that
//! could not hear (NATS lost, or the queen itself paused) judges no one until it has listened for
//! a whole timeout again.
//!
//! The policy here says which worker gets which command; the worker aggregate's rules
//! ([`rbee_projections::aggregate::worker`]) say what that records. Every queen may run this: each
//! command is an optimistic append at the worker's position, so when two queens act at once the
//! log takes one and the other finds the worker already as asked.

use std::time::Duration;

use rbee_bus::{EventLog, Meta, WorkerState};
use rbee_projections::aggregate::on_worker;
use rbee_projections::aggregate::worker::WorkerCommand;
use rbee_projections::{ClusterView, LiveView, Worker};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub heartbeat_timeout: Duration,
    pub stale_grace: Duration,
}

fn silent_ms(w: &Worker, now_ms: u64) -> u64 {
    now_ms.saturating_sub(w.last_heartbeat_ms.unwrap_or(w.state_since_ms))
}

/// Which worker gets which command, given the view at `now_ms`. Pure: the reaper's whole policy.
pub fn liveness_commands(view: &ClusterView, now_ms: u64, l: &Liveness) -> Vec<(String, WorkerCommand)> {
    let timeout = l.heartbeat_timeout.as_millis() as u64;
    let grace = l.stale_grace.as_millis() as u64;
    view.registry
        .workers
        .values()
        .filter_map(|w| {
            let silent = silent_ms(w, now_ms) > timeout;
            let command = match w.state {
                WorkerState::Loading | WorkerState::Ready | WorkerState::Draining if silent => WorkerCommand::MarkStale,
                WorkerState::Stale if !silent => WorkerCommand::Revive,
                WorkerState::Stale if w.busy.is_empty() => WorkerCommand::Remove { reason: "no heartbeat".into() },
                WorkerState::Stale if now_ms.saturating_sub(w.state_since_ms) > grace => WorkerCommand::Remove {
                    reason: format!("no heartbeat; {} request(s) abandoned after the grace period", w.busy.len()),
                },
                _ => return None,
            };
            Some((w.id.clone(), command))
        })
        .collect()
}

/// Runs the reaper until `shutdown`.
pub async fn run(log: EventLog, view: LiveView, liveness: Liveness, shutdown: CancellationToken) {
    let every = Duration::from_millis(500);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = tokio::time::Instant::now();
    // Since when this queen has heard the cluster without a break: a worker's silence is judged
    // only once the queen itself has listened for a whole timeout (just started, NATS lost, or
    // paused: the heartbeats it missed were not the workers' fault).
    let mut listening_since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let paused = last_tick.elapsed() > every * 4;
        last_tick = tokio::time::Instant::now();
        if paused || !log.is_connected() {
            listening_since = tokio::time::Instant::now();
            continue;
        }
        if listening_since.elapsed() < liveness.heartbeat_timeout {
            continue;
        }
        let now = rbee_bus::envelope::now_ms();
        for (worker, command) in view.read(|v| liveness_commands(v, now, &liveness)) {
            if matches!(command, WorkerCommand::MarkStale | WorkerCommand::Remove { .. })
                && heard_by_the_stream(&log, &view, &worker, now, &liveness).await
            {
                continue;
            }
            match on_worker(&log, &view, &worker, &command, &Meta::default()).await {
                Ok(events) if !events.is_empty() => tracing::warn!(%worker, ?command, "liveness"),
                // Already as asked (another queen acted first), or gone: nothing to record.
                Ok(_) => {}
                Err(e) => tracing::warn!(%worker, ?command, error = %e, "liveness command not recorded"),
            }
        }
    }
}

/// Whether `RBEE_HB` itself holds a heartbeat of `worker` younger than the timeout, or cannot be
/// asked. Then the silence is this queen's view's (its follower lost a NATS server and has not
/// resumed yet), not the worker's: it is not judged.
async fn heard_by_the_stream(log: &EventLog, view: &LiveView, worker: &str, now_ms: u64, l: &Liveness) -> bool {
    let Some(node) = view.read(|v| v.registry.workers.get(worker).map(|w| w.node.clone())) else { return false };
    match log.last_heartbeat_ms(&node, worker).await {
        Ok(Some(at)) if now_ms.saturating_sub(at) <= l.heartbeat_timeout.as_millis() as u64 => {
            tracing::warn!(%worker, behind_ms = now_ms.saturating_sub(at), "the view missed heartbeats the stream holds; not judging the worker");
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(%worker, error = %e, "cannot read the worker's last heartbeat; not judging it now");
            true
        }
    }
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
                node: "n".into(),
                state: WorkerState::Ready,
                context_length: 4096,
            }),
            0,
        );
        if busy {
            fold(
                Event::SlotClaimed(SlotClaimed {
                    worker: "w1".into(),
                    node: "n".into(),
                    slot: 0,
                    request: "r1".into(),
                }),
                0,
            );
        }
        if state != WorkerState::Ready {
            fold(
                Event::WorkerStateChanged(WorkerStateChanged {
                    worker: "w1".into(),
                    node: "n".into(),
                    state,
                    context_length: 0,
                }),
                state_since_ms,
            );
        }
        fold(
            Event::WorkerHeartbeat(WorkerHeartbeat { worker: "w1".into(), node: "n".into(), busy_slots: 0 }),
            heartbeat_ms,
        );
        v
    }

    fn decisions(v: &ClusterView, now: u64) -> Vec<WorkerCommand> {
        liveness_commands(v, now, &L).into_iter().map(|(_, c)| c).collect()
    }

    #[test]
    fn a_ready_worker_with_recent_heartbeats_is_left_alone() {
        assert!(decisions(&view_with(WorkerState::Ready, 100_000, 0, false), 105_000).is_empty());
    }

    #[test]
    fn a_silent_worker_is_marked_stale_busy_or_not() {
        assert_eq!(decisions(&view_with(WorkerState::Ready, 100_000, 0, false), 110_001), [WorkerCommand::MarkStale]);
        assert_eq!(decisions(&view_with(WorkerState::Ready, 100_000, 0, true), 110_001), [WorkerCommand::MarkStale]);
    }

    #[test]
    fn a_stale_idle_worker_is_removed_at_once() {
        assert!(matches!(
            decisions(&view_with(WorkerState::Stale, 100_000, 111_000, false), 112_000)[..],
            [WorkerCommand::Remove { .. }]
        ));
    }

    #[test]
    fn a_stale_busy_worker_keeps_its_request_until_the_grace_period_ends() {
        let v = view_with(WorkerState::Stale, 100_000, 111_000, true);
        assert!(decisions(&v, 140_000).is_empty(), "within grace: the current request may finish");
        assert!(matches!(decisions(&v, 141_001)[..], [WorkerCommand::Remove { .. }]));
    }

    #[test]
    fn a_stale_worker_heard_from_again_is_revived() {
        assert_eq!(
            decisions(&view_with(WorkerState::Stale, 120_000, 111_000, false), 121_000),
            [WorkerCommand::Revive]
        );
    }
}
