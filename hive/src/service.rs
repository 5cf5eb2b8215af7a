//! The hive process: registers its node, reads the commands addressed to it through a durable
//! consumer (so a restarted hive picks up what it missed), provisions models and starts workers.

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::StreamExt;
use rbee_bus::read::read_subject;
use rbee_bus::{
    subjects, AggregateKind, Event, EventLog, Expected, Meta, ModelRegistered, NodeRegistered, WorkerStartFailed,
    WorkerStartRequested,
};
use tokio_util::sync::CancellationToken;

use crate::provision::{provision, Provisioned};
use crate::supervisor::{Supervisor, WorkerSpec};
use crate::{resources, Config};

#[derive(Debug, thiserror::Error)]
pub enum HiveError {
    #[error(transparent)]
    InvalidName(#[from] subjects::InvalidName),
    #[error("{0}")]
    Bus(String),
    #[error("cannot prepare data directory: {0}")]
    Io(#[from] std::io::Error),
}

impl HiveError {
    pub fn code(&self) -> &'static str {
        match self {
            HiveError::InvalidName(_) => "INVALID_NAME",
            HiveError::Bus(_) => "EVENT_LOG_UNAVAILABLE",
            HiveError::Io(_) => "DATA_DIR_UNUSABLE",
        }
    }
}

fn bus(e: impl std::fmt::Display) -> HiveError {
    HiveError::Bus(e.to_string())
}

/// Runs the hive until `shutdown`, then stops its workers.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), HiveError> {
    let node = config.node_name();
    subjects::validate_name("node", &node)?;
    std::fs::create_dir_all(config.models_dir())?;
    let log = EventLog::connect(&config.nats_url).await.map_err(bus)?;
    log.ensure_streams(&rbee_bus::StreamSettings::from_env().map_err(bus)?).await.map_err(bus)?;

    let r = resources::read(&config.data_dir);
    let registered = Event::NodeRegistered(NodeRegistered {
        node: node.clone(),
        ram_total_bytes: r.ram_total_bytes,
        ram_available_bytes: r.ram_available_bytes,
        cores: r.cores,
        disk_free_bytes: r.disk_free_bytes,
        hive_version: env!("CARGO_PKG_VERSION").into(),
    });
    log.append(registered, Expected::Any, &Meta::default()).await.map_err(bus)?;
    tracing::info!(%node, "node registered");

    let view = rbee_projections::LiveView::start(&log, shutdown.clone()).await.map_err(bus)?;
    let every = std::time::Duration::from_secs(config.catalog_check_secs.max(1));
    tokio::spawn(crate::upkeep::run(log.clone(), view.clone(), node.clone(), every, shutdown.clone()));
    let supervisor =
        Supervisor::new(log.clone(), node.clone(), config.nats_url.clone(), config.worker_binary(), config.logs_dir());
    if let Err(e) = supervisor.check_binary() {
        tracing::warn!(error = %e, "workers cannot be started until this is fixed");
    }
    let durable = format!("hive-{node}");
    let consumer = log
        .events_stream()
        .await
        .map_err(bus)?
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: subjects::aggregate(AggregateKind::Node, &node),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                // A command held by a hive that died comes back this soon; a live hive working on
                // one (a long provisioning) says so every COMMAND_PROGRESS so it is not redelivered.
                ack_wait: COMMAND_ACK_WAIT,
                max_deliver: 5,
                ..Default::default()
            },
        )
        .await
        .map_err(bus)?;
    let mut commands = consumer.messages().await.map_err(bus)?;
    let hive = std::sync::Arc::new(Hive { log, node, config: config.clone(), supervisor: supervisor.clone(), view });
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = commands.next() => msg,
        };
        let Some(msg) = msg else { break };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "command stream interrupted");
                continue;
            }
        };
        // Each command runs on its own, so starting one worker never waits for another's provisioning.
        let hive = hive.clone();
        tokio::spawn(async move {
            let msg = std::sync::Arc::new(msg);
            let progress = tokio::spawn(report_progress(msg.clone()));
            match rbee_bus::log::decode_message(&msg) {
                Ok(rec) => {
                    if let Event::WorkerStartRequested(cmd) = rec.envelope.event {
                        let meta = Meta { correlation: rec.envelope.correlation, traceparent: rec.envelope.traceparent };
                        hive.start_worker(cmd, &meta).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "undecodable command skipped"),
            }
            progress.abort();
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "command not acked; it will be redelivered");
            }
        });
    }
    tracing::info!("stopping workers");
    supervisor.stop_all(config.worker_grace()).await;
    Ok(())
}

const COMMAND_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const COMMAND_PROGRESS: std::time::Duration = std::time::Duration::from_secs(3);

