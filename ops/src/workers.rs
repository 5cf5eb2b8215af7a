//! `rbee workers`: the worker registry, folded from the log right now.

use std::time::Duration;

use rbee_bus::EventLog;
use rbee_projections::LiveView;
use tokio_util::sync::CancellationToken;

use crate::error::{CliError, CliResult};

/// Which workers to show; every filter given must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerFilter {
    /// Only workers serving this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only workers in this state (loading, ready, draining, stale).
    #[arg(long)]
    pub state: Option<String>,
    /// Only workers on this node.
    #[arg(long)]
    pub node: Option<String>,
}

impl WorkerFilter {
    fn matches(&self, w: &rbee_projections::Worker) -> bool {
        self.model.as_deref().is_none_or(|m| w.model == m)
            && self.state.as_deref().is_none_or(|s| w.state.as_str() == s)
            && self.node.as_deref().is_none_or(|n| w.node == n)
    }
}

pub async fn workers(nats_url: &str, filter: &WorkerFilter, json: bool) -> CliResult<()> {
    if let Some(state) = filter.state.as_deref().filter(|s| !["loading", "ready", "draining", "stale"].contains(s)) {
        let shown: String = state.chars().take(40).flat_map(char::escape_default).collect();
        return Err(CliError::new("INVALID_FILTER", format!("--state must be loading, ready, draining or stale, got \"{shown}\"")));
    }
    let unavailable = |e: String| CliError::new("EVENT_LOG_UNAVAILABLE", format!("{e}; is the cluster up (rbee up)?"));
    let log = EventLog::connect(nats_url).await.map_err(|e| unavailable(e.to_string()))?;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let view = LiveView::start(&log, stop).await.map_err(|e| unavailable(e.to_string()))?;
    view.catch_up(&log, Duration::from_secs(30)).await.map_err(|e| unavailable(e.to_string()))?;
    let workers: Vec<_> = view.read(|v| v.registry.workers.values().filter(|w| filter.matches(w)).cloned().collect());
    if json {
        println!("{}", serde_json::to_string_pretty(&workers).expect("plain data serializes"));
        return Ok(());
    }
    let now = rbee_bus::envelope::now_ms();
    println!("{:<32} {:<16} {:<24} {:<9} {:>5} {:>7} {:>9}", "WORKER", "NODE", "MODEL", "STATE", "BUSY", "CONTEXT", "HEARTBEAT");
    for w in &workers {
        let heartbeat = w.last_heartbeat_ms.map(|hb| format!("{:.1}s ago", now.saturating_sub(hb) as f64 / 1000.0)).unwrap_or_else(|| "-".into());
        println!(
            "{:<32} {:<16} {:<24} {:<9} {:>5} {:>7} {:>9}",
            w.id, w.node, w.model, w.state.as_str(), format!("{}/{}", w.busy.len(), w.slots), w.context_length, heartbeat
        );
    }
    if workers.is_empty() {
        println!("(no workers)");
    }
    Ok(())
}
