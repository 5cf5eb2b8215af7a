//! The queens' API keys, folded from `key.*` events, and what each key has used lately, folded
//! from the requests that name it. Every queen folds the same log, so a revocation reaches all of
//! them as soon as they read it, and a limit counts the requests of every queen.

use std::collections::{BTreeMap, VecDeque};

use rbee_bus::{Event, KeyLimits, Recorded};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How far back the per-minute limits look.
pub const WINDOW_MS: u64 = 60_000;
/// A request still open this long after it was accepted no longer counts as in flight (its end
/// was never recorded: a worker lost with it).
const STUCK_AFTER_MS: u64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub id: String,
    pub name: String,
    pub secret_sha256: String,
    pub limits: KeyLimits,
    pub created_at_ms: u64,
    pub revoked: bool,
}

/// What one key used: requests in flight (by id, with when they were accepted), and recent
/// admissions and tokens, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub in_flight: BTreeMap<String, u64>,
    pub accepted_at_ms: VecDeque<u64>,
    pub tokens: VecDeque<(u64, u64)>,
}

impl Usage {
    pub fn requests_since(&self, since_ms: u64) -> usize {
        self.accepted_at_ms.iter().filter(|at| **at > since_ms).count()
    }

    pub fn tokens_since(&self, since_ms: u64) -> u64 {
        self.tokens.iter().filter(|(at, _)| *at > since_ms).map(|(_, n)| n).sum()
    }

