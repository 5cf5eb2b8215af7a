//! Catalog upkeep: a model catalogued on this node whose file is gone is removed from the catalog
//! through a `model.removed` event, and the hive says so in its log.

use std::path::Path;
use std::time::Duration;

use rbee_bus::{AggregateKind, AppendError, Event, EventLog, Expected, Meta, ModelRemoved, subjects};
use rbee_projections::LiveView;
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

async fn remove(log: &EventLog, node: &str, model: &str, path: &str) -> Result<(), AppendError> {
    // Appended after the model's last event: if the model was re-registered meanwhile, we look again.
    let position = log.aggregate_position(AggregateKind::Model, model).await?;
    let expected = position.map_or(Expected::NoStream, Expected::At);
    let reason = format!("model file {path} is gone");
    let event = Event::ModelRemoved(ModelRemoved { model: model.into(), node: node.into(), reason: reason.clone() });
    match log.append(event, expected, &Meta::default()).await {
        Ok(_) => {
            tracing::warn!(%model, %reason, subject = %subjects::aggregate(AggregateKind::Model, model), "removed from the catalog");
            Ok(())
        }
        Err(AppendError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
