//! Health that tells the truth. `/livez`: the process answers. `/readyz`: 503 unless NATS is
//! connected, JetStream answers, the view has caught up with the log and a worker is ready; a
//! load balancer sends requests only to a ready queen. The archive is not part of it: serving
//! needs only the log, and with Postgres away every queen would otherwise be taken out at once.
//! `/health`: each dependency's state and the archive's lag; 503 when a dependency the queen needs
//! (NATS, JetStream) is down or the archiver cannot store.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rbee_bus::archive::ArchiveStatus;
use rbee_bus::{WorkerState, read, subjects};
use serde_json::{Value, json};

use crate::AppState;

/// How long a probe waits for JetStream.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the queen sees of its dependencies right now.
struct Probe {
    nats_connected: bool,
    /// The last sequence of the event stream, or why JetStream did not say.
    log_seq: Result<u64, String>,
    view_seq: u64,
    ready_workers: usize,
    archive: Option<ArchiveStatus>,
}

impl Probe {
    async fn take(state: &AppState) -> Probe {
        let nats_connected = state.log.is_connected();
        let log_seq =
            match tokio::time::timeout(PROBE_TIMEOUT, read::last_sequence(&state.log, subjects::EVENTS_STREAM)).await {
                Ok(Ok(seq)) => Ok(seq),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer in {}s", PROBE_TIMEOUT.as_secs())),
            };
        let (view_seq, ready_workers) = state
            .view
            .read(|v| (v.last_seq, v.registry.workers.values().filter(|w| w.state == WorkerState::Ready).count()));
        let archive = state.archive.as_ref().map(|status| status.borrow().clone());
        Probe { nats_connected, log_seq, view_seq, ready_workers, archive }
    }

    /// Events the view has not folded yet (0 when the log could not be asked).
    fn view_behind(&self) -> u64 {
        self.log_seq.as_ref().map_or(0, |end| end.saturating_sub(self.view_seq))
    }

    /// Why the queen cannot serve, if it cannot.
    fn cannot_serve(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.nats_connected {
            why.push("NATS is not connected".to_string());
        }
        if let Err(e) = &self.log_seq {
            why.push(format!("JetStream does not answer: {e}"));
        }
        why
    }

    /// Why the queen is not whole: it cannot serve, or it cannot archive.
    fn degraded(&self) -> Vec<String> {
        let mut why = self.cannot_serve();
        if let Some(a) = self.archive.as_ref().filter(|a| a.state == "retrying") {
            why.push(format!("the archiver cannot store: {}", a.last_error.as_deref().unwrap_or("unknown")));
        }
        why
    }
}

/// The archive's position and lag, as `/health` shows it.
fn archive_json(archive: &ArchiveStatus, log_seq: u64) -> Value {
    let lag_events = if archive.state == "archiving" || archive.state == "retrying" {
        log_seq.saturating_sub(archive.archived_seq)
    } else {
        0
    };
    let lag_seconds = if lag_events == 0 || archive.caught_up_at_ms == 0 {
        0.0
    } else {
        rbee_bus::envelope::now_ms().saturating_sub(archive.caught_up_at_ms) as f64 / 1000.0
    };
    json!({
        "state": archive.state,
        "archived_seq": archive.archived_seq,
        "lag_events": lag_events,
        "lag_seconds": lag_seconds,
        "retries": archive.retries,
        "flagged": archive.flagged,
        "last_error": archive.last_error,
    })
}

/// `GET /livez`: the process is up.
pub async fn livez() -> Json<Value> {
    Json(json!({"status": "live"}))
}

/// `GET /readyz`: whether this queen can serve a request now.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let probe = Probe::take(&state).await;
    let mut why = probe.cannot_serve();
    if probe.view_behind() > 0 {
        // The view may be a fold behind by the time the probe reads it: give it a moment.
        let end = probe.log_seq.as_ref().copied().unwrap_or(0);
        if !state.view.wait_for_seq(end, PROBE_TIMEOUT).await {
            why.push(format!("the view is {} events behind the log", probe.view_behind()));
        }
    }
    if probe.ready_workers == 0 {
        why.push("no worker is ready".into());
    }
    if why.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reasons": why})))
    }
}

/// `GET /health`: every dependency's state.
pub async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let probe = Probe::take(&state).await;
    let why = probe.degraded();
    let log_seq = probe.log_seq.as_ref().ok().copied();
    let digest = state.view.read(|v| v.digest());
    let body = json!({
        "status": if why.is_empty() { "ok" } else { "degraded" },
        "reasons": why,
        "nats": if probe.nats_connected { "connected" } else { "disconnected" },
        "jetstream": match &probe.log_seq { Ok(_) => "ok".to_string(), Err(e) => e.clone() },
        "last_seq": probe.view_seq,
        "log_seq": log_seq,
        "ready_workers": probe.ready_workers,
        "archive": probe.archive.as_ref().map(|a| archive_json(a, log_seq.unwrap_or(probe.view_seq))),
        "digest": digest,
        "recovery": state.recovery,
    });
    let status = if why.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}