/// Tells the server this hive is still working on a command, until aborted.
async fn report_progress(msg: std::sync::Arc<async_nats::jetstream::Message>) {
    let mut tick = tokio::time::interval(COMMAND_PROGRESS);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = msg.ack_with(async_nats::jetstream::AckKind::Progress).await {
            tracing::warn!(error = %e, "command progress not reported");
        }
    }
}

struct Hive {
    log: EventLog,
    node: String,
    config: Config,
    supervisor: Supervisor,
    view: rbee_projections::LiveView,
}

impl Hive {
    /// Carries out a `worker.start_requested` command; failures become `worker.start_failed` events.
    async fn start_worker(&self, cmd: WorkerStartRequested, meta: &Meta) {
        let span = tracing::info_span!("hive.start_worker", worker = %cmd.worker, model = %cmd.model);
        let _enter = span.enter();
        match self.log.aggregate_position(AggregateKind::Worker, &cmd.worker).await {
            Ok(Some(_)) => {
                tracing::info!("worker already started once; command not repeated");
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot check the worker; command skipped");
                return;
            }
        }
        if let Err((code, message)) = self.try_start(&cmd, meta).await {
            tracing::error!(code, %message, "worker not started");
            let failed = Event::WorkerStartFailed(WorkerStartFailed {
                worker: cmd.worker.clone(),
                node: self.node.clone(),
                code: code.into(),
                message,
            });
            if let Err(e) = self.log.append(failed, Expected::Any, meta).await {
                tracing::error!(error = %e, "failure not recorded");
            }
        }
    }

    async fn try_start(&self, cmd: &WorkerStartRequested, meta: &Meta) -> Result<(), (&'static str, String)> {
        for (field, value) in [("worker id", &cmd.worker), ("model", &cmd.model)] {
            subjects::validate_name(field, value).map_err(|e| ("INVALID_NAME", e.to_string()))?;
        }
        self.supervisor.check_binary().map_err(|e| (e.code(), e.to_string()))?;
        // Checked against this hive's view of the registry: hives starting workers at the same instant
        // may each see room for one more (the limit is a guard against runaway growth, not a quota).
        let (held, limit) = (self.view.read(|v| v.registry.workers.len()), self.config.max_workers);
        if held >= limit {
            return Err((
                "REGISTRY_FULL",
                format!("the registry holds {held} workers, its limit (--max-workers {limit}); remove stale workers (rbee workers --state stale) or raise the limit"),
            ));
        }
        let (models_dir, model, source, sha) =
            (self.config.models_dir(), cmd.model.clone(), cmd.source.clone(), cmd.sha256.clone());
        let provisioned = tokio::task::spawn_blocking(move || provision(&models_dir, &model, &source, sha.as_deref()))
            .await
            .map_err(|e| ("PROVISION_FAILED", e.to_string()))?
            .map_err(|e| (e.code(), e.to_string()))?;
        tracing::info!(copied = provisioned.copied, path = %provisioned.path.display(), "model provisioned");
        self.register_model(&cmd.model, &provisioned, meta).await.map_err(|e| ("EVENT_LOG_UNAVAILABLE", e.to_string()))?;
        let spec = WorkerSpec { worker: cmd.worker.clone(), model: cmd.model.clone(), model_path: provisioned.path, slots: cmd.slots.max(1) };
        self.supervisor.spawn(&spec).map_err(|e| (e.code(), e.to_string()))?;
        Ok(())
    }

    /// Records the model in the catalog unless this node already registered this exact file.
    /// Several hives may race here: each appends only after the model's last event it read, so the
    /// losers re-read, find the registration, and skip it.
    async fn register_model(&self, model: &str, p: &Provisioned, meta: &Meta) -> Result<(), String> {
        let subject = subjects::aggregate(AggregateKind::Model, model);
        let event = Event::ModelRegistered(ModelRegistered {
            model: model.into(),
            node: self.node.clone(),
            path: p.path.display().to_string(),
            size_bytes: p.size_bytes,
            sha256: p.sha256.clone(),
            memory_required_bytes: rbee_bus::estimated_memory_bytes(p.size_bytes),
        });
        for _ in 0..8 {
            let history = read_subject(&self.log, &subject).await.map_err(|e| e.to_string())?;
            let known = history.iter().any(|r| {
                matches!(&r.envelope.event, Event::ModelRegistered(m) if m.node == self.node && m.sha256 == p.sha256)
            });
            if known {
                return Ok(());
            }
            let expected = history.last().map_or(Expected::NoStream, |r| {
                Expected::At(rbee_bus::Position { seq: r.stream_seq, version: r.envelope.version })
            });
            match self.log.append(event.clone(), expected, meta).await {
                Ok(_) => return Ok(()),
                Err(rbee_bus::AppendError::Conflict { .. }) => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("could not register {model}: the catalog kept changing"))
    }
}
