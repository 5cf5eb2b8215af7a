//! Requests that find no free slot wait their turn: a bounded FIFO per model. Only the request at
//! the head of its model's queue claims a slot (as soon as the view shows one free), so requests
//! are admitted in the order they came. A full queue answers `QUEUE_FULL`, a wait longer than the
//! queue timeout `QUEUE_TIMEOUT`, both 503 with a `Retry-After` from the rate slots were granted
//! over the last minute. A request that leaves (its client went away, `DELETE`) leaves the queue at
//! once. Each queen keeps its own queues; queens share slots through the log, where each claim is
//! decided in order (see the README for what fairness holds across queens).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rbee_bus::Code;
use tokio::sync::Notify;

use crate::error::ApiError;

/// The window the grant rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(60);

struct Waiting {
    ticket: u64,
    request: String,
    key: Option<String>,
    cancelled: Arc<AtomicBool>,
}

#[derive(Default)]
struct ModelQueue {
    waiting: VecDeque<Waiting>,
    /// When slots were granted to this model's requests, within [`RATE_WINDOW`].
    granted: VecDeque<Instant>,
}

pub struct Queues {
    models: Mutex<HashMap<String, ModelQueue>>,
    next_ticket: std::sync::atomic::AtomicU64,
    changed: Notify,
    depth: usize,
}

/// A request's place in its model's queue; leaving it (drop) lets the next one go.
pub struct Place {
    queues: Arc<Queues>,
    model: String,
    ticket: u64,
    cancelled: Arc<AtomicBool>,
    /// 1 for the head: how many were waiting, this one included, when it joined.
    pub position: usize,
}

impl Queues {
    pub fn new(depth: usize) -> Arc<Queues> {
        Arc::new(Queues { models: Mutex::default(), next_ticket: Default::default(), changed: Notify::new(), depth })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ModelQueue>> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the queue of `model`, or refuses with `QUEUE_FULL`.
    pub fn join(self: &Arc<Self>, model: &str, request: &str, key: Option<String>) -> Result<Place, ApiError> {
        let mut models = self.lock();
        let queue = models.entry(model.to_string()).or_default();
        if queue.waiting.len() >= self.depth {
            let retry = retry_after(queue, queue.waiting.len());
            return Err(ApiError::new(
                Code::QueueFull,
                format!("{} requests for {model} are waiting already; retry in {retry}s", queue.waiting.len()),
            )
            .retry_after(retry));
        }
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let cancelled = Arc::new(AtomicBool::new(false));
        queue.waiting.push_back(Waiting { ticket, request: request.into(), key, cancelled: cancelled.clone() });
        let position = queue.waiting.len();
        Ok(Place { queues: self.clone(), model: model.into(), ticket, cancelled, position })
    }

    /// Takes `request` out of its queue if it waits there and belongs to `key`; true if it did.
    pub fn cancel(&self, request: &str, key: Option<&str>) -> bool {
        let models = self.lock();
        let found = models.values().flat_map(|q| q.waiting.iter()).find(|w| w.request == request);
        match found {
            Some(w) if w.key.as_deref() == key => {
                w.cancelled.store(true, Ordering::SeqCst);
                self.changed.notify_waiters();
                true
            }
            _ => false,
        }
    }

    /// Requests waiting for `model` now.
    pub fn waiting(&self, model: &str) -> usize {
        self.lock().get(model).map_or(0, |q| q.waiting.len())
    }
}

/// Seconds until a place is likely to free up: the waiting requests over the recent grant rate.
fn retry_after(queue: &ModelQueue, waiting: usize) -> u64 {
    let per_second = queue.granted.len() as f64 / RATE_WINDOW.as_secs_f64();
    if per_second <= 0.0 { 5 } else { ((waiting as f64 / per_second).ceil() as u64).clamp(1, 60) }
}

impl Place {
    /// Waits until this request heads its queue; `QUEUE_TIMEOUT` after `deadline`, `CANCELLED`
    /// when it was taken out.
    pub async fn wait_turn(&self, deadline: tokio::time::Instant) -> Result<(), ApiError> {
        loop {
            let changed = self.queues.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.cancelled.load(Ordering::SeqCst) {
                return Err(ApiError::new(Code::Cancelled, "the request was cancelled while it waited"));
            }
            if self.is_head() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(self.timed_out());
            }
        }
    }

    fn is_head(&self) -> bool {
        self.queues.lock().get(&self.model).and_then(|q| q.waiting.front()).is_some_and(|w| w.ticket == self.ticket)
    }

    /// The error of a wait that lasted too long.
    pub fn timed_out(&self) -> ApiError {
        let models = self.queues.lock();
        let retry = models.get(&self.model).map_or(5, |q| retry_after(q, q.waiting.len()));
        ApiError::new(Code::QueueTimeout, format!("no slot for {} freed up in time; retry in {retry}s", self.model))
            .retry_after(retry)
    }

    /// This request got its slot: it leaves the queue, and the grant counts toward the rate.
    pub fn granted(self) {
        let mut models = self.queues.lock();
        if let Some(q) = models.get_mut(&self.model) {
            let now = Instant::now();
            q.granted.push_back(now);
            while q.granted.front().is_some_and(|t| now.duration_since(*t) > RATE_WINDOW) {
                q.granted.pop_front();
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut models = self.queues.lock();
        if let Some(q) = models.get_mut(&self.model) {
            q.waiting.retain(|w| w.ticket != self.ticket);
        }
        drop(models);
        self.queues.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_admitted_in_order_and_a_full_queue_refuses() {
        let queues = Queues::new(2);
        let first = queues.join("m", "r1", None).unwrap();
        let second = queues.join("m", "r2", None).unwrap();
        assert_eq!((first.position, second.position), (1, 2));
        let refused = queues.join("m", "r3", None).err().unwrap();
        assert_eq!(refused.code, Code::QueueFull);
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        assert_eq!(second.wait_turn(soon).await.unwrap_err().code, Code::QueueTimeout, "not its turn yet");
        first.wait_turn(soon).await.unwrap();
        first.granted();
        second.wait_turn(tokio::time::Instant::now() + Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_request_leaves_at_once_and_only_its_own_key_may_cancel_it() {
        let queues = Queues::new(4);
        let _head = queues.join("m", "r1", None).unwrap();
        let waiting = queues.join("m", "r2", Some("k-a".into())).unwrap();
        assert!(!queues.cancel("r2", Some("k-b")), "another key's cancel");
        assert!(queues.cancel("r2", Some("k-a")));
        let later = tokio::time::Instant::now() + Duration::from_secs(5);
        assert_eq!(waiting.wait_turn(later).await.unwrap_err().code, Code::Cancelled);
        drop(waiting);
        assert_eq!(queues.waiting("m"), 1);
    }
}
