//! Reading the log in order: from the start, from a sequence, or the last message per subject.

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::{Stream, StreamExt};

use crate::log::{EventLog, ReadError, Recorded, decode_message};

/// Where a reader starts.
#[derive(Debug, Clone, Copy)]
pub enum StartAt {
    /// The first event still in the stream.
    Start,
    /// The event with this stream sequence (or the next one).
    Seq(u64),
    /// The last event of every subject (heartbeats: current liveness).
    LastPerSubject,
}

/// One delivered event, with how many more the server had queued behind it when it was sent.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub recorded: Recorded,
    /// 0 means this reader had caught up with the stream when the event was sent.
    pub pending: u64,
}

/// Follows a stream in order, forever, through an ordered consumer (no server-side state kept).
/// Undecodable events are yielded as errors; the reader decides whether to skip them.
pub async fn follow(
    log: &EventLog,
    stream: &str,
    from: StartAt,
) -> Result<impl Stream<Item = Result<Delivered, ReadError>> + Send + 'static, ReadError> {
    let stream = log.stream(stream).await?;
    let deliver_policy = match from {
        StartAt::Start => DeliverPolicy::All,
        StartAt::Seq(seq) => DeliverPolicy::ByStartSequence { start_sequence: seq.max(1) },
        StartAt::LastPerSubject => DeliverPolicy::LastPerSubject,
    };
    // The server wants an explicit filter with "last per subject".
    let filter_subject = match from {
        StartAt::LastPerSubject => {
            stream.cached_info().config.subjects.first().map(String::as_str).unwrap_or(">").to_string()
        }
        _ => String::new(),
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig { deliver_policy, filter_subject, ..Default::default() })
        .await
        .map_err(|e| ReadError::Unavailable(format!("cannot create reader: {e}")))?;
    let messages = consumer.messages().await.map_err(|e| ReadError::Unavailable(e.to_string()))?;
    Ok(messages.map(|msg| {
        let msg = msg.map_err(|e| ReadError::Unavailable(e.to_string()))?;
        let pending = msg.info().map(|i| i.pending).unwrap_or(0);
        Ok(Delivered { recorded: decode_message(&msg)?, pending })
    }))
}

/// The last sequence currently in a stream (0 when it holds nothing).
pub async fn last_sequence(log: &EventLog, stream: &str) -> Result<u64, ReadError> {
    let mut stream = log.stream(stream).await?;
    let info = stream.info().await.map_err(|e| ReadError::Unavailable(e.to_string()))?;
    Ok(if info.state.messages == 0 { 0 } else { info.state.last_sequence })
}

/// Reads a stream from `from` up to the last event present when called, then stops.
/// Undecodable events are returned as errors in place, never dropped silently.
pub async fn read_to_end(
    log: &EventLog,
    stream: &str,
    from: StartAt,
) -> Result<Vec<Result<Recorded, ReadError>>, ReadError> {
    let mut out = Vec::new();
    each_to_end(log, stream, from, |item| {
        out.push(item);
        true
    })
    .await?;
    Ok(out)
}

/// Hands each event of a stream, from `from` up to the last one present when called, to `visit`
/// in order (an undecodable one as its error), without holding them all; `visit` returns false
/// to stop early.
pub async fn each_to_end(
    log: &EventLog,
    stream: &str,
    from: StartAt,
    mut visit: impl FnMut(Result<Recorded, ReadError>) -> bool,
) -> Result<(), ReadError> {
    let end = last_sequence(log, stream).await?;
    if end == 0 || matches!(from, StartAt::Seq(seq) if seq > end) {
        return Ok(());
    }
    let mut events = Box::pin(follow(log, stream, from).await?);
    while let Some(item) = events.next().await {
        match item {
            Ok(d) => {
                let (seq, done) = (d.recorded.stream_seq, d.pending == 0);
                if !visit(Ok(d.recorded)) || seq >= end || done {
                    break;
                }
            }
            Err(ReadError::Unavailable(e)) => return Err(ReadError::Unavailable(e)),
            Err(e @ ReadError::Undecodable { seq, pending, .. }) => {
                if !visit(Err(e)) || seq >= end || pending == 0 {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Every event of one subject (an aggregate), in order, as of now.
pub async fn read_subject(log: &EventLog, subject: &str) -> Result<Vec<Recorded>, ReadError> {
    let end = match log.last_position(subject).await {
        Ok(Some(p)) => p.seq,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err(ReadError::Unavailable(e.to_string())),
    };
    let stream = log.events_stream().await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| ReadError::Unavailable(format!("cannot create reader: {e}")))?;
    let mut messages = consumer.messages().await.map_err(|e| ReadError::Unavailable(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| ReadError::Unavailable(e.to_string()))?;
        let rec = decode_message(&msg)?;
        let seq = rec.stream_seq;
        out.push(rec);
        if seq >= end {
            break;
        }
    }
    Ok(out)
}

/// A message as stored: exact bytes and headers, for backups.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub seq: u64,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: bytes::Bytes,
}

/// Every message of a stream as stored, up to the last one present when called.
pub async fn raw_to_end(log: &EventLog, stream: &str) -> Result<Vec<RawEvent>, ReadError> {
    let end = last_sequence(log, stream).await?;
    let mut out = Vec::new();
    if end == 0 {
        return Ok(out);
    }
    let consumer = log
        .stream(stream)
        .await?
        .create_consumer(pull::OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() })
        .await
        .map_err(|e| ReadError::Unavailable(format!("cannot create reader: {e}")))?;
    let mut messages = consumer.messages().await.map_err(|e| ReadError::Unavailable(e.to_string()))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| ReadError::Unavailable(e.to_string()))?;
        let info = msg.info().map_err(|e| ReadError::Unavailable(e.to_string()))?;
        let seq = info.stream_sequence;
        out.push(RawEvent {
            seq,
            subject: msg.subject.to_string(),
            headers: crate::log::header_pairs(msg.headers.as_ref()),
            payload: msg.payload.clone(),
        });
        if seq >= end {
            break;
        }
    }
    Ok(out)
}
