//! The history folded as a queen folds it (the Postgres archive for what JetStream no longer
//! holds), so the CLI and the queens agree: `rbee replay` shows the registry and catalog as they
//! were at a point of the log; `rbee projections rebuild` resets and replays, setting the stored
//! checkpoint aside and storing the fresh one.

use rbee_bus::Code;
use rbee_bus::NatsAccess;
use rbee_projections::ClusterView;
use rbee_projections::checkpoint::CLUSTER_VIEW;
use rbee_projections::history::{self, Folded, HistoryError};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::error::{CliError, CliResult};

async fn connect_store(url: &str) -> CliResult<PgPool> {
    rbee_bus::archive::connect_store(url).await.map_err(|e| CliError::new(Code::EventStoreUnavailable, e.to_string()))
}

/// What was folded, with a warning for the events that had to be skipped.
fn folded(result: Result<Folded, HistoryError>) -> CliResult<Folded> {
    let folded = result.map_err(|e| CliError::new(e.code(), e.to_string()))?;
    if folded.skipped > 0 {
        eprintln!("warning: {} event(s) could not be decoded and were skipped", folded.skipped);
    }
    Ok(folded)
}

pub async fn replay(nats: &NatsAccess, database_url: Option<&str>, at: Option<&str>, digest: bool) -> CliResult<()> {
    let until = crate::log_point::parse(at)?;
    let log = crate::live::connect_log(nats).await?;
    let pool = match database_url {
        Some(url) => Some(connect_store(url).await?),
        None => None,
    };
    let folded = folded(history::replay_to(&log, pool.as_ref(), until).await)?;
    if digest {
        println!("{}", folded.view.digest());
    } else {
        println!("{}", serde_json::to_string_pretty(&view_json(&folded.view)).expect("plain data serializes"));
    }
    Ok(())
}

pub async fn rebuild(nats: &NatsAccess, database_url: &str) -> CliResult<()> {
    let log = crate::live::connect_log(nats).await?;
    let pool = connect_store(database_url).await?;
    let folded = folded(history::rebuild(&log, &pool).await)?;
    println!(
        "rebuilt {CLUSTER_VIEW} up to sequence {} ({} event(s) from the archive); digest {}",
        folded.view.last_seq,
        folded.from_archive,
        folded.view.digest()
    );
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
