//! The worker registry: nodes, workers, their state, slots and liveness, folded from events.

use std::collections::BTreeMap;

use rbee_bus::{Event, Position, Recorded, WorkerState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub ram_total_bytes: u64,
    pub ram_available_bytes: u64,
    pub cores: u32,
    pub disk_free_bytes: u64,
    pub registered_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub node: String,
    pub model: String,
    pub backend: String,
    pub pid: u32,
    pub state: WorkerState,
    /// When the worker entered its current state (ms since the epoch, from the event).
    pub state_since_ms: u64,
    pub context_length: u32,
    pub slots: u32,
    /// Busy slots: slot number -> request id.
    pub busy: BTreeMap<u32, String>,
    /// Where the worker aggregate stands in the log: the base for the next optimistic append.
    pub position: Position,
    pub last_heartbeat_ms: Option<u64>,
    /// When a request last started or ended on it, or it became ready: idleness is measured from here.
    pub last_active_ms: u64,
}

impl Worker {
    /// The lowest free slot, if any.
    pub fn free_slot(&self) -> Option<u32> {
        (0..self.slots).find(|s| !self.busy.contains_key(s))
    }

    /// Ready and with a free slot.
    pub fn can_take_request(&self) -> bool {
        self.state == WorkerState::Ready && self.free_slot().is_some()
    }
}

/// Nodes and workers, as the log says they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub nodes: BTreeMap<String, Node>,
    pub workers: BTreeMap<String, Worker>,
    /// Last heartbeat per worker id. Kept apart from `workers` because heartbeats come from another
    /// stream and may be folded before the registration they follow.
    pub heartbeats: BTreeMap<String, u64>,
}

impl Registry {
    /// Folds one event in. Events for unknown workers are ignored (they were removed, or never
    /// registered): folding never fails, so one odd event cannot stop a projection.
    pub fn apply(&mut self, rec: &Recorded) {
        let env = &rec.envelope;
        let position = Position { seq: rec.stream_seq, version: env.version };
        match &env.event {
            Event::NodeRegistered(e) => {
                self.nodes.insert(
                    e.node.clone(),
                    Node {
                        name: e.node.clone(),
                        ram_total_bytes: e.ram_total_bytes,
                        ram_available_bytes: e.ram_available_bytes,
                        cores: e.cores,
                        disk_free_bytes: e.disk_free_bytes,
                        registered_at_ms: env.at_ms,
                    },
                );
            }
            Event::WorkerRegistered(e) => {
                self.workers.insert(
                    e.worker.clone(),
                    Worker {
                        id: e.worker.clone(),
                        node: e.node.clone(),
                        model: e.model.clone(),
                        backend: e.backend.clone(),
                        pid: e.pid,
                        state: WorkerState::Loading,
                        state_since_ms: env.at_ms,
                        context_length: 0,
                        slots: e.slots,
                        busy: BTreeMap::new(),
                        position,
                        last_heartbeat_ms: Some(self.heartbeats.get(&e.worker).copied().unwrap_or(0).max(env.at_ms)),
                        last_active_ms: env.at_ms,
                    },
                );
            }
            Event::WorkerStateChanged(e) => {
                if e.state == WorkerState::Stopped {
                    self.workers.remove(&e.worker);
                } else if let Some(w) = self.workers.get_mut(&e.worker) {
                    if w.state != e.state {
                        w.state_since_ms = env.at_ms;
                        w.last_active_ms = env.at_ms;
                    }
                    w.state = e.state;
                    if e.context_length > 0 {
                        w.context_length = e.context_length;
                    }
                }
            }
            Event::WorkerExited(e) => {
                self.workers.remove(&e.worker);
                self.heartbeats.remove(&e.worker);
            }
            Event::WorkerRemoved(e) => {
                self.workers.remove(&e.worker);
                self.heartbeats.remove(&e.worker);
            }
            Event::WorkerHeartbeat(e) => {
                let last = self.heartbeats.entry(e.worker.clone()).or_insert(0);
                *last = (*last).max(env.at_ms);
                if let Some(w) = self.workers.get_mut(&e.worker) {
                    w.last_heartbeat_ms = Some(*last);
                }
            }
            Event::SlotClaimed(e) => {
                if let Some(w) = self.workers.get_mut(&e.worker) {
                    w.busy.insert(e.slot, e.request.clone());
                    w.last_active_ms = env.at_ms;
                }
            }
            Event::SlotReleased(e) => {
                if let Some(w) = self.workers.get_mut(&e.worker) {
                    if w.busy.get(&e.slot) == Some(&e.request) {
                        w.busy.remove(&e.slot);
                    }
                    w.last_active_ms = env.at_ms;
                }
            }
            Event::WorkerStartRequested(_)
            | Event::RequestAccepted(_)
            | Event::RequestFinished(_)
            | Event::RequestCancelled(_)
            | Event::ModelRegistered(_)
            | Event::WorkerStartFailed(_)
            | Event::ModelRemoved(_)
            | Event::ModelPullRequested(_)
            | Event::ModelRemoveRequested(_)
            | Event::DownloadStarted(_)
            | Event::DownloadProgressed(_)
            | Event::DownloadRetried(_)
            | Event::DownloadFinished(_)
            | Event::DownloadFailed(_)
            | Event::WorkerSignalled(_)
            | Event::ModelRemoveRefused(_)
            | Event::KeyCreated(_)
            | Event::KeyRevoked(_) => {}
        }
        // Every event on a worker's subject moves its position, whichever of them the registry
        // folds: a command appends after the last one, and a position that missed one (the hive's
        // `worker.signalled`) would make every later command on the worker conflict for ever.
        let (kind, id) = env.event.aggregate();
        if kind == rbee_bus::AggregateKind::Worker
            && !matches!(env.event, Event::WorkerHeartbeat(_))
            && let Some(w) = self.workers.get_mut(id)
        {
            w.position = position;
        }
    }

