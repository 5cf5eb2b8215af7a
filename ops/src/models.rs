//! `rbee models`: the model catalog, folded from the log right now.

use std::time::Duration;

use rbee_bus::EventLog;
use rbee_projections::LiveView;
use tokio_util::sync::CancellationToken;

use crate::error::{CliError, CliResult};

pub async fn models(nats_url: &str, node: Option<&str>, json: bool) -> CliResult<()> {
    let unavailable = |e: String| CliError::new("EVENT_LOG_UNAVAILABLE", format!("{e}; is the cluster up (rbee up)?"));
    let log = EventLog::connect(nats_url).await.map_err(|e| unavailable(e.to_string()))?;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let view = LiveView::start(&log, stop).await.map_err(|e| unavailable(e.to_string()))?;
    view.catch_up(&log, Duration::from_secs(30)).await.map_err(|e| unavailable(e.to_string()))?;
    let entries: Vec<_> = view.read(|v| v.catalog.page(node, None, usize::MAX).into_iter().cloned().collect());
    if json {
        println!("{}", serde_json::to_string_pretty(&entries).expect("plain data serializes"));
        return Ok(());
    }
    println!("{:<32} {:<16} {:>10} {:>10}  PATH", "MODEL", "NODE", "SIZE MB", "NEEDS MB");
    for e in &entries {
        let mb = |b: u64| format!("{:.1}", b as f64 / 1_048_576.0);
        println!("{:<32} {:<16} {:>10} {:>10}  {}", e.model, e.node, mb(e.size_bytes), mb(e.memory_required_bytes), e.path);
    }
    if entries.is_empty() {
        println!("(no models)");
    }
    Ok(())
}