    fn forget_before(&mut self, now_ms: u64) {
        let window_start = now_ms.saturating_sub(WINDOW_MS);
        while self.accepted_at_ms.front().is_some_and(|at| *at <= window_start) {
            self.accepted_at_ms.pop_front();
        }
        while self.tokens.front().is_some_and(|(at, _)| *at <= window_start) {
            self.tokens.pop_front();
        }
        self.in_flight.retain(|_, at| *at + STUCK_AFTER_MS > now_ms);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    pub keys: BTreeMap<String, Key>,
    /// Key id by the SHA-256 of its secret.
    by_secret: BTreeMap<String, String>,
    pub usage: BTreeMap<String, Usage>,
    /// The key of each request in flight, and the worker that took it.
    request_keys: BTreeMap<String, (String, String)>,
}

/// The SHA-256 of a secret token, hex: what the log keeps instead of the token.
pub fn secret_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Keys {
    /// The live key whose secret is `token`, if any.
    pub fn authenticate(&self, token: &str) -> Option<&Key> {
        let id = self.by_secret.get(&secret_sha256(token))?;
        self.keys.get(id).filter(|k| !k.revoked)
    }

    pub fn usage(&self, key: &str) -> Usage {
        self.usage.get(key).cloned().unwrap_or_default()
    }

    pub fn apply(&mut self, rec: &Recorded) {
        let at = rec.envelope.at_ms;
        match &rec.envelope.event {
            Event::KeyCreated(e) => {
                self.by_secret.insert(e.secret_sha256.clone(), e.key.clone());
                let key = Key {
                    id: e.key.clone(),
                    name: e.name.clone(),
                    secret_sha256: e.secret_sha256.clone(),
                    limits: e.limits.clone(),
                    created_at_ms: at,
                    revoked: false,
                };
                self.keys.insert(e.key.clone(), key);
            }
            Event::KeyRevoked(e) => {
                if let Some(k) = self.keys.get_mut(&e.key) {
                    k.revoked = true;
                }
            }
            // A stream moved to another worker: the same request, counted once.
            Event::RequestAccepted(e) if self.request_keys.contains_key(&e.request) => {
                if let Some((_, worker)) = self.request_keys.get_mut(&e.request) {
                    *worker = e.worker.clone();
                }
            }
            Event::RequestAccepted(e) => {
                if let Some(key) = &e.key {
                    let usage = self.usage.entry(key.clone()).or_default();
                    usage.forget_before(at);
                    usage.accepted_at_ms.push_back(at);
                    usage.in_flight.insert(e.request.clone(), at);
                    self.request_keys.insert(e.request.clone(), (key.clone(), e.worker.clone()));
                }
            }
            // Only the worker that took the request ends it: any worker may write a request's
            // subject, so a finish from another one is not believed.
            Event::RequestFinished(e) if self.request_keys.get(&e.request).is_some_and(|(_, w)| *w == e.worker) => {
                if let Some((key, _)) = self.request_keys.remove(&e.request)
                    && let Some(usage) = self.usage.get_mut(&key)
                {
                    usage.forget_before(at);
                    usage.in_flight.remove(&e.request);
                    usage.tokens.push_back((at, u64::from(e.prompt_tokens) + u64::from(e.completion_tokens)));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::{Envelope, KeyCreated, KeyRevoked, Meta, RequestAccepted, RequestFinished, subjects};

    fn rec(at_ms: u64, event: Event) -> Recorded {
        let mut envelope = Envelope::new(event, 1, &Meta::default());
        envelope.at_ms = at_ms;
        Recorded { stream_seq: 1, subject: subjects::for_event(&envelope.event), envelope }
    }

    fn created(id: &str, token: &str) -> Event {
        Event::KeyCreated(KeyCreated {
            key: id.into(),
            name: "n".into(),
            secret_sha256: secret_sha256(token),
            limits: KeyLimits::default(),
        })
    }

    fn accepted(request: &str, key: &str) -> Event {
        Event::RequestAccepted(RequestAccepted {
            request: request.into(),
            model: "m".into(),
            worker: "w".into(),
            slot: 0,
            max_tokens: None,
            stream: false,
            key: Some(key.into()),
        })
    }

    /// `request` finished by `worker`: 10 prompt and 5 completion tokens.
    fn finished_by(request: &str, worker: &str) -> Event {
        Event::RequestFinished(RequestFinished {
            request: request.into(),
            worker: worker.into(),
            finish_reason: rbee_bus::FinishReason::Stop,
            prompt_tokens: 10,
            completion_tokens: 5,
            time_to_first_token_ms: 1,
            duration_ms: 1,
            error_code: None,
        })
    }

    #[test]
    fn a_key_authenticates_until_it_is_revoked() {
        let mut keys = Keys::default();
        keys.apply(&rec(1, created("k-1", "secret-1")));
        assert_eq!(keys.authenticate("secret-1").map(|k| k.id.as_str()), Some("k-1"));
        assert!(keys.authenticate("secret-2").is_none());
        keys.apply(&rec(2, Event::KeyRevoked(KeyRevoked { key: "k-1".into(), reason: "r".into() })));
        assert!(keys.authenticate("secret-1").is_none());
    }

    #[test]
    fn usage_counts_the_last_minute_and_what_is_in_flight() {
        let mut keys = Keys::default();
        keys.apply(&rec(1, created("k-1", "s")));
        keys.apply(&rec(1_000, accepted("r1", "k-1")));
        keys.apply(&rec(2_000, accepted("r2", "k-1")));
        let finished = finished_by("r1", "w");
        keys.apply(&rec(2_500, finished_by("r1", "other")));
        assert_eq!(keys.usage("k-1").in_flight.len(), 2, "another worker's finish is not believed");
        keys.apply(&rec(3_000, finished));
        let usage = keys.usage("k-1");
        assert_eq!(usage.in_flight.len(), 1);
        assert_eq!(usage.requests_since(0), 2);
        assert_eq!(usage.tokens_since(0), 15);
        assert_eq!(usage.requests_since(1_500), 1);
        keys.apply(&rec(70_000, accepted("r3", "k-1")));
        assert_eq!(keys.usage("k-1").accepted_at_ms.len(), 1, "older than a minute is forgotten");
    }

    #[test]
    fn a_moved_request_is_counted_once_and_ended_by_its_new_worker() {
        let mut keys = Keys::default();
        keys.apply(&rec(1, created("k-1", "s")));
        keys.apply(&rec(1_000, accepted("r1", "k-1")));
        let moved = match accepted("r1", "k-1") {
            Event::RequestAccepted(a) => Event::RequestAccepted(RequestAccepted { worker: "w2".into(), ..a }),
            _ => unreachable!(),
        };
        keys.apply(&rec(1_500, moved));
        assert_eq!(keys.usage("k-1").requests_since(0), 1);
        keys.apply(&rec(2_000, finished_by("r1", "w")));
        assert_eq!(keys.usage("k-1").in_flight.len(), 1, "the lost worker's late end is not believed");
        keys.apply(&rec(2_500, finished_by("r1", "w2")));
        assert!(keys.usage("k-1").in_flight.is_empty());
    }
}
