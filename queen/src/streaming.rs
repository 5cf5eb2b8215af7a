//! The requests this queen streams to clients right now, by worker, told to each worker every
//! [`STILL_WANTED_EVERY`] ([`StillWanted`]). A worker stops a request no queen names any more, so
//! a queen that dies mid-stream leaves no generation running for nobody.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rbee_bus::EventLog;
use rbee_bus::frames::{self, STILL_WANTED_EVERY, StillWanted};
use rbee_bus::subjects;
use tokio_util::sync::CancellationToken;

/// Per worker, each streamed request and how many [`StreamingRequest`]s hold it (a stream moved
/// back to the same worker holds it twice for a moment: the old guard's drop must not unname it).
type ByWorker = BTreeMap<(String, String), BTreeMap<String, usize>>;

#[derive(Clone, Default)]
pub struct Streaming {
    by_worker: Arc<Mutex<ByWorker>>,
}

/// One request being streamed; dropping it stops naming the request to its worker.
pub struct StreamingRequest {
    streaming: Streaming,
    worker: (String, String),
    request: String,
}

impl Streaming {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByWorker> {
        self.by_worker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `request` runs on `worker` of `node` and this queen streams it.
    pub fn start(&self, node: &str, worker: &str, request: &str) -> StreamingRequest {
        let key = (node.to_string(), worker.to_string());
        *self.lock().entry(key.clone()).or_default().entry(request.to_string()).or_default() += 1;
        StreamingRequest { streaming: self.clone(), worker: key, request: request.to_string() }
    }

    fn snapshot(&self) -> Vec<((String, String), StillWanted)> {
        self.lock()
            .iter()
            .map(|(worker, requests)| (worker.clone(), StillWanted { requests: requests.keys().cloned().collect() }))
            .collect()
    }
}

impl Drop for StreamingRequest {
    fn drop(&mut self) {
        let mut by_worker = self.streaming.lock();
        if let Some(requests) = by_worker.get_mut(&self.worker) {
            if let Some(holders) = requests.get_mut(&self.request) {
                *holders -= 1;
                if *holders == 0 {
                    requests.remove(&self.request);
                }
            }
            if requests.is_empty() {
                by_worker.remove(&self.worker);
            }
        }
    }
}

/// Names each worker's streamed requests to it, until `shutdown`.
pub async fn announce(log: EventLog, streaming: Streaming, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(STILL_WANTED_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for ((node, worker), still) in streaming.snapshot() {
            let subject = subjects::still_wanted(&node, &worker);
            if let Err(e) = log.client().publish(subject, frames::encode(&still).into()).await {
                tracing::warn!(%worker, error = %e, "could not tell the worker its requests are still read");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_held_twice_stays_named_until_both_holders_drop() {
        let streaming = Streaming::default();
        let named = |s: &Streaming| s.snapshot().into_iter().flat_map(|(_, w)| w.requests).collect::<Vec<_>>();
        let first = streaming.start("n", "w", "r");
        let second = streaming.start("n", "w", "r");
        drop(first);
        assert_eq!(named(&streaming), vec!["r".to_string()]);
        drop(second);
        assert!(named(&streaming).is_empty());
    }
}
