//! The event log on NATS JetStream: stream setup, appends with optimistic concurrency, reads.
//!
//! Concurrency is decided by the server: every append to an aggregate names the stream sequence of
//! the aggregate's last event (`Nats-Expected-Last-Subject-Sequence`), and the second of two racing
//! writers is rejected. That rejection becomes [`AppendError::Conflict`]; nothing here takes a lock.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};

use async_nats::ConnectErrorKind;

use crate::auth::{Credentials, NatsAccess, roles};
use crate::envelope::{DecodeError, Envelope, HEADER_EXPECTED_LAST_SUBJECT_SEQ, Meta};
use crate::event::Event;
use crate::subjects;

/// Where an aggregate stands: the stream sequence of its last event and its version (event count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub seq: u64,
    pub version: u64,
}

/// What the writer believes about the aggregate it appends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The aggregate has no events yet (first registration wins).
    NoStream,
    /// The aggregate's last event is at this position.
    At(Position),
    /// Whatever is there: append after the current last event (re-read and retried on a race).
    Any,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the aggregate first.
    #[error("conflict on {subject}: expected {expected:?}")]
    Conflict { subject: String, expected: Expected },
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// nats-server refused this process's identity (or it has none it can use).
    #[error("{0}")]
    Unauthorized(String),
}

/// A stream setting in the environment is not usable; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The event at `seq` (on `subject`, published at `at_ms`) cannot be decoded; `pending` more
    /// followed it when it was read. Readers skip it, report it, and go on.
    #[error("event {seq} on {subject} cannot be decoded: {source}")]
    Undecodable { seq: u64, pending: u64, subject: String, at_ms: u64, source: DecodeError },
}

/// Durability and retention of the two streams.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub replicas: usize,
    /// How long `Nats-Msg-Id` dedups a retried publish.
    pub duplicate_window: Duration,
    /// Heartbeats older than this are dropped.
    pub heartbeat_max_age: Duration,
}

impl StreamSettings {
    /// The defaults, overridden by `RBEE_STREAM_REPLICAS`, `RBEE_DUPLICATE_WINDOW_SECS` and
    /// `RBEE_HEARTBEAT_RETENTION_SECS`. Every process reads the same variables; the first to create
    /// a stream sets it up. A value that is not a positive integer is an error naming the variable.
    pub fn from_env() -> Result<Self, InvalidSetting> {
        let mut s = StreamSettings::default();
        let read = |name: &str| -> Result<Option<u64>, InvalidSetting> {
            match std::env::var(name) {
                Err(_) => Ok(None),
                Ok(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(InvalidSetting(format!(
                        "{name} must be a positive integer, got {:?}",
                        v.chars().take(20).collect::<String>()
                    ))),
                },
            }
        };
        if let Some(r) = read("RBEE_STREAM_REPLICAS")? {
            s.replicas = r as usize;
        }
        if let Some(secs) = read("RBEE_DUPLICATE_WINDOW_SECS")? {
            s.duplicate_window = Duration::from_secs(secs);
        }
        if let Some(secs) = read("RBEE_HEARTBEAT_RETENTION_SECS")? {
            s.heartbeat_max_age = Duration::from_secs(secs);
        }
        Ok(s)
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            heartbeat_max_age: Duration::from_secs(3600),
        }
    }
}

/// An event read back from the log.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub stream_seq: u64,
    pub subject: String,
    pub envelope: Envelope,
}

impl Recorded {
    /// Whether the event was written on the subject its own content names. Identity lives in the
    /// subject and nats-server checks who may write there; an event whose body claims another
    /// aggregate (a worker registering under another worker's name) is forged, whoever wrote it.
    /// Events written before worker and model subjects named their node match their old subject.
    pub fn origin_matches(&self) -> bool {
        let event = &self.envelope.event;
        subjects::for_event(event) == self.subject
            || subjects::before_node_scopes(event).is_some_and(|old| old == self.subject)
    }
}

/// A handle to the log. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    client: async_nats::Client,
    js: jetstream::Context,
}

const ANY_RETRIES: usize = 16;
/// Sends of one event before giving up when acks do not come back.
const PUBLISH_ATTEMPTS: u32 = 4;
/// How long a publish nobody answers is tried again: a clustered stream without a leader has no
/// responders until the election ends (a few seconds after its leader's server died).
const ELECTION_WAIT: Duration = Duration::from_secs(8);

