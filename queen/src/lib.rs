//! rbee's queen: the OpenAI-compatible gateway and scheduler. It keeps no state of its own beyond
//! a live projection of the log, so any number of queens can serve one cluster.

pub mod auth;
pub mod cancel;
pub mod chat;
pub mod chat_request;
pub mod config;
pub mod cors;
pub mod error;
pub mod health;
pub mod metrics;
pub mod queue;
pub mod reaper;
pub mod recovery;
pub mod routes;
pub mod scheduler;
pub mod serve;
pub mod streaming;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use rbee_bus::{Code, EventLog};
use rbee_projections::LiveView;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// What every handler shares.
pub struct AppState {
    pub log: EventLog,
    pub view: LiveView,
    /// The configuration now (some keys change on SIGHUP).
    pub config: rbee_runtime::config_file::Live<Config>,
    /// How the view was recovered at start, for the operator.
    pub recovery: String,
    pub metrics: metrics::QueenMetrics,
    /// Requests waiting for a slot, per model.
    pub queues: Arc<queue::Queues>,
    /// The requests this queen streams, told to their workers.
    pub streaming: streaming::Streaming,
    /// What the archiver is doing; None without an event store.
    pub archive: Option<tokio::sync::watch::Receiver<rbee_bus::archive::ArchiveStatus>>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueenError {
    #[error("{0}")]
    Bus(String),
    #[error("{0}")]
    Store(#[from] rbee_bus::archive::ArchiveError),
    #[error(transparent)]
    History(#[from] rbee_projections::history::HistoryError),
    #[error(transparent)]
    Config(#[from] rbee_bus::InvalidSetting),
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
}

impl QueenError {
    pub fn code(&self) -> Code {
        match self {
            QueenError::Bus(_) => Code::EventLogUnavailable,
            QueenError::Store(_) => Code::EventStoreUnavailable,
            QueenError::History(e) => e.code(),
            QueenError::Bind { .. } => Code::BindFailed,
            QueenError::Serve(_) => Code::InternalError,
            QueenError::Config(_) => Code::InvalidConfig,
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.get().max_body_bytes;
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/catalog", get(routes::catalog))
        .route("/v1/requests/{id}", delete(routes::cancel_request))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_key));
    Router::new()
        .merge(api)
        .route("/health", get(health::health))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors::cors))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Runs the queen until `shutdown`.
pub async fn run(live: rbee_runtime::config_file::Live<Config>, shutdown: CancellationToken) -> Result<(), QueenError> {
    let config = live.get();
    if config.no_auth {
        if !config.bind.ip().is_loopback() {
            return Err(QueenError::Config(rbee_bus::InvalidSetting(format!(
                "--no-auth serves /v1 to anyone without an API key and is only allowed on a loopback \
                 address, not {}; make keys with `rbee keys create` instead",
                config.bind
            ))));
        }
        tracing::warn!("--no-auth: /v1 answers without API keys; only processes on this machine can reach it");
    }
    let log = EventLog::connect(&config.nats.access()).await.map_err(|e| QueenError::Bus(e.to_string()))?;
    let settings = rbee_bus::StreamSettings::from_env()?;
    log.ensure_streams(&settings).await.map_err(|e| QueenError::Bus(e.to_string()))?;
    let pool = match &config.database_url {
        Some(url) => Some(rbee_bus::archive::connect_store(url).await?),
        None => None,
    };
    let recovered = rbee_projections::history::recover(&log, pool.as_ref()).await?;
    let view = LiveView::start_from(&log, recovered.folded.view, shutdown.clone())
        .await
        .map_err(|e| QueenError::Bus(e.to_string()))?;
    // Background work is tracked, so a shutdown waits for the last checkpoint and the archiver's
    // last batch before the process exits.
    let background = TaskTracker::new();
    let mut archive = None;
    if let Some(pool) = pool {
        let (status, watch) =
            tokio::sync::watch::channel(rbee_bus::archive::ArchiveStatus { state: "starting", ..Default::default() });
        archive = Some(watch);
        background.spawn(rbee_bus::archive::run_archiver(log.clone(), pool.clone(), status, shutdown.clone()));
        background.spawn(recovery::checkpoint_loop(pool, view.clone(), Duration::from_secs(2), shutdown.clone()));
    }
    let liveness =
        reaper::Liveness { heartbeat_timeout: config.heartbeat_timeout(), stale_grace: config.stale_grace() };
    background.spawn(reaper::run(log.clone(), view.clone(), liveness, shutdown.clone()));
    let streaming = streaming::Streaming::default();
    background.spawn(streaming::announce(log.clone(), streaming.clone(), shutdown.clone()));
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| QueenError::Bind { addr: config.bind, source })?;
    tracing::info!(addr = %config.bind, "serving the OpenAI API on http://{}/v1", config.bind);
    let limits = config.connection_limits();
    let queues = queue::Queues::new(config.queue_depth);
    let app = router(Arc::new(AppState {
        log,
        view,
        config: live,
        recovery: recovered.report,
        metrics: metrics::QueenMetrics::new(),
        queues,
        streaming,
        archive,
    }));
    let served = serve::serve(listener, app, limits, shutdown.clone(), Duration::from_secs(30)).await;
    // The server also ends on its own error: the background tasks stop with it.
    shutdown.cancel();
    background.close();
    if tokio::time::timeout(BACKGROUND_GRACE, background.wait()).await.is_err() {
        tracing::warn!("background tasks did not stop within {}s", BACKGROUND_GRACE.as_secs());
    }
    served.map_err(QueenError::Serve)
}

/// How long a stopping queen waits for its background tasks (the last checkpoint, the archiver).
const BACKGROUND_GRACE: Duration = Duration::from_secs(10);
