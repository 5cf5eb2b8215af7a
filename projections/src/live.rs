//! Keeps a [`ClusterView`] current by tailing the log: `RBEE` from the start and `RBEE_HB` from the
//! last heartbeat of each worker. One task owns the folding; readers take short read locks (never
//! across an `.await`) and can wait for the view to reach a stream sequence.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use rbee_bus::read::{self, StartAt};
use rbee_bus::{EventLog, Recorded, subjects};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Catalog, Registry};

/// Everything the queen and the CLI need to know about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterView {
    pub registry: Registry,
    pub catalog: Catalog,
    pub downloads: crate::Downloads,
    pub keys: crate::Keys,
    /// The last `RBEE` sequence folded in.
    pub last_seq: u64,
    /// The last `RBEE_HB` sequence folded in.
    pub last_heartbeat_seq: u64,
    /// Id of the event at `last_seq`: ties a snapshot to the very log it was folded from.
    pub last_event_id: Option<uuid::Uuid>,
}

impl ClusterView {
    pub fn apply(&mut self, rec: &Recorded) {
        if let Some(why) = self.forged(rec) {
            // Not folded: the same decision on every reader, so every view still agrees.
            tracing::error!(
                code = %rbee_bus::Code::ForgedEvent,
                seq = rec.stream_seq,
                subject = %rec.subject,
                event = rec.envelope.event.kind(),
                "event skipped: {why}"
            );
        } else {
            self.registry.apply(rec);
            self.catalog.apply(rec);
            self.downloads.apply(rec);
            self.keys.apply(rec);
        }
        self.advance(rec);
    }

    /// Why an event cannot be believed, if it cannot. The subject proves who wrote it (nats-server
    /// checks that); the content must not claim more than the subject proves.
    fn forged(&self, rec: &Recorded) -> Option<&'static str> {
        if !rec.origin_matches() {
            return Some("its content names another aggregate than the subject it was written on");
        }
        let event = &rec.envelope.event;
        let (kind, id) = event.aggregate();
        let node = event.node_scope().filter(|n| !n.is_empty())?;
        let known = self.registry.workers.get(id).filter(|_| kind == rbee_bus::AggregateKind::Worker)?;
        (known.node != node).then_some("it names a worker of another node")
    }

    /// Passes over an event of `RBEE` that could not be decoded (it is reported where it was read):
    /// the view has read the log up to it, and no event id ties the view to it.
    pub fn pass_undecodable(&mut self, seq: u64) {
        if seq > self.last_seq {
            self.last_seq = seq;
            self.last_event_id = None;
        }
    }

    fn advance(&mut self, rec: &Recorded) {
        if matches!(rec.envelope.event, rbee_bus::Event::WorkerHeartbeat(_)) {
            self.last_heartbeat_seq = self.last_heartbeat_seq.max(rec.stream_seq);
        } else if rec.stream_seq > self.last_seq {
            self.last_seq = rec.stream_seq;
            self.last_event_id = Some(rec.envelope.id);
        }
    }
}

impl ClusterView {
    /// The view with everything that came from heartbeats removed: what the `RBEE` log alone decides.
    pub fn without_liveness(&self) -> ClusterView {
        let mut v = self.clone();
        v.registry.heartbeats.clear();
        v.last_heartbeat_seq = 0;
        for w in v.registry.workers.values_mut() {
            w.last_heartbeat_ms = None;
        }
        v
    }

    /// Canonical bytes (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("plain data serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<ClusterView, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// A live, shared view. Clone freely.
#[derive(Clone)]
pub struct LiveView {
    view: Arc<RwLock<ClusterView>>,
    seq: watch::Receiver<u64>,
    /// Bumped on every fold (events and heartbeats), for waiters on arbitrary conditions.
    changes: watch::Receiver<u64>,
}

impl LiveView {
    /// Starts following the log from the beginning; the returned view fills in as events arrive.
    pub async fn start(log: &EventLog, shutdown: CancellationToken) -> Result<Self, rbee_bus::log::ReadError> {
        Self::start_from(log, ClusterView::default(), shutdown).await
    }

