//! The envelope around every event, and its wire form: a postcard body plus readable headers.
//!
//! Headers say what a human needs without decoding: `Rbee-Event` (type), `Rbee-Schema` (body
//! version), `Nats-Msg-Id` (event id, JetStream dedup), `traceparent` (W3C trace context).
//! Decoding dispatches on `Rbee-Schema`, so an old body is upcast to today's types on read
//! (the frozen schemas and their upcasts are in [`crate::schema`]).

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Event;
use crate::schema::{Framed, v1, v2, v3, v4, v5};

/// The body schema written today.
pub const SCHEMA_VERSION: u16 = 6;

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

    /// Reads a body written with the given schema version, upcasting it step by step.
    pub fn decode_schema(schema: &str, body: &[u8]) -> Result<Self, DecodeError> {
        match schema {
            "1" => Ok(upcast(postcard::from_bytes::<Framed<v1::Event>>(body)?, |e| {
                v5::Event::from(v4::Event::from(v3::Event::from(v2::Event::from(e))))
            })),
            "2" => Ok(upcast(postcard::from_bytes::<Framed<v2::Event>>(body)?, |e| {
                v5::Event::from(v4::Event::from(v3::Event::from(e)))
            })),
            "3" => {
                Ok(upcast(postcard::from_bytes::<Framed<v3::Event>>(body)?, |e| v5::Event::from(v4::Event::from(e))))
            }
            "4" => Ok(upcast(postcard::from_bytes::<Framed<v4::Event>>(body)?, v5::Event::from)),
            "5" => Ok(upcast(postcard::from_bytes::<Framed<v5::Event>>(body)?, |e| e)),
            "6" => Ok(postcard::from_bytes(body)?),
            other => Err(DecodeError::UnknownSchema(other.chars().take(16).collect())),
        }
    }
}

/// An old frame with its event brought to schema 5, then to today's.
fn upcast<E>(old: Framed<E>, to_v5: impl FnOnce(E) -> v5::Event) -> Envelope {
    Envelope {
        id: old.id,
        version: old.version,
        at_ms: old.at_ms,
        correlation: old.correlation,
        traceparent: old.traceparent,
        event: to_v5(old.event).into(),
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
            Event::SlotClaimed(SlotClaimed { worker: "w1".into(), node: "n1".into(), slot: 0, request: "r1".into() }),
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
}
