//! Requests someone still reads. A queen names, every few hundred milliseconds, the requests on
//! this worker it still streams to a client ([`StillWanted`]); a request no queen has named for
//! [`REQUESTER_TIMEOUT`] has lost its reader (the queen died, or was cut off), so its generation is
//! cancelled and its slot freed, as if the client had gone away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use rbee_bus::frames::{self, REQUESTER_TIMEOUT, StillWanted};

/// How a running request is stopped: `cancel` stops its generation; `abandoned` says why (no
/// queen reads it), so its stream ends with `STREAM_ABANDONED` and a queen that still holds the
/// client (it was only paused) moves it elsewhere rather than ending it as if complete.
#[derive(Clone, Default)]
pub struct Stop {
    pub cancel: Arc<AtomicBool>,
    pub abandoned: Arc<AtomicBool>,
}

/// The running requests, each with when a queen last named it and how to stop it.
#[derive(Default)]
pub struct Requesters {
    wanted: Mutex<HashMap<String, (Instant, Stop)>>,
}

impl Requesters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Stop)>> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request was taken: wanted from now on, until queens stop naming it.
    pub fn follow(&self, request: &str, stop: Stop) {
        self.lock().insert(request.to_string(), (Instant::now(), stop));
    }

    /// The request ended.
    pub fn forget(&self, request: &str) {
        self.lock().remove(request);
    }

    fn heard(&self, still: &StillWanted) {
        let mut wanted = self.lock();
        for request in &still.requests {
            if let Some((last, _)) = wanted.get_mut(request) {
                *last = Instant::now();
            }
        }
    }

    /// This process was not running for a while (paused, starved): what queens said meanwhile is
    /// still unread, so nobody's silence can be judged yet. Every request starts a fresh wait.
    fn resumed(&self) {
        let now = Instant::now();
        for (last, _) in self.lock().values_mut() {
            *last = now;
        }
    }

    /// Cancels every request nobody named for [`REQUESTER_TIMEOUT`]; returns their ids.
    fn cancel_abandoned(&self) -> Vec<String> {
        let mut wanted = self.lock();
        let gone: Vec<String> =
            wanted.iter().filter(|(_, (last, _))| last.elapsed() > REQUESTER_TIMEOUT).map(|(r, _)| r.clone()).collect();
        for request in &gone {
            if let Some((_, stop)) = wanted.remove(request) {
                stop.abandoned.store(true, Ordering::SeqCst);
                stop.cancel.store(true, Ordering::Relaxed);
            }
        }
        gone
    }
}

/// Listens to the queens on `subject` and cancels what they no longer read, until aborted.
pub async fn watch(requesters: Arc<Requesters>, mut still_wanted: async_nats::Subscriber) {
    let every = REQUESTER_TIMEOUT / 6;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            // What the queens said comes before any judgement of their silence.
            biased;
            msg = still_wanted.next() => match msg {
                Some(msg) => match frames::decode::<StillWanted>(&msg.payload) {
                    Ok(still) => requesters.heard(&still),
                    Err(e) => tracing::warn!(error = %e, "unreadable still-wanted message ignored"),
                },
                None => return,
            },
            _ = tick.tick() => {
                let gap = last_tick.elapsed();
                last_tick = Instant::now();
                if gap > every * 3 {
                    tracing::info!(gap_ms = gap.as_millis() as u64, "this worker did not run for a while; waiting afresh");
                    requesters.resumed();
                    continue;
                }
                for request in requesters.cancel_abandoned() {
                    tracing::warn!(%request, "no queen reads this request any more; stopping it");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_nobody_names_is_cancelled_and_a_named_one_is_not() {
        let requesters = Requesters::default();
        let (named, forgotten) = (Stop::default(), Stop::default());
        requesters.follow("named", named.clone());
        requesters.follow("forgotten", forgotten.clone());
        std::thread::sleep(REQUESTER_TIMEOUT / 2);
        requesters.heard(&StillWanted { requests: vec!["named".into()] });
        std::thread::sleep(REQUESTER_TIMEOUT / 2 + std::time::Duration::from_millis(100));
        assert_eq!(requesters.cancel_abandoned(), vec!["forgotten".to_string()]);
        assert!(forgotten.cancel.load(Ordering::Relaxed) && forgotten.abandoned.load(Ordering::Relaxed));
        assert!(!named.cancel.load(Ordering::Relaxed) && !named.abandoned.load(Ordering::Relaxed));
    }
}
