//! The CLI's window on a running cluster: a connection to its log and a view folded up to now,
//! following new events until dropped.

use rbee_bus::NatsAccess;
use std::time::Duration;

use rbee_bus::Code;
use rbee_bus::{AppendError, EventLog};
use rbee_projections::LiveView;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::CliError;

pub struct Connected {
    pub log: EventLog,
    pub view: LiveView,
    _stop: DropGuard,
}

impl Connected {
    /// Waits until the view holds everything the log holds now.
    pub async fn catch_up(&self) -> Result<(), CliError> {
        self.view.catch_up(&self.log, Duration::from_secs(30)).await.map_err(unavailable)
    }
}

/// The error for a cluster that cannot be reached.
pub fn unavailable(e: impl std::fmt::Display) -> CliError {
    CliError::new(Code::EventLogUnavailable, format!("{e}; is the cluster up (rbee up)?"))
}

/// Connects to the log; a refused identity is NATS_AUTH_FAILED, anything else unavailable.
pub async fn connect_log(nats: &NatsAccess) -> Result<EventLog, CliError> {
    EventLog::connect(nats).await.map_err(|e| match e {
        AppendError::Unauthorized(why) => CliError::new(Code::NatsAuthFailed, why),
        other => unavailable(other),
    })
}

/// Connects to the cluster's log and folds it up to now.
pub async fn connect(nats: &NatsAccess) -> Result<Connected, CliError> {
    let log = connect_log(nats).await?;
    let stop = CancellationToken::new();
    let view = LiveView::start(&log, stop.clone()).await.map_err(unavailable)?;
    let connected = Connected { log, view, _stop: stop.drop_guard() };
    connected.catch_up().await?;
    Ok(connected)
}
