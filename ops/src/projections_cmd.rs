//! `rbee projections rebuild`: reset and replay. Folds the whole history again (the Postgres archive
//! for what JetStream no longer holds), sets the stored checkpoint aside and stores the fresh one.

use rbee_bus::EventLog;
use rbee_projections::checkpoint::CLUSTER_VIEW;
use rbee_projections::history;

use crate::error::{CliError, CliResult};
use crate::live::unavailable;

pub async fn rebuild(nats_url: &str, database_url: &str) -> CliResult<()> {
    let log = EventLog::connect(nats_url).await.map_err(unavailable)?;
    let store = |e: String| CliError::new(rbee_bus::Code::EventStoreUnavailable, e);
    let pool = rbee_bus::archive::connect_store(database_url).await.map_err(|e| store(e.to_string()))?;
    let folded = history::rebuild(&log, &pool).await.map_err(|e| CliError::new(e.code(), e.to_string()))?;
    if folded.skipped > 0 {
        eprintln!("warning: {} event(s) could not be decoded and were skipped", folded.skipped);
    }
    println!(
        "rebuilt {CLUSTER_VIEW} up to sequence {} ({} event(s) from the archive); digest {}",
        folded.view.last_seq,
        folded.from_archive,
        folded.view.digest()
    );
    Ok(())
}
