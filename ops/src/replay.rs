//! `rbee replay`: the registry and catalog as they were at a point of the log, folded as a queen
//! folds them (the Postgres archive for what JetStream no longer holds), so the two agree.

use rbee_bus::{Code, EventLog};
use rbee_projections::ClusterView;
use rbee_projections::history;
use serde_json::{Value, json};

use crate::error::{CliError, CliResult};
use crate::live::unavailable;

pub async fn replay(nats_url: &str, database_url: Option<&str>, at: Option<&str>, digest: bool) -> CliResult<()> {
    let until = crate::log_point::parse(at)?;
    let log = EventLog::connect(nats_url).await.map_err(unavailable)?;
    let pool = match database_url {
        Some(url) => Some(
            rbee_bus::archive::connect_store(url)
                .await
                .map_err(|e| CliError::new(Code::EventStoreUnavailable, e.to_string()))?,
        ),
        None => None,
    };
    let folded =
        history::replay_to(&log, pool.as_ref(), until).await.map_err(|e| CliError::new(e.code(), e.to_string()))?;
    if folded.skipped > 0 {
        eprintln!("warning: {} event(s) could not be decoded and were skipped", folded.skipped);
    }
    if digest {
        println!("{}", folded.view.digest());
    } else {
        println!("{}", serde_json::to_string_pretty(&view_json(&folded.view)).expect("plain data serializes"));
    }
    Ok(())
}

/// The view as JSON for people: workers and catalog entries as lists.
pub fn view_json(view: &ClusterView) -> Value {
    json!({
        "at_seq": view.last_seq,
        "digest": view.digest(),
        "nodes": view.registry.nodes.values().collect::<Vec<_>>(),
        "workers": view.registry.workers.values().collect::<Vec<_>>(),
        "catalog": view.catalog.entries.values().collect::<Vec<_>>(),
    })
}
