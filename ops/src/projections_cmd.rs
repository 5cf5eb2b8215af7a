//! `rbee projections rebuild`: reset and replay. Folds the whole log again (the Postgres archive
//! for what JetStream no longer holds), sets the stored checkpoint aside and stores the fresh one.

use rbee_bus::Code;
use rbee_bus::read::{self, From};
use rbee_bus::{EventLog, subjects};
use rbee_projections::ClusterView;
use rbee_projections::checkpoint::{self, CLUSTER_VIEW, Checkpoint};

use crate::error::{CliError, CliResult};
use crate::live::unavailable;

pub async fn rebuild(nats_url: &str, database_url: &str) -> CliResult<()> {
    let store = |e: String| CliError::new(Code::EventStoreUnavailable, e);
    let log = EventLog::connect(nats_url).await.map_err(|e| unavailable(e.to_string()))?;
    let pool = rbee_bus::archive::connect_store(database_url).await.map_err(|e| store(e.to_string()))?;
    let (first_in_log, _) = log.events_bounds().await.map_err(|e| unavailable(e.to_string()))?;
    let mut view = ClusterView::default();
    let archived =
        checkpoint::fill_from_archive(&mut view, &pool, first_in_log).await.map_err(|e| store(e.to_string()))?;
    for item in
        read::read_to_end(&log, subjects::EVENTS_STREAM, From::Start).await.map_err(|e| unavailable(e.to_string()))?
    {
        let rec = item.map_err(|e| CliError::new(Code::UndecodableEvent, e.to_string()))?;
        if rec.stream_seq > view.last_seq {
            view.apply(&rec);
        }
    }
    if let Some(old) = checkpoint::load(&pool, CLUSTER_VIEW).await.map_err(|e| store(e.to_string()))? {
        checkpoint::set_aside(&pool, CLUSTER_VIEW, &old, "replaced by rbee projections rebuild")
            .await
            .map_err(|e| store(e.to_string()))?;
    }
    checkpoint::save(&pool, CLUSTER_VIEW, &Checkpoint::of(&view)).await.map_err(|e| store(e.to_string()))?;
    println!(
        "rebuilt {CLUSTER_VIEW} up to sequence {} ({archived} event(s) from the archive); digest {}",
        view.last_seq,
        view.digest()
    );
    Ok(())
}
