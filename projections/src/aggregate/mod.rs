//! Every aggregate's rules, each a pure `decide(state, command) -> Result<Vec<Event>, Code>` beside
//! the fold that gives its state, and the two ways a process runs a command: against the live view
//! ([`on_worker`]: a worker's history is long, the view already holds its state and position) or
//! against the aggregate's own events ([`on_request`], [`on_model`]: a handful each). Either way the
//! events are appended at the aggregate's position, so of two racing writers the log takes one; the
//! other reads again and decides again, a bounded number of times.

pub mod download;
pub mod model;
pub mod node;
pub mod request;
pub mod worker;

use std::time::Duration;

use rbee_bus::read::read_subject;
use rbee_bus::{AggregateKind, AppendError, Code, Event, EventLog, Expected, Meta, Position, subjects};

use crate::LiveView;

/// `events` as the log would hold them, at sequences 1, 2, ...: the "given" of the rules' tests.
#[cfg(test)]
pub(crate) fn recorded(events: Vec<Event>) -> Vec<rbee_bus::Recorded> {
    (1..)
        .zip(events)
        .map(|(seq, event)| rbee_bus::Recorded {
            stream_seq: seq,
            subject: subjects::for_event(&event),
            envelope: rbee_bus::Envelope::new(event, seq, &Meta::default()),
        })
        .collect()
}

/// How many times a command is decided again after losing a race.
const ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The rules refuse the command: the caller's to fix (4xx, exit 1).
    #[error("refused with {0}")]
    Rejected(Code),
    /// The log could not be read or written: try again later.
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    /// Other writers kept changing the aggregate first.
    #[error("the aggregate kept changing under the command")]
    Contended,
}

fn unavailable(e: impl std::fmt::Display) -> CommandError {
    CommandError::Unavailable(e.to_string())
}

/// Appends `events` in order, the first at `expected`.
async fn append_all(log: &EventLog, events: &[Event], expected: Expected, meta: &Meta) -> Result<(), AppendError> {
    let mut expected = expected;
    for event in events {
        expected = Expected::At(log.append(event.clone(), expected, meta).await?);
    }
    Ok(())
}

/// Runs `command` on worker `id` as the view sees it; returns what was recorded (nothing when the
/// worker already is as asked). A lost race waits for the view to see the winner, then decides again.
pub async fn on_worker(
    log: &EventLog,
    view: &LiveView,
    id: &str,
    command: &worker::WorkerCommand,
    meta: &Meta,
) -> Result<Vec<Event>, CommandError> {
    for _ in 0..ATTEMPTS {
        let (decided, at) = view.read(|v| {
            let w = v.registry.workers.get(id);
            (worker::decide(w, command), w.map(|w| (w.position, subjects::worker(&w.node, id))))
        });
        let events = decided.map_err(CommandError::Rejected)?;
        let Some((position, subject)) = at.filter(|_| !events.is_empty()) else { return Ok(events) };
        match append_all(log, &events, Expected::At(position), meta).await {
            Ok(()) => return Ok(events),
            Err(AppendError::Conflict { .. }) => {
                let latest = log.last_position(&subject).await.map_err(unavailable)?;
                view.wait_for_seq(latest.map_or(0, |p| p.seq), Duration::from_secs(2)).await;
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(CommandError::Contended)
}

/// Runs `command` on request `id`, folded from its own events; returns what was recorded.
pub async fn on_request(
    log: &EventLog,
    id: &str,
    command: &request::RequestCommand,
    meta: &Meta,
) -> Result<Vec<Event>, CommandError> {
    let subject = subjects::aggregate(AggregateKind::Request, id);
    on_subject(log, &subject, request::apply, |state| request::decide(state, command), meta).await
}

/// Runs `command` on model `id` of `node`, folded from its own events; returns what was recorded.
pub async fn on_model(
    log: &EventLog,
    node: &str,
    id: &str,
    command: &model::ModelCommand,
    meta: &Meta,
) -> Result<Vec<Event>, CommandError> {
    let subject = subjects::model(node, id);
    on_subject(log, &subject, model::apply, |state| model::decide(state, command), meta).await
}

/// Runs a command on the aggregate whose events are on `subject`: folds them with `apply`, asks
/// `decide`, appends after the last one; a lost race reads again.
async fn on_subject<S: Default>(
    log: &EventLog,
    subject: &str,
    apply: fn(&mut S, &Event),
    decide: impl Fn(&S) -> Result<Vec<Event>, Code>,
    meta: &Meta,
) -> Result<Vec<Event>, CommandError> {
    for _ in 0..ATTEMPTS {
        let history = read_subject(log, subject).await.map_err(unavailable)?;
        let mut state = S::default();
        history.iter().for_each(|rec| apply(&mut state, &rec.envelope.event));
        let events = decide(&state).map_err(CommandError::Rejected)?;
        if events.is_empty() {
            return Ok(events);
        }
        let expected = history.last().map_or(Expected::NoStream, |last| {
            Expected::At(Position { seq: last.stream_seq, version: last.envelope.version })
        });
        match append_all(log, &events, expected, meta).await {
            Ok(()) => return Ok(events),
            Err(AppendError::Conflict { .. }) => continue,
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(CommandError::Contended)
}
