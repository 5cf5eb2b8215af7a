//! The worker aggregate's rules. Its state is the registry's [`Worker`] (folded by
//! [`crate::Registry::apply`], `None` when the id has no live incarnation); [`decide`] is the one
//! place that says what a command may record about a worker: the reaper, the scheduler and the
//! CLI's drain all come here. Facts a holder reports are not decisions and are appended as they
//! are: a worker's own state and outcomes, a slot given back by whoever claimed it. A worker
//! process registering its own id decides that alone (`rbee-worker` depends on the bus only).

use rbee_bus::{Code, Event, SlotClaimed, WorkerRemoved, WorkerState, WorkerStateChanged};

use crate::Worker;

/// What someone asks of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerCommand {
    /// An operator: finish the requests in flight, take no new ones.
    Drain,
    /// The reaper: nothing heard for the heartbeat timeout.
    MarkStale,
    /// The reaper: a stale worker is heard again.
    Revive,
    /// The reaper: a stale worker is dropped from the cluster.
    Remove { reason: String },
    /// A queen: the lowest free slot, for a request.
    ClaimSlot { request: String },
}

fn state_changed(worker: &Worker, state: WorkerState) -> Event {
    Event::WorkerStateChanged(WorkerStateChanged {
        worker: worker.id.clone(),
        node: worker.node.clone(),
        state,
        context_length: 0,
    })
}

/// The events `command` records about `worker`, or why it is refused. An empty list: nothing to
/// record, the worker is already as asked.
pub fn decide(worker: Option<&Worker>, command: &WorkerCommand) -> Result<Vec<Event>, Code> {
    use WorkerState::*;
    let Some(w) = worker else {
        return match command {
            WorkerCommand::Remove { .. } => Ok(vec![]),
            _ => Err(Code::WorkerNotFound),
        };
    };
    match command {
        WorkerCommand::Drain => match w.state {
            Loading | Ready => Ok(vec![state_changed(w, Draining)]),
            Draining => Ok(vec![]),
            Stale | Stopped => Err(Code::InvalidState),
        },
        WorkerCommand::MarkStale => match w.state {
            Loading | Ready | Draining => Ok(vec![state_changed(w, Stale)]),
            Stale | Stopped => Ok(vec![]),
        },
        WorkerCommand::Revive => match w.state {
            Stale => Ok(vec![state_changed(w, Ready)]),
            _ => Ok(vec![]),
        },
        WorkerCommand::Remove { reason } => Ok(vec![Event::WorkerRemoved(WorkerRemoved {
            worker: w.id.clone(),
            node: w.node.clone(),
            reason: reason.clone(),
        })]),
        WorkerCommand::ClaimSlot { request } => match (w.state, w.free_slot()) {
            (Ready, Some(slot)) => Ok(vec![Event::SlotClaimed(SlotClaimed {
                worker: w.id.clone(),
                node: w.node.clone(),
                slot,
                request: request.clone(),
            })]),
            _ => Err(Code::WorkerAlreadyBusy),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use rbee_bus::*;

    /// Given these events, when `command`, then the result.
    fn given(events: Vec<Event>) -> Option<Worker> {
        let mut registry = Registry::default();
        super::super::recorded(events).iter().for_each(|rec| registry.apply(rec));
        registry.workers.get("w1").cloned()
    }

    fn registered(slots: u32) -> Event {
        Event::WorkerRegistered(WorkerRegistered {
            worker: "w1".into(),
            node: "n1".into(),
            model: "m".into(),
            slots,
            pid: 7,
            backend: "cpu".into(),
        })
    }

    fn became(state: WorkerState) -> Event {
        Event::WorkerStateChanged(WorkerStateChanged {
            worker: "w1".into(),
            node: "n1".into(),
            state,
            context_length: 0,
        })
    }

    fn claimed(slot: u32, request: &str) -> Event {
        Event::SlotClaimed(SlotClaimed { worker: "w1".into(), node: "n1".into(), slot, request: request.into() })
    }

    fn ready(slots: u32) -> Vec<Event> {
        vec![registered(slots), became(WorkerState::Ready)]
    }

    #[test]
    fn only_a_loading_or_ready_worker_starts_to_drain() {
        assert_eq!(decide(given(ready(1)).as_ref(), &WorkerCommand::Drain), Ok(vec![became(WorkerState::Draining)]));
        let loading = given(vec![registered(1)]);
        assert_eq!(decide(loading.as_ref(), &WorkerCommand::Drain), Ok(vec![became(WorkerState::Draining)]));
        let draining = given([ready(1), vec![became(WorkerState::Draining)]].concat());
        assert_eq!(decide(draining.as_ref(), &WorkerCommand::Drain), Ok(vec![]));
        let stale = given([ready(1), vec![became(WorkerState::Stale)]].concat());
        assert_eq!(decide(stale.as_ref(), &WorkerCommand::Drain), Err(Code::InvalidState));
        assert_eq!(decide(None, &WorkerCommand::Drain), Err(Code::WorkerNotFound));
    }

    #[test]
    fn an_ended_incarnation_is_not_found() {
        let exited = Event::WorkerExited(WorkerExited {
            worker: "w1".into(),
            node: "n1".into(),
            exit_code: Some(0),
            signal: None,
        });
        for end in [exited, became(WorkerState::Stopped)] {
            let gone = given([ready(1), vec![end]].concat());
            assert_eq!(decide(gone.as_ref(), &WorkerCommand::MarkStale), Err(Code::WorkerNotFound));
        }
    }

    #[test]
    fn liveness_moves_a_worker_between_ready_and_stale_and_removes_it() {
        let live = given(ready(1));
        assert_eq!(decide(live.as_ref(), &WorkerCommand::MarkStale), Ok(vec![became(WorkerState::Stale)]));
        assert_eq!(decide(live.as_ref(), &WorkerCommand::Revive), Ok(vec![]));
        let stale = given([ready(1), vec![became(WorkerState::Stale)]].concat());
        assert_eq!(decide(stale.as_ref(), &WorkerCommand::MarkStale), Ok(vec![]));
        assert_eq!(decide(stale.as_ref(), &WorkerCommand::Revive), Ok(vec![became(WorkerState::Ready)]));
        let remove = WorkerCommand::Remove { reason: "no heartbeat".into() };
        let removed = Event::WorkerRemoved(WorkerRemoved {
            worker: "w1".into(),
            node: "n1".into(),
            reason: "no heartbeat".into(),
        });
        assert_eq!(decide(stale.as_ref(), &remove), Ok(vec![removed]));
        assert_eq!(decide(None, &remove), Ok(vec![]));
    }

    #[test]
    fn a_claim_takes_the_lowest_free_slot_of_a_ready_worker() {
        let claim = |r: &str| WorkerCommand::ClaimSlot { request: r.into() };
        assert_eq!(decide(given(ready(2)).as_ref(), &claim("r1")), Ok(vec![claimed(0, "r1")]));
        let one_busy = given([ready(2), vec![claimed(0, "r1")]].concat());
        assert_eq!(decide(one_busy.as_ref(), &claim("r2")), Ok(vec![claimed(1, "r2")]));
        let full = given([ready(1), vec![claimed(0, "r1")]].concat());
        assert_eq!(decide(full.as_ref(), &claim("r2")), Err(Code::WorkerAlreadyBusy));
        let draining = given([ready(2), vec![became(WorkerState::Draining)]].concat());
        assert_eq!(decide(draining.as_ref(), &claim("r1")), Err(Code::WorkerAlreadyBusy));
        assert_eq!(decide(None, &claim("r1")), Err(Code::WorkerNotFound));
    }
}
