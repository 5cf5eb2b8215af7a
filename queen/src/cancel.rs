//! Cancelling a request, whoever asks: a `DELETE`, or a client that went away while its request
//! ran or was being dispatched. The request aggregate's rules decide
//! ([`rbee_projections::aggregate::request`]): at most one `request.cancelled`, none after it ended.

use rbee_bus::{Code, EventLog, Meta};
use rbee_projections::aggregate::request::RequestCommand;
use rbee_projections::aggregate::{CommandError, on_request};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// This call recorded the cancellation.
    Now,
    /// The request had already finished or been cancelled: nothing to do.
    AlreadyEnded,
    /// No such request.
    Unknown,
}

/// Cancels `request`. `in_dispatch`: the caller holds its slot and is handing it to a worker, so
/// it exists even before any of its events does.
/// `by`: the API key asking (None: the queen itself, for a client that went away).
pub async fn cancel(
    log: &EventLog,
    request: &str,
    reason: &str,
    in_dispatch: bool,
    by: Option<String>,
    meta: &Meta,
) -> Result<Cancelled, CommandError> {
    let command = RequestCommand::Cancel { request: request.into(), reason: reason.into(), in_dispatch, by };
    match on_request(log, request, &command, meta).await {
        Ok(events) if events.is_empty() => Ok(Cancelled::AlreadyEnded),
        Ok(_) => Ok(Cancelled::Now),
        Err(CommandError::Rejected(Code::RequestNotFound)) => Ok(Cancelled::Unknown),
        // Others kept writing to the request: it is ending by their hand.
        Err(CommandError::Contended) => Ok(Cancelled::AlreadyEnded),
        Err(e) => Err(e),
    }
}
