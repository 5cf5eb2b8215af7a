//! Cancelling a request: at most one `request.cancelled` per request, and none after it ended.
//! Both the HTTP `DELETE` and a client disconnect come here; the log decides between them.

use rbee_bus::read::read_subject;
use rbee_bus::{AggregateKind, AppendError, Event, EventLog, Expected, Meta, Position, RequestCancelled, subjects};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// This call recorded the cancellation.
    Now,
    /// The request had already finished or been cancelled: nothing to do.
    AlreadyEnded,
    /// No such request.
    Unknown,
}

const ATTEMPTS: usize = 8;

pub async fn cancel(log: &EventLog, request: &str, reason: &str, meta: &Meta) -> Result<Cancelled, AppendError> {
    let subject = subjects::aggregate(AggregateKind::Request, request);
    for _ in 0..ATTEMPTS {
        let history = read_subject(log, &subject).await.map_err(|e| AppendError::Unavailable(e.to_string()))?;
        let Some(last) = history.last() else { return Ok(Cancelled::Unknown) };
        if history.iter().any(|r| matches!(r.envelope.event, Event::RequestFinished(_) | Event::RequestCancelled(_))) {
            return Ok(Cancelled::AlreadyEnded);
        }
        let at = Position { seq: last.stream_seq, version: last.envelope.version };
        let event = Event::RequestCancelled(RequestCancelled { request: request.into(), reason: reason.into() });
        match log.append(event, Expected::At(at), meta).await {
            Ok(_) => return Ok(Cancelled::Now),
            // Something happened to the request meanwhile (it finished, or another cancel): look again.
            Err(AppendError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Cancelled::AlreadyEnded)
}
