//! The status endpoints of a process other than the queen (the hive, a worker), on a port of its
//! own: `/livez` (the process answers), `/readyz` (503 unless NATS is connected and JetStream
//! answers), `/health` (each dependency's state) and `/metrics` (Prometheus' text format: the
//! connection, and what the process measures of itself). Off unless an address is given.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use rbee_bus::{EventLog, read, subjects};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How long a probe waits for JetStream.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One gauge sample of a process's own measures.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// What a process measures of itself, sampled on every `/metrics`.
pub type Measures = Arc<dyn Fn() -> Vec<Gauge> + Send + Sync>;

/// A process's status: its name (`hive`, `worker`), its connection to the log, its measures.
#[derive(Clone)]
pub struct Status {
    process: &'static str,
    log: EventLog,
    measures: Measures,
}

/// What the process sees of NATS right now: connected, and the log's last sequence or why not.
struct Probe {
    connected: bool,
    log_seq: Result<u64, String>,
}

impl Probe {
    async fn take(log: &EventLog) -> Probe {
        let connected = log.is_connected();
        let log_seq = match tokio::time::timeout(PROBE_TIMEOUT, read::last_sequence(log, subjects::EVENTS_STREAM)).await
        {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer in {}s", PROBE_TIMEOUT.as_secs())),
        };
        Probe { connected, log_seq }
    }

    fn reasons(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.connected {
            why.push("NATS is not connected".to_string());
        }
        if let Err(e) = &self.log_seq {
            why.push(format!("JetStream does not answer: {e}"));
        }
        why
    }
}

impl Status {
    pub fn new(process: &'static str, log: EventLog, measures: Measures) -> Status {
        Status { process, log, measures }
    }

    /// Binds `addr` (an error now if it cannot) and serves until `shutdown`; returns the bound address.
    pub async fn serve(self, addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self));
        tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the status endpoints stopped");
            }
        });
        tracing::info!(%bound, "status endpoints: /livez /readyz /health /metrics");
        Ok(bound)
    }

    /// The text exposition: the NATS connection, then the process's own gauges.
    fn render(&self) -> String {
        let mut gauges = vec![Gauge {
            name: "rbee_nats_connected",
            help: "1 while this process is connected to NATS.",
            labels: vec![("process", self.process.to_string())],
            value: if self.log.is_connected() { 1.0 } else { 0.0 },
        }];
        gauges.extend((self.measures)());
        render(&gauges)
    }
}

/// Prometheus' text format: one HELP and TYPE per name, then its samples.
fn render(gauges: &[Gauge]) -> String {
    let mut out = String::new();
    let mut described = std::collections::BTreeSet::new();
    for gauge in gauges {
        if described.insert(gauge.name) {
            out.push_str(&format!("# HELP {} {}\n# TYPE {} gauge\n", gauge.name, gauge.help, gauge.name));
        }
        let labels: Vec<String> = gauge
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        out.push_str(&format!("{}{labels} {}\n", gauge.name, gauge.value));
    }
    out
}

async fn livez(State(status): State<Arc<Status>>) -> Json<Value> {
    Json(json!({"status": "live", "process": status.process}))
}

async fn readyz(State(status): State<Arc<Status>>) -> (StatusCode, Json<Value>) {
    let why = Probe::take(&status.log).await.reasons();
    if why.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready", "process": status.process})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "process": status.process, "reasons": why})),
        )
    }
}

async fn health(State(status): State<Arc<Status>>) -> (StatusCode, Json<Value>) {
    let probe = Probe::take(&status.log).await;
    let why = probe.reasons();
    let measures: Vec<Value> = (status.measures)()
        .into_iter()
        .map(|g| {
            let labels: serde_json::Map<String, Value> =
                g.labels.into_iter().map(|(k, v)| (k.to_string(), Value::String(v))).collect();
            json!({"name": g.name, "labels": labels, "value": g.value})
        })
        .collect();
    let body = json!({
        "status": if why.is_empty() { "ok" } else { "degraded" },
        "process": status.process,
        "reasons": why,
        "nats": if probe.connected { "connected" } else { "disconnected" },
        "jetstream": match &probe.log_seq { Ok(_) => "ok".to_string(), Err(e) => e.clone() },
        "log_seq": probe.log_seq.ok(),
        "measures": measures,
    });
    let code = if why.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

async fn metrics(State(status): State<Arc<Status>>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], status.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_describes_each_name_once_and_escapes_labels() {
        let gauge = |owner: &str, value| Gauge {
            name: "rbee_hive_outbox_events",
            help: "Events waiting.",
            labels: vec![("owner", owner.to_string())],
            value,
        };
        let text = render(&[gauge("hive", 0.0), gauge("w\"1", 3.0)]);
        assert_eq!(
            text,
            "# HELP rbee_hive_outbox_events Events waiting.\n# TYPE rbee_hive_outbox_events gauge\n\
             rbee_hive_outbox_events{owner=\"hive\"} 0\nrbee_hive_outbox_events{owner=\"w\\\"1\"} 3\n"
        );
    }
}
