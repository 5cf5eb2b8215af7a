//! How a queen gets its view back at start: from its checkpoint when the checkpoint proves itself,
//! else rebuilt from the log; events the stream no longer holds are read from the Postgres archive.
//! While running, it checkpoints the view every few seconds.

use std::time::Duration;

use rbee_bus::EventLog;
use rbee_projections::checkpoint::{self, CLUSTER_VIEW, Checkpoint, Rejected};
use rbee_projections::{ClusterView, LiveView};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::QueenError;

/// The view to start from, and what happened, in words for the operator (`/health`, the log).
pub struct Recovered {
    pub view: ClusterView,
    pub report: String,
}

fn bus(e: impl std::fmt::Display) -> QueenError {
    QueenError::Bus(e.to_string())
}

pub async fn recover(log: &EventLog, pool: Option<&PgPool>) -> Result<Recovered, QueenError> {
    let Some(pool) = pool else {
        return Ok(Recovered {
            view: ClusterView::default(),
            report: "folded from the log (no event store configured)".into(),
        });
    };
    let (first_in_log, last_in_log) = log.events_bounds().await.map_err(bus)?;
    let stored = checkpoint::load(pool, CLUSTER_VIEW).await.map_err(|e| QueenError::Store(e.into()))?;
    let (mut view, mut report) = match stored {
        None => (ClusterView::default(), "no checkpoint: rebuilt from the log".to_string()),
        Some(cp) => match trusted(log, &cp, last_in_log).await? {
            Ok(view) => {
                let report = format!("restored from the checkpoint at sequence {}", view.last_seq);
                (view, report)
            }
            Err(rejected) => {
                let reason = format!("{}: {rejected}", rejected.code());
                checkpoint::set_aside(pool, CLUSTER_VIEW, &cp, &reason)
                    .await
                    .map_err(|e| QueenError::Store(e.into()))?;
                tracing::warn!(%reason, "checkpoint set aside; rebuilding from the log");
                (ClusterView::default(), format!("checkpoint set aside ({reason}); rebuilt from the log"))
            }
        },
    };
    let count = checkpoint::fill_from_archive(&mut view, pool, first_in_log).await?;
    if count > 0 {
        report.push_str(&format!("; {count} event(s) before sequence {first_in_log} read from the Postgres archive"));
    }
    tracing::info!(%report, "projections recovered");
    Ok(Recovered { view, report })
}

/// Whether a checkpoint may be used: intact and current, and tied to this very log.
async fn trusted(
    log: &EventLog,
    cp: &Checkpoint,
    last_in_log: u64,
) -> Result<Result<ClusterView, Rejected>, QueenError> {
    let view = match cp.restore() {
        Ok(v) => v,
        Err(r) => return Ok(Err(r)),
    };
    if view.last_seq > last_in_log {
        return Ok(Err(Rejected::Foreign(format!(
            "it reaches sequence {} but the log ends at {last_in_log}",
            view.last_seq
        ))));
    }
    if view.last_seq > 0 {
        if let Some(actual) = log.event_id_at(view.last_seq).await.map_err(bus)? {
            if Some(actual) != view.last_event_id {
                return Ok(Err(Rejected::Foreign(format!(
                    "the event at sequence {} is not the one it was folded from",
                    view.last_seq
                ))));
            }
        }
    }
    Ok(Ok(view))
}

/// Saves the view whenever it moved on, every `every`, until `shutdown` (and once more then).
pub async fn checkpoint_loop(pool: PgPool, view: LiveView, every: Duration, shutdown: CancellationToken) {
    // Save at the first tick too: the stored checkpoint may be missing (set aside) or behind.
    let mut saved = 0;
    let mut tick = tokio::time::interval(every);
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let cp = view.read(|v| (v.last_seq > saved).then(|| Checkpoint::of(v)));
        if let Some(cp) = cp {
            match checkpoint::save(&pool, CLUSTER_VIEW, &cp).await {
                Ok(()) => saved = cp.last_seq,
                Err(e) => tracing::warn!(error = %e, "checkpoint not saved"),
            }
        }
        if stopping {
            return;
        }
    }
}
