//! While a queen runs, it checkpoints its view in Postgres every few seconds, so the next start
//! folds only what came after (see `rbee_projections::history::recover`).

use std::time::Duration;

use rbee_projections::LiveView;
use rbee_projections::checkpoint::{self, CLUSTER_VIEW, Checkpoint};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

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