    /// Workers serving `model` in the given state, in id order.
    pub fn workers_for<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a Worker> + 'a {
        self.workers.values().filter(move |w| w.model == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::*;

    /// A tiny given/when/then harness over the pure fold.
    struct Given {
        registry: Registry,
        seq: u64,
    }

    fn given(events: impl IntoIterator<Item = Event>) -> Given {
        let mut g = Given { registry: Registry::default(), seq: 0 };
        for e in events {
            g.when(e);
        }
        g
    }

    impl Given {
        fn when(&mut self, event: Event) -> &mut Self {
            self.seq += 1;
            let rec = Recorded {
                stream_seq: self.seq,
                subject: subjects::for_event(&event),
                envelope: Envelope::new(event, self.seq, &Meta::default()),
            };
            self.registry.apply(&rec);
            self
        }
        fn worker(&self, id: &str) -> &Worker {
            self.registry.workers.get(id).expect("worker registered")
        }
    }

    fn registered(worker: &str, slots: u32) -> Event {
        Event::WorkerRegistered(WorkerRegistered {
            worker: worker.into(),
            node: "n1".into(),
            model: "m".into(),
            slots,
            pid: 1,
            backend: "cpu".into(),
        })
    }

    fn state(worker: &str, state: WorkerState) -> Event {
        Event::WorkerStateChanged(WorkerStateChanged {
            worker: worker.into(),
            node: "n1".into(),
            state,
            context_length: 8192,
        })
    }

    fn claim(worker: &str, slot: u32, request: &str) -> Event {
        Event::SlotClaimed(SlotClaimed { worker: worker.into(), node: "n1".into(), slot, request: request.into() })
    }

    fn release(worker: &str, slot: u32, request: &str) -> Event {
        Event::SlotReleased(SlotReleased { worker: worker.into(), node: "n1".into(), slot, request: request.into() })
    }

    #[test]
    fn a_registered_worker_is_loading_until_it_says_ready() {
        let mut g = given([registered("w1", 1)]);
        assert_eq!(g.worker("w1").state, WorkerState::Loading);
        assert!(!g.worker("w1").can_take_request());
        g.when(state("w1", WorkerState::Ready));
        assert!(g.worker("w1").can_take_request());
        assert_eq!(g.worker("w1").context_length, 8192);
    }

    #[test]
    fn every_event_on_a_workers_subject_moves_its_position() {
        let signalled = Event::WorkerSignalled(WorkerSignalled {
            worker: "w1".into(),
            node: "n1".into(),
            pid: 1,
            signal: 15,
            reason: "shutdown".into(),
        });
        let g = given([registered("w1", 1), state("w1", WorkerState::Ready), signalled]);
        assert_eq!(g.worker("w1").position, Position { seq: 3, version: 3 });
    }

    #[test]
    fn a_claimed_slot_is_busy_until_released() {
        let mut g = given([registered("w1", 2), state("w1", WorkerState::Ready), claim("w1", 0, "r1")]);
        assert_eq!(g.worker("w1").free_slot(), Some(1));
        g.when(claim("w1", 1, "r2"));
        assert!(!g.worker("w1").can_take_request());
        g.when(release("w1", 0, "r1"));
        assert_eq!(g.worker("w1").free_slot(), Some(0));
        assert_eq!(g.worker("w1").position, Position { seq: 5, version: 5 });
    }

    #[test]
    fn a_release_for_another_request_does_not_free_the_slot() {
        let g =
            given([registered("w1", 1), state("w1", WorkerState::Ready), claim("w1", 0, "r2"), release("w1", 0, "r1")]);
        assert_eq!(g.worker("w1").busy.get(&0).map(String::as_str), Some("r2"));
    }

    #[test]
    fn an_exited_worker_leaves_the_registry() {
        let g = given([
            registered("w1", 1),
            Event::WorkerExited(WorkerExited {
                worker: "w1".into(),
                node: "n1".into(),
                exit_code: Some(1),
                signal: None,
            }),
        ]);
        assert!(g.registry.workers.is_empty());
    }

    #[test]
    fn events_for_unknown_workers_change_nothing() {
        let g = given([claim("ghost", 0, "r1"), state("ghost", WorkerState::Ready)]);
        assert_eq!(g.registry, Registry::default());
    }

    /// Heartbeats travel on their own stream and never race state changes in the log.
    #[test]
    fn a_heartbeat_during_a_state_transition_keeps_the_new_state_and_refreshes_liveness() {
        let mut g = given([registered("w1", 1), state("w1", WorkerState::Ready)]);
        g.when(state("w1", WorkerState::Draining));
        let beat = Event::WorkerHeartbeat(WorkerHeartbeat { worker: "w1".into(), node: "n1".into(), busy_slots: 0 });
        let mut env = Envelope::new(beat.clone(), 0, &Meta::default());
        env.at_ms = u64::MAX / 4;
        g.registry.apply(&Recorded { stream_seq: 1, subject: subjects::for_event(&beat), envelope: env });
        assert_eq!(g.worker("w1").state, WorkerState::Draining);
        assert_eq!(g.worker("w1").last_heartbeat_ms, Some(u64::MAX / 4));
    }

    #[test]
    fn a_heartbeat_folded_before_the_registration_still_counts() {
        let mut g = given([]);
        let beat = Event::WorkerHeartbeat(WorkerHeartbeat { worker: "w1".into(), node: "n1".into(), busy_slots: 0 });
        let mut env = Envelope::new(beat.clone(), 0, &Meta::default());
        env.at_ms = u64::MAX / 2;
        g.registry.apply(&Recorded { stream_seq: 1, subject: subjects::for_event(&beat), envelope: env });
        g.when(registered("w1", 1));
        assert_eq!(g.worker("w1").last_heartbeat_ms, Some(u64::MAX / 2));
    }
}