    /// Starts from a view already folded up to `initial.last_seq` (a snapshot) and follows the rest.
    pub async fn start_from(
        log: &EventLog,
        initial: ClusterView,
        shutdown: CancellationToken,
    ) -> Result<Self, rbee_bus::log::ReadError> {
        let from = if initial.last_seq == 0 { StartAt::Start } else { StartAt::Seq(initial.last_seq + 1) };
        let (seq_tx, seq) = watch::channel(initial.last_seq);
        let view = Arc::new(RwLock::new(initial));
        let (changes_tx, changes) = watch::channel(0u64);
        let events = read::follow(log, subjects::EVENTS_STREAM, from).await?.map(|item| (true, item));
        let heartbeats =
            read::follow(log, subjects::HEARTBEATS_STREAM, StartAt::LastPerSubject).await?.map(|item| (false, item));
        let mut merged = futures::stream::select(events, heartbeats);
        let folded = view.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    item = merged.next() => item,
                };
                let fold = |change: &dyn Fn(&mut ClusterView)| {
                    let last = {
                        let mut v = folded.write().unwrap_or_else(|p| p.into_inner());
                        change(&mut v);
                        v.last_seq
                    };
                    seq_tx.send_replace(last);
                    changes_tx.send_modify(|n| *n += 1);
                };
                match item {
                    Some((_, Ok(delivered))) => fold(&|v| v.apply(&delivered.recorded)),
                    Some((of_events, Err(e @ rbee_bus::log::ReadError::Undecodable { seq, .. }))) => {
                        tracing::error!(code = %rbee_bus::Code::UndecodableEvent, seq, error = %e, "event skipped");
                        if of_events {
                            fold(&|v| v.pass_undecodable(seq));
                        }
                    }
                    Some((_, Err(e))) => tracing::error!(error = %e, "event log reader interrupted"),
                    None => {
                        tracing::error!("event log reader ended");
                        return;
                    }
                }
            }
        });
        Ok(LiveView { view, seq, changes })
    }

    /// Reads the view under a short lock.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterView) -> T) -> T {
        f(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until events up to `seq` are folded in. False on timeout.
    pub async fn wait_for_seq(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.seq.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= seq)).await.is_ok_and(|r| r.is_ok())
    }

    /// Waits until `pred` holds on the view. Returns the last value of `pred`'s witness, or None on timeout.
    pub async fn wait_until<T>(&self, timeout: Duration, mut pred: impl FnMut(&ClusterView) -> Option<T>) -> Option<T> {
        let mut rx = self.changes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(t) = self.read(&mut pred) {
                return Some(t);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// Waits until the view has folded everything both streams held when this was called.
    pub async fn catch_up(&self, log: &EventLog, timeout: Duration) -> Result<(), rbee_bus::log::ReadError> {
        let end = read::last_sequence(log, subjects::EVENTS_STREAM).await?;
        let heartbeats_end = read::last_sequence(log, subjects::HEARTBEATS_STREAM).await?;
        let caught_up = self
            .wait_until(timeout, |v| (v.last_seq >= end && v.last_heartbeat_seq >= heartbeats_end).then_some(()))
            .await;
        caught_up.ok_or_else(|| {
            rbee_bus::log::ReadError::Unavailable(format!("projection did not reach sequence {end} in {timeout:?}"))
        })
    }
}

impl ClusterView {
    /// A fingerprint of the state folded from `RBEE`: equal views have equal digests. Liveness
    /// (heartbeats) is left out: it is not history and is not backed up.
    pub fn digest(&self) -> String {
        let canonical = self.without_liveness().encode();
        let hash = <sha2::Sha256 as sha2::Digest>::digest(&canonical);
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use rbee_bus::{Event, WorkerRegistered};

    use super::*;

    fn registered(worker: &str, node: &str) -> Event {
        Event::WorkerRegistered(WorkerRegistered {
            worker: worker.into(),
            node: node.into(),
            model: "m".into(),
            slots: 1,
            pid: 1,
            backend: "cpu".into(),
        })
    }

    #[test]
    fn a_worker_claimed_by_another_node_is_not_believed() {
        let mut view = ClusterView::default();
        let log = crate::aggregate::recorded(vec![registered("w1", "n1"), registered("w1", "n2")]);
        assert_eq!(log[1].subject, "rbee.ev.worker.n2.w1", "the other node's hive may write there");
        log.iter().for_each(|rec| view.apply(rec));
        assert_eq!(view.registry.workers["w1"].node, "n1");
        assert_eq!(view.last_seq, 2, "the skipped event is still passed");
    }

    #[test]
    fn an_event_on_another_aggregates_subject_is_not_believed() {
        let mut view = ClusterView::default();
        let mut log = crate::aggregate::recorded(vec![registered("w1", "n1")]);
        log[0].subject = subjects::worker("n1", "w2");
        view.apply(&log[0]);
        assert!(view.registry.workers.is_empty());
    }

    #[test]
    fn events_of_schema_5_are_believed_on_their_old_subjects() {
        let mut view = ClusterView::default();
        let mut log = crate::aggregate::recorded(vec![registered("w1", "n1")]);
        log[0].subject = "rbee.ev.worker.w1".into();
        view.apply(&log[0]);
        assert_eq!(view.registry.workers["w1"].node, "n1");
    }
}
