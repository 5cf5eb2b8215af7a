//! Catalog upkeep: a model catalogued on this node whose file is gone is removed from the catalog
//! through a `model.removed` event, and the hive says so in its log.

use std::path::Path;
use std::time::Duration;

use rbee_bus::{EventLog, Meta, subjects};
use rbee_projections::LiveView;
use rbee_projections::aggregate::model::ModelCommand;
use rbee_projections::aggregate::{CommandError, on_model};
use tokio_util::sync::CancellationToken;

/// Checks this node's catalog entries every `every` until `shutdown`.
pub async fn run(log: EventLog, view: LiveView, node: String, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let missing: Vec<(String, String)> = view.read(|v| {
            v.catalog
                .entries
                .values()
                .filter(|e| e.node == node && !Path::new(&e.path).is_file())
                .map(|e| (e.model.clone(), e.path.clone()))
                .collect()
        });
        for (model, path) in missing {
            if let Err(e) = remove(&log, &node, &model, &path).await {
                tracing::error!(%model, error = %e, "orphaned catalog entry not removed");
            }
        }
    }
}

async fn remove(log: &EventLog, node: &str, model: &str, path: &str) -> Result<(), CommandError> {
    let reason = format!("model file {path} is gone");
    let command = ModelCommand::Remove { model: model.into(), node: node.into(), reason: reason.clone() };
    let recorded = on_model(log, node, model, &command, &Meta::default()).await?;
    if !recorded.is_empty() {
        let subject = subjects::model(node, model);
        tracing::warn!(%model, %reason, %subject, "removed from the catalog");
    }
    Ok(())
}
