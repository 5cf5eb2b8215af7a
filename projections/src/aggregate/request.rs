//! The request aggregate's rules: a request is accepted once, then ends once, by finishing or by
//! at most one cancellation. Its state is folded from its own few events ([`apply`]); [`decide`]
//! is the one place that says whether a cancellation is recorded, whoever asks (a `DELETE`, a
//! client that went away while its request ran, or while it was being dispatched).

use rbee_bus::{Code, Event, RequestCancelled};

/// Where a request stands, as its own events say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// No event yet: unknown, or still being dispatched.
    #[default]
    Unrecorded,
    /// Accepted by a worker and not ended.
    Running,
    /// Finished or cancelled.
    Ended,
}

/// A request's stage, the API key that made it (it belongs to that key) and the worker that took it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestState {
    pub stage: Stage,
    pub key: Option<String>,
    pub worker: Option<String>,
}

pub fn apply(state: &mut RequestState, event: &Event) {
    match event {
        Event::RequestAccepted(e) if state.stage == Stage::Unrecorded => {
            state.stage = Stage::Running;
            state.key = e.key.clone();
            state.worker = Some(e.worker.clone());
        }
        // Its stream moved to another worker (the first was lost, or gave it up, which it may
        // have recorded as an end already): that one runs it now, and only its end counts.
        Event::RequestAccepted(e) if state.worker.as_ref().is_some_and(|w| *w != e.worker) => {
            state.stage = Stage::Running;
            state.worker = Some(e.worker.clone());
        }
        // Only the worker that took the request finishes it (any worker may write its subject).
        Event::RequestFinished(e) if state.worker.as_ref().is_some_and(|w| *w != e.worker) => {}
        Event::RequestFinished(_) | Event::RequestCancelled(_) => state.stage = Stage::Ended,
        _ => {}
    }
}

/// What someone asks of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestCommand {
    /// Stop it. `in_dispatch`: the asker holds the request's slot and is handing it to a worker,
    /// so a request with no event yet exists all the same (the worker may already have it).
    /// `by`: the API key asking; a request of another key is not found (its existence is not
    /// revealed). None: the cluster itself asks (the client went away, or a queen without keys).
    Cancel { request: String, reason: String, in_dispatch: bool, by: Option<String> },
}

/// The events `command` records, or why it is refused. An empty list: it already ended.
pub fn decide(state: &RequestState, command: &RequestCommand) -> Result<Vec<Event>, Code> {
    let RequestCommand::Cancel { request, reason, in_dispatch, by } = command;
    let cancelled =
        || vec![Event::RequestCancelled(RequestCancelled { request: request.clone(), reason: reason.clone() })];
    if by.is_some() && state.stage != Stage::Unrecorded && state.key != *by {
        return Err(Code::RequestNotFound);
    }
    match state.stage {
        Stage::Unrecorded if *in_dispatch => Ok(cancelled()),
        Stage::Unrecorded => Err(Code::RequestNotFound),
        Stage::Running => Ok(cancelled()),
        Stage::Ended => Ok(vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::*;

    fn given(events: &[Event]) -> RequestState {
        let mut state = RequestState::default();
        events.iter().for_each(|e| apply(&mut state, e));
        state
    }

    fn accepted() -> Event {
        Event::RequestAccepted(RequestAccepted {
            request: "r1".into(),
            model: "m".into(),
            worker: "w1".into(),
            slot: 0,
            max_tokens: None,
            stream: true,
            key: Some("k-1".into()),
        })
    }

    fn finished() -> Event {
        Event::RequestFinished(RequestFinished {
            request: "r1".into(),
            worker: "w1".into(),
            finish_reason: FinishReason::Stop,
            prompt_tokens: 3,
            completion_tokens: 4,
            time_to_first_token_ms: 1,
            duration_ms: 2,
            error_code: None,
        })
    }

    fn cancel(in_dispatch: bool) -> RequestCommand {
        RequestCommand::Cancel { request: "r1".into(), reason: "deleted".into(), in_dispatch, by: None }
    }

    fn cancel_by(key: &str) -> RequestCommand {
        RequestCommand::Cancel {
            request: "r1".into(),
            reason: "deleted".into(),
            in_dispatch: false,
            by: Some(key.into()),
        }
    }

    fn cancelled() -> Event {
        Event::RequestCancelled(RequestCancelled { request: "r1".into(), reason: "deleted".into() })
    }

    #[test]
    fn a_running_request_is_cancelled_once() {
        assert_eq!(decide(&given(&[accepted()]), &cancel(false)), Ok(vec![cancelled()]));
        assert_eq!(decide(&given(&[accepted(), cancelled()]), &cancel(false)), Ok(vec![]));
    }

    #[test]
    fn a_finished_request_is_not_cancelled() {
        assert_eq!(decide(&given(&[accepted(), finished()]), &cancel(false)), Ok(vec![]));
        assert_eq!(decide(&given(&[accepted(), finished()]), &cancel(true)), Ok(vec![]));
    }

    #[test]
    fn a_finish_written_by_another_worker_does_not_end_the_request() {
        let forged = match finished() {
            Event::RequestFinished(f) => Event::RequestFinished(RequestFinished { worker: "w2".into(), ..f }),
            _ => unreachable!(),
        };
        assert_eq!(decide(&given(&[accepted(), forged]), &cancel(false)), Ok(vec![cancelled()]));
    }

    fn moved_to(worker: &str) -> Event {
        match accepted() {
            Event::RequestAccepted(a) => Event::RequestAccepted(RequestAccepted { worker: worker.into(), ..a }),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_moved_request_runs_on_its_new_worker_whose_end_alone_ends_it() {
        // Moved after the first worker recorded giving it up: running again.
        let gave_up = given(&[accepted(), finished(), moved_to("w2")]);
        assert_eq!((gave_up.stage, gave_up.worker.as_deref()), (Stage::Running, Some("w2")));
        // The first worker's late end does not end it; the new worker's does.
        let late = given(&[accepted(), moved_to("w2"), finished()]);
        assert_eq!(late.stage, Stage::Running);
        let by_w2 = match finished() {
            Event::RequestFinished(f) => Event::RequestFinished(RequestFinished { worker: "w2".into(), ..f }),
            _ => unreachable!(),
        };
        assert_eq!(given(&[accepted(), moved_to("w2"), finished(), by_w2]).stage, Stage::Ended);
        // A repeated acceptance by the same worker changes nothing.
        assert_eq!(given(&[accepted(), finished(), accepted()]).stage, Stage::Ended);
    }

    #[test]
    fn only_the_key_that_made_a_request_cancels_it() {
        assert_eq!(decide(&given(&[accepted()]), &cancel_by("k-1")), Ok(vec![cancelled()]));
        assert_eq!(decide(&given(&[accepted()]), &cancel_by("k-2")), Err(Code::RequestNotFound));
        assert_eq!(decide(&given(&[accepted(), finished()]), &cancel_by("k-2")), Err(Code::RequestNotFound));
    }

    #[test]
    fn an_unrecorded_request_is_unknown_unless_its_dispatcher_cancels_it() {
        assert_eq!(decide(&given(&[]), &cancel(false)), Err(Code::RequestNotFound));
        assert_eq!(decide(&given(&[]), &cancel(true)), Ok(vec![cancelled()]));
    }
}