/// Whether the server refused a publish because the aggregate moved on (an optimistic
/// concurrency conflict). A single server says so with error code 10071, which async-nats knows;
/// a clustered stream's leader says it with 10164, which async-nats reports as "other".
fn refused_for_order(e: &async_nats::jetstream::context::PublishError) -> bool {
    e.kind() == PublishErrorKind::WrongLastSequence
        || (e.kind() == PublishErrorKind::Other && e.to_string().contains("10164"))
}

impl EventLog {
    /// Connects to NATS as the identity in `access.creds`. Fails fast when nobody listens or the
    /// server refuses the credentials; waits up to 10 s for a server that is still starting.
    /// `access.url` may name several servers of one cluster, separated by commas: the client
    /// connects to any of them and reconnects to any other.
    pub async fn connect(access: &NatsAccess) -> Result<Self, AppendError> {
        let url = &access.url;
        let servers = access.servers();
        let creds = access.creds.as_deref().map(Credentials::read).transpose().map_err(AppendError::Unauthorized)?;
        let options = || -> Result<async_nats::ConnectOptions, AppendError> {
            let options = match &creds {
                Some(c) => async_nats::ConnectOptions::with_credentials(&c.text)
                    .map_err(|e| AppendError::Unauthorized(format!("unusable NATS credentials: {e}")))?
                    .custom_inbox_prefix(roles::inbox_prefix(&c.public_key)),
                None => async_nats::ConnectOptions::new(),
            };
            let options = match &access.ca {
                Some(ca) => options.add_root_certificates(ca.clone()).require_tls(true),
                None => options,
            };
            // One file holds the certificate and its key.
            let options = match &access.cert {
                Some(cert) => options.add_client_certificate(cert.clone(), cert.clone()),
                None => options,
            };
            Ok(options.connection_timeout(Duration::from_secs(5)).ping_interval(access.ping).max_reconnects(None))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match options()?.connect(servers.as_slice()).await {
                Ok(client) => return Ok(Self::from_client(client)),
                Err(e) if e.kind() == ConnectErrorKind::AuthorizationViolation => {
                    return Err(AppendError::Unauthorized(format!(
                        "nats-server at {url} refused {}",
                        access.creds.as_ref().map_or("a client without credentials".into(), |p| {
                            format!("the credentials in {}", p.display())
                        })
                    )));
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(AppendError::Unavailable(format!("cannot connect to NATS at {url}: {e}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    pub fn from_client(client: async_nats::Client) -> Self {
        let js = jetstream::new(client.clone());
        EventLog { client, js }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the connection to nats-server is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates the `RBEE` and `RBEE_HB` streams if missing (idempotent).
    pub async fn ensure_streams(&self, settings: &StreamSettings) -> Result<(), AppendError> {
        let events = stream::Config {
            name: subjects::EVENTS_STREAM.into(),
            subjects: vec![subjects::EVENTS_SUBJECTS.into()],
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            duplicate_window: settings.duplicate_window,
            allow_direct: true,
            ..Default::default()
        };
        let heartbeats = stream::Config {
            name: subjects::HEARTBEATS_STREAM.into(),
            subjects: vec![subjects::HEARTBEATS_SUBJECTS.into()],
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            max_messages_per_subject: 1,
            max_age: settings.heartbeat_max_age,
            allow_direct: true,
            ..Default::default()
        };
        for config in [events, heartbeats] {
            let name = config.name.clone();
            // Processes starting together race to create the streams, and nats-server may refuse
            // the loser ("error creating store for stream"); the next try finds the winner's.
            let mut tries = 0;
            loop {
                match self.js.get_or_create_stream(config.clone()).await {
                    Ok(_) => break,
                    Err(e) if tries < 5 => {
                        tries += 1;
                        tracing::debug!(stream = %name, error = %e, "stream not created yet; trying again");
                        tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                    }
                    Err(e) => return Err(AppendError::Unavailable(format!("cannot create stream {name}: {e}"))),
                }
            }
        }
        Ok(())
    }

    /// Appends one event to its aggregate, checked against `expected` by the server.
    pub async fn append(&self, event: Event, expected: Expected, meta: &Meta) -> Result<Position, AppendError> {
        let subject = subjects::for_event(&event);
        match expected {
            Expected::NoStream => self.publish(&subject, event, Position::default(), meta).await,
            Expected::At(at) => self.publish(&subject, event, at, meta).await,
            Expected::Any => self.append_envelope(Envelope::new(event, 0, meta)).await,
        }
    }

    /// Appends a prepared envelope after whatever its aggregate holds, its version set to follow
    /// it: the outbox's way, which keeps an event's id across tries. An envelope that already is
    /// the last on its subject (an earlier try whose ack was lost) is not written again.
    pub async fn append_envelope(&self, mut envelope: Envelope) -> Result<Position, AppendError> {
        let subject = subjects::for_event(&envelope.event);
        let mut last_error = None;
        for _ in 0..ANY_RETRIES {
            let after = match self.last_recorded(&subject).await? {
                Some((position, id)) if id == envelope.id => return Ok(position),
                Some((position, _)) => position,
                None => Position::default(),
            };
            envelope.version = after.version + 1;
            match self.publish_envelope(&subject, &envelope, after.seq).await {
                Err(e @ AppendError::Conflict { .. }) => last_error = Some(e),
                other => return other,
            }
        }
        Err(last_error.expect("loop ran at least once"))
    }

    async fn publish(
        &self,
        subject: &str,
        event: Event,
        after: Position,
        meta: &Meta,
    ) -> Result<Position, AppendError> {
        let envelope = Envelope::new(event, after.version + 1, meta);
        self.publish_envelope(subject, &envelope, after.seq).await
    }

    /// Publishes a prepared envelope as the message after `after_seq` on `subject` (0: the first).
    ///
    /// Idempotent: a publish whose ack was lost is sent again with the same event id. The server
    /// dedups it by `Nats-Msg-Id`, or (nats-server 2.15 checks the expected sequence first) refuses
    /// it as a conflict; a conflict whose winner is this very event is our own earlier write, and
    /// counts as success.
    pub async fn publish_envelope(
        &self,
        subject: &str,
        envelope: &Envelope,
        after_seq: u64,
    ) -> Result<Position, AppendError> {
        let (mut headers, body) = envelope.encode();
        headers.insert(HEADER_EXPECTED_LAST_SUBJECT_SEQ, after_seq.to_string().as_str());
        let body = bytes::Bytes::from(body);
        let mut last_error = String::new();
        let mut attempt = 0;
        // While a clustered stream elects a leader, nobody answers its subjects.
        let election_ends = tokio::time::Instant::now() + ELECTION_WAIT;
        while attempt < PUBLISH_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
            }
            attempt += 1;
            let ack = match self.js.publish_with_headers(subject.to_string(), headers.clone(), body.clone()).await {
                Ok(pending) => pending.await,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            match ack {
                Ok(ack) => return Ok(Position { seq: ack.sequence, version: envelope.version }),
                Err(e) if refused_for_order(&e) => {
                    if let Some((position, id)) = self.last_recorded(subject).await?
                        && id == envelope.id
                    {
                        return Ok(position);
                    }
                    let expected = if after_seq == 0 {
                        Expected::NoStream
                    } else {
                        Expected::At(Position { seq: after_seq, version: envelope.version - 1 })
                    };
                    return Err(AppendError::Conflict { subject: subject.to_string(), expected });
                }
                Err(e)
                    if e.kind() == PublishErrorKind::StreamNotFound && tokio::time::Instant::now() < election_ends =>
                {
                    last_error = e.to_string();
                    attempt = attempt.min(PUBLISH_ATTEMPTS - 1);
                }
                Err(e) if matches!(e.kind(), PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe) => {
                    last_error = e.to_string()
                }
                Err(e) => return Err(AppendError::Unavailable(e.to_string())),
            }
        }
        Err(AppendError::Unavailable(format!("no ack after {PUBLISH_ATTEMPTS} attempts: {last_error}")))
    }

    /// Writes a message exactly as another log stored it (a restore): its own headers and body,
    /// as the message after `after_seq` on `subject`, so the server checks the order as it did
    /// originally. Returns the sequence it was stored at.
    pub async fn import_raw(
        &self,
        subject: &str,
        headers: &[(String, String)],
        payload: bytes::Bytes,
        after_seq: u64,
    ) -> Result<u64, AppendError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers.iter().filter(|(name, _)| name != HEADER_EXPECTED_LAST_SUBJECT_SEQ) {
            map.insert(name.as_str(), value.as_str());
        }
        map.insert(HEADER_EXPECTED_LAST_SUBJECT_SEQ, after_seq.to_string().as_str());
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), map, payload)
            .await
            .map_err(|e| AppendError::Unavailable(e.to_string()))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if refused_for_order(&e) => {
                // An import knows the sequence it expected, not the aggregate's version.
                let expected = match after_seq {
                    0 => Expected::NoStream,
                    seq => Expected::At(Position { seq, version: 0 }),
                };
                Err(AppendError::Conflict { subject: subject.to_string(), expected })
            }
            Err(e) => Err(AppendError::Unavailable(e.to_string())),
        }
    }

    /// Publishes a heartbeat to `RBEE_HB` (kept: the last one per worker).
    pub async fn heartbeat(&self, event: Event, meta: &Meta) -> Result<(), AppendError> {
        let subject = subjects::for_event(&event);
        let (headers, body) = Envelope::new(event, 0, meta).encode();
        self.js
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| AppendError::Unavailable(e.to_string()))?
            .await
            .map_err(|e| AppendError::Unavailable(e.to_string()))?;
        Ok(())
    }

    /// When the last heartbeat of `worker` on `node` that `RBEE_HB` holds was sent (ms since the
    /// epoch), read from the stream itself, not from a follower that may be behind.
    pub async fn last_heartbeat_ms(&self, node: &str, worker: &str) -> Result<Option<u64>, AppendError> {
        let stream =
            self.stream(subjects::HEARTBEATS_STREAM).await.map_err(|e| AppendError::Unavailable(e.to_string()))?;
        match stream.get_last_raw_message_by_subject(&subjects::heartbeat(node, worker)).await {
            Ok(msg) => Ok(Envelope::decode(Some(&msg.headers), &msg.payload).ok().map(|env| env.at_ms)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(AppendError::Unavailable(e.to_string())),
        }
    }

    /// The position of an aggregate's last event, read from the stream leader (read-your-writes).
    pub async fn last_position(&self, subject: &str) -> Result<Option<Position>, AppendError> {
        Ok(self.last_recorded(subject).await?.map(|(position, _)| position))
    }

    /// Position and event id of the last event on `subject`.
    async fn last_recorded(&self, subject: &str) -> Result<Option<(Position, uuid::Uuid)>, AppendError> {
        let stream = self.events_stream().await.map_err(|e| AppendError::Unavailable(e.to_string()))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => {
                let env = Envelope::decode(Some(&msg.headers), &msg.payload)
                    .map_err(|e| AppendError::Unavailable(format!("last event on {subject} unreadable: {e}")))?;
                Ok(Some((Position { seq: msg.sequence, version: env.version }, env.id)))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(AppendError::Unavailable(e.to_string())),
        }
    }

    /// The id of the event stored at `seq`, or None when the stream no longer (or never) held it.
    pub async fn event_id_at(&self, seq: u64) -> Result<Option<uuid::Uuid>, AppendError> {
        let stream = self.events_stream().await.map_err(|e| AppendError::Unavailable(e.to_string()))?;
        match stream.get_raw_message(seq).await {
            Ok(msg) => Ok(Envelope::decode(Some(&msg.headers), &msg.payload).ok().map(|e| e.id)),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(AppendError::Unavailable(e.to_string())),
        }
    }

    /// The first and last sequence the events stream holds now ((0, 0) when empty).
    pub async fn events_bounds(&self) -> Result<(u64, u64), AppendError> {
        let mut stream = self.events_stream().await.map_err(|e| AppendError::Unavailable(e.to_string()))?;
        let info = stream.info().await.map_err(|e| AppendError::Unavailable(e.to_string()))?;
        if info.state.messages == 0 {
            return Ok((info.state.last_sequence + 1, info.state.last_sequence));
        }
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    pub async fn events_stream(&self) -> Result<stream::Stream, ReadError> {
        self.stream(subjects::EVENTS_STREAM).await
    }

    pub async fn stream(&self, name: &str) -> Result<stream::Stream, ReadError> {
        self.js.get_stream(name).await.map_err(|e| ReadError::Unavailable(format!("stream {name}: {e}")))
    }
}

/// Decodes a JetStream message into a [`Recorded`] event.
pub fn decode_message(msg: &jetstream::Message) -> Result<Recorded, ReadError> {
    let info = msg.info().map_err(|e| ReadError::Unavailable(e.to_string()))?;
    let envelope = Envelope::decode(msg.headers.as_ref(), &msg.payload).map_err(|source| ReadError::Undecodable {
        seq: info.stream_sequence,
        pending: info.pending,
        subject: msg.subject.to_string(),
        at_ms: (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
        source,
    })?;
    Ok(Recorded { stream_seq: info.stream_sequence, subject: msg.subject.to_string(), envelope })
}

/// Headers as `(name, value)` pairs, for display and archiving.
pub fn header_pairs(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    headers
        .map(|h| h.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string()))).collect())
        .unwrap_or_default()
}
