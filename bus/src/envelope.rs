//! The envelope around every event, and its wire form: a postcard body plus readable headers.
//!
//! Headers say what a human needs without decoding: `Rbee-Event` (type), `Rbee-Schema` (body
//! version), `Nats-Msg-Id` (event id, JetStream dedup), `traceparent` (W3C trace context).
//! Decoding dispatches on `Rbee-Schema`, so an old body is upcast to today's types on read.

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Event;

/// The body schema written today.
pub const SCHEMA_VERSION: u16 = 3;

pub const HEADER_EVENT: &str = "Rbee-Event";
pub const HEADER_SCHEMA: &str = "Rbee-Schema";
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
pub const HEADER_TRACEPARENT: &str = "traceparent";
pub const HEADER_EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";

/// One recorded fact with its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7: unique, time-ordered; doubles as `Nats-Msg-Id`.
    pub id: Uuid,
    /// Position of this event within its aggregate, from 1. Heartbeats carry 0: they are not history.
    pub version: u64,
    /// Milliseconds since the Unix epoch, taken by the writer.
    pub at_ms: u64,
    /// Ties together the events of one user action (e.g. the request id).
    pub correlation: Option<String>,
    /// W3C trace context of the span that wrote the event.
    pub traceparent: Option<String>,
    pub event: Event,
}

/// Why bytes on the wire could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("unknown event schema {0}: this rbee is older than the log; upgrade it")]
    UnknownSchema(String),
    #[error("corrupt event body: {0}")]
    Body(#[from] postcard::Error),
}

/// Metadata a writer passes along with an event.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub correlation: Option<String>,
    pub traceparent: Option<String>,
}

impl Envelope {
    pub fn new(event: Event, version: u64, meta: &Meta) -> Self {
        Envelope {
            id: Uuid::now_v7(),
            version,
            at_ms: now_ms(),
            correlation: meta.correlation.clone(),
            traceparent: meta.traceparent.clone(),
            event,
        }
    }

    /// Body bytes and headers for publishing.
    pub fn encode(&self) -> (HeaderMap, Vec<u8>) {
        let body = postcard::to_stdvec(self).expect("postcard encoding into a Vec cannot fail");
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_EVENT, self.event.kind());
        headers.insert(HEADER_SCHEMA, SCHEMA_VERSION.to_string().as_str());
        headers.insert(HEADER_MSG_ID, self.id.to_string().as_str());
        if let Some(tp) = &self.traceparent {
            headers.insert(HEADER_TRACEPARENT, tp.as_str());
        }
        (headers, body)
    }

    /// Reads an envelope from a message's headers and body, upcasting older schemas.
    pub fn decode(headers: Option<&HeaderMap>, body: &[u8]) -> Result<Self, DecodeError> {
        let schema = headers
            .and_then(|h| h.get(HEADER_SCHEMA))
            .map(|v| v.as_str().to_string())
            .ok_or(DecodeError::MissingHeader(HEADER_SCHEMA))?;
        Self::decode_schema(&schema, body)
    }

    /// Reads a body written with the given schema version.
    pub fn decode_schema(schema: &str, body: &[u8]) -> Result<Self, DecodeError> {
        match schema {
            "1" => Ok(postcard::from_bytes::<crate::schema_v1::EnvelopeV1>(body)?.into()),
            "2" => Ok(postcard::from_bytes::<crate::schema_v2::EnvelopeV2>(body)?.into()),
            "3" => Ok(postcard::from_bytes(body)?),
            other => Err(DecodeError::UnknownSchema(other.chars().take(16).collect())),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn sample() -> Envelope {
        Envelope::new(
            Event::SlotClaimed(SlotClaimed { worker: "w1".into(), slot: 0, request: "r1".into() }),
            3,
            &Meta { correlation: Some("r1".into()), traceparent: Some(crate::trace::new_traceparent()) },
        )
    }

    #[test]
    fn an_envelope_survives_the_wire() {
        let env = sample();
        let (headers, body) = env.encode();
        assert_eq!(headers.get(HEADER_EVENT).unwrap().as_str(), "slot.claimed");
        assert_eq!(headers.get(HEADER_MSG_ID).unwrap().as_str(), env.id.to_string());
        assert_eq!(Envelope::decode(Some(&headers), &body).unwrap(), env);
    }

    #[test]
    fn garbage_and_unknown_schemas_are_errors_not_panics() {
        let (mut headers, body) = sample().encode();
        for cut in 0..body.len() {
            let _ = Envelope::decode(Some(&headers), &body[..cut]);
        }
        assert!(Envelope::decode(None, &body).is_err());
        headers.insert(HEADER_SCHEMA, "99");
        assert!(matches!(Envelope::decode(Some(&headers), &body), Err(DecodeError::UnknownSchema(_))));
    }

    /// Schema 1 bytes as written by rbee 0.1 (before `memory_required_bytes`): upcast on read.
    #[test]
    fn schema_1_model_registered_is_upcast_with_its_memory_estimate() {
        let fixture = include_bytes!("../tests/fixtures/schema1_model_registered.bin");
        let env = Envelope::decode_schema("1", fixture).expect("schema 1 fixture decodes");
        let Event::ModelRegistered(m) = env.event else { panic!("not a model registration: {:?}", env.event) };
        assert_eq!(m.size_bytes, 98_362_432);
        assert_eq!(m.memory_required_bytes, estimated_memory_bytes(98_362_432));
        assert_eq!(m.sha256, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
        // The same bytes are not valid today's schema: the version header is what makes them readable.
        assert!(
            Envelope::decode_schema("3", fixture).map(|e| e.event != Event::ModelRegistered(m.clone())).unwrap_or(true)
        );
    }

    /// Schema 1 bytes as written by rbee 0.1: they must decode forever.
    #[test]
    fn schema_1_fixture_still_decodes() {
        let fixture = include_bytes!("../tests/fixtures/schema1_worker_registered.bin");
        let env = Envelope::decode_schema("1", fixture).expect("schema 1 fixture decodes");
        assert_eq!(env.version, 1);
        assert_eq!(
            env.event,
            Event::WorkerRegistered(WorkerRegistered {
                worker: "w1".into(),
                node: "n1".into(),
                model: "SmolLM2-135M-Instruct".into(),
                slots: 1,
                pid: 4242,
                backend: "cpu".into(),
            })
        );
    }

    /// Schema 2 bytes (before a start command named its backend and device): upcast to cpu, any device.
    #[test]
    fn schema_2_start_command_is_upcast_to_the_cpu_backend() {
        let fixture = include_bytes!("../tests/fixtures/schema2_worker_start_requested.bin");
        let env = Envelope::decode_schema("2", fixture).expect("schema 2 fixture decodes");
        let Event::WorkerStartRequested(cmd) = env.event else { panic!("not a start command: {:?}", env.event) };
        assert_eq!((cmd.worker.as_str(), cmd.slots, cmd.backend.as_str(), cmd.device), ("w1", 2, "cpu", None));
        assert_eq!(cmd.sha256, Some("ab".repeat(32)));
    }
}
