//! The requests this queen streams to clients right now, by worker, told to each worker every
//! [`STILL_WANTED_EVERY`] ([`StillWanted`]). A worker stops a request no queen names any more, so
//! a queen that dies mid-stream leaves no generation running for nobody.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use rbee_bus::EventLog;
use rbee_bus::frames::{self, STILL_WANTED_EVERY, StillWanted};
use rbee_bus::subjects;
use tokio_util::sync::CancellationToken;

type ByWorker = BTreeMap<(String, String), BTreeSet<String>>;

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
        self.lock().entry(key.clone()).or_default().insert(request.to_string());
        StreamingRequest { streaming: self.clone(), worker: key, request: request.to_string() }
    }

    fn snapshot(&self) -> Vec<((String, String), StillWanted)> {
        self.lock()
            .iter()
            .map(|(worker, requests)| (worker.clone(), StillWanted { requests: requests.iter().cloned().collect() }))
            .collect()
    }
}

impl Drop for StreamingRequest {
    fn drop(&mut self) {
        let mut by_worker = self.streaming.lock();
        if let Some(requests) = by_worker.get_mut(&self.worker) {
            requests.remove(&self.request);
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
