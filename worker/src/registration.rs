//! Whether a worker id may register now: when it never did, or when its previous incarnation is
//! over (stopped, exited or removed). The answer is an expectation for an optimistic append, so two
//! processes registering the same id at once still get one winner from the log.

use rbee_bus::{AppendError, Event, EventLog, Expected, Meta, Position, Recorded, WorkerRegistered, WorkerState};

/// What an attempt at registering found.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Registered,
    /// An incarnation of this id is registered (this process's own, or another's).
    AlreadyRegistered,
    /// The aggregate moved between the read and the append: reading again may tell.
    Moved,
}

/// Registers `registered` unless an incarnation of its id still is: reads the worker's aggregate,
/// then appends at the position read.
pub async fn register(log: &EventLog, registered: &WorkerRegistered, meta: &Meta) -> Result<Outcome, AppendError> {
    let subject = rbee_bus::subjects::worker(&registered.node, &registered.worker);
    let history =
        rbee_bus::read::read_subject(log, &subject).await.map_err(|e| AppendError::Unavailable(e.to_string()))?;
    let Some(expected) = expectation(&history) else { return Ok(Outcome::AlreadyRegistered) };
    match log.append(Event::WorkerRegistered(registered.clone()), expected, meta).await {
        Ok(_) => Ok(Outcome::Registered),
        Err(AppendError::Conflict { .. }) => Ok(Outcome::Moved),
        Err(e) => Err(e),
    }
}

/// `None` when an incarnation of this worker id is still registered.
pub fn expectation(history: &[Recorded]) -> Option<Expected> {
    let mut registered = false;
    for rec in history {
        match &rec.envelope.event {
            Event::WorkerRegistered(_) => registered = true,
            Event::WorkerExited(_) | Event::WorkerRemoved(_) => registered = false,
            Event::WorkerStateChanged(s) if s.state == WorkerState::Stopped => registered = false,
            _ => {}
        }
    }
    match history.last() {
        _ if registered => None,
        None => Some(Expected::NoStream),
        Some(last) => Some(Expected::At(Position { seq: last.stream_seq, version: last.envelope.version })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::*;

    fn history(events: Vec<Event>) -> Vec<Recorded> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| Recorded {
                stream_seq: 10 + i as u64,
                subject: subjects::for_event(&e),
                envelope: Envelope::new(e, i as u64 + 1, &Meta::default()),
            })
            .collect()
    }

    fn registered() -> Event {
        Event::WorkerRegistered(WorkerRegistered {
            worker: "w".into(),
            node: "n".into(),
            model: "m".into(),
            slots: 1,
            pid: 1,
            backend: "cpu".into(),
        })
    }

    #[test]
    fn a_new_id_registers_on_an_empty_aggregate() {
        assert_eq!(expectation(&[]), Some(Expected::NoStream));
    }

    #[test]
    fn a_live_registration_blocks_another() {
        let ready = Event::WorkerStateChanged(WorkerStateChanged {
            worker: "w".into(),
            node: "n".into(),
            state: WorkerState::Ready,
            context_length: 1,
        });
        assert_eq!(expectation(&history(vec![registered(), ready])), None);
    }

    #[test]
    fn after_the_previous_incarnation_ended_the_id_registers_after_its_last_event() {
        for end in [
            Event::WorkerStateChanged(WorkerStateChanged {
                worker: "w".into(),
                node: "n".into(),
                state: WorkerState::Stopped,
                context_length: 0,
            }),
            Event::WorkerExited(WorkerExited {
                worker: "w".into(),
                node: "n".into(),
                exit_code: Some(0),
                signal: None,
            }),
            Event::WorkerRemoved(WorkerRemoved { worker: "w".into(), node: "n".into(), reason: "no heartbeat".into() }),
        ] {
            assert_eq!(
                expectation(&history(vec![registered(), end])),
                Some(Expected::At(Position { seq: 11, version: 2 }))
            );
        }
    }
}
