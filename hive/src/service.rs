//! The hive process: registers its node, reads the commands addressed to it through a durable
//! consumer (so a restarted hive picks up what it missed), provisions models and starts workers.

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use rbee_bus::Code;
use rbee_bus::{
    AggregateKind, DownloadFailed, Event, EventLog, Expected, Meta, ModelPullRequested, ModelRemoveRequested,
    NodeRegistered, WorkerStartFailed, WorkerStartRequested, download_id, subjects,
};
use rbee_runtime::config_file::Live;
use tokio_util::sync::CancellationToken;

use crate::error::{HiveError, Refusal};
use crate::fetch::Downloader;
use crate::identity::WorkerIdentities;
use crate::provision::Provisioner;
use crate::supervisor::{Supervisor, WorkerSpec};
use crate::{Config, resources};

fn bus(e: impl std::fmt::Display) -> HiveError {
    HiveError::Bus(e.to_string())
}

/// Runs the hive until `shutdown`, then stops its workers.
pub async fn run(live: Live<Config>, shutdown: CancellationToken) -> Result<(), HiveError> {
    let config = live.get();
    let node = config.node_name();
    subjects::validate_name("node", &node)?;
    std::fs::create_dir_all(config.models_dir())?;
    let log = EventLog::connect(&config.nats.access()).await.map_err(bus)?;
    log.ensure_streams(&rbee_bus::StreamSettings::from_env()?).await.map_err(bus)?;

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
    // Adoption and resumption below decide from the whole log so far.
    view.catch_up(&log, std::time::Duration::from_secs(60)).await.map_err(bus)?;
    let every = std::time::Duration::from_secs(config.catalog_check_secs.max(1));
    tokio::spawn(crate::upkeep::run(log.clone(), view.clone(), node.clone(), every, shutdown.clone()));
    let cores = config.cores().map_err(HiveError::Config)?;
    let identities = WorkerIdentities::load(
        config.nats.nats_creds.as_deref(),
        config.worker_signing_key.as_deref(),
        config.data_dir.join("workers-creds"),
    )
    .map_err(HiveError::Config)?;
    let supervisor = Supervisor::new(
        log.clone(),
        node.clone(),
        config.nats.clone(),
        identities,
        &config.data_dir,
        config.logs_dir(),
        config.supervisor_settings(),
    )
    .map_err(|e| HiveError::Config(e.to_string()))?;
    let stop_outbox = CancellationToken::new();
    tokio::spawn(supervisor.outbox().drain(log.clone(), stop_outbox.clone()));
    if let Some(addr) = config.status_addr {
        let of = supervisor.clone();
        let measures = std::sync::Arc::new(move || {
            let waiting = of.outbox_waiting().into_iter().map(|(owner, n)| rbee_runtime::status::Gauge {
                name: "rbee_hive_outbox_events",
                help: "Events waiting in an outbox for the log, by owner (the hive or a worker id).",
                labels: vec![("owner", owner)],
                value: n as f64,
            });
            waiting.collect()
        });
        let status = rbee_runtime::status::Status::new("hive", log.clone(), measures);
        status
            .serve(addr, shutdown.clone())
            .await
            .map_err(|e| HiveError::Config(format!("status endpoints on {addr}: {e}")))?;
    }
    if let Err(e) = crate::supervisor::check_binary(&config.worker_binary("cpu")) {
        tracing::warn!(error = %e, "workers cannot be started until this is fixed");
    }
    crate::lifecycle::adopt_running_workers(&log, &view, &supervisor, &config, &node, &cores).await;
    if let Some(source) = &config.serve {
        ask_to_serve(&log, &view, &node, source, &config).await;
    }
    if let Some(idle) = config.idle_timeout() {
        tokio::spawn(crate::lifecycle::stop_idle_workers(view.clone(), supervisor.clone(), idle, shutdown.clone()));
    }
    let durable = subjects::hive_consumer(&node);
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
    let downloader =
        Downloader::new(log.clone(), view.clone(), node.clone(), config.models_dir(), config.download_settings())
            .map_err(|f| HiveError::Setup(f.into()))?;
    config.source_policy().map_err(HiveError::Config)?;
    let provisioner =
        Provisioner::new(log.clone(), view.clone(), node.clone(), config.models_dir(), downloader, live.clone());
    let hive =
        std::sync::Arc::new(Hive { log, node, config: live, supervisor: supervisor.clone(), view, provisioner, cores });
    tokio::spawn(hive.clone().resume_abandoned_downloads());
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
                    let meta = Meta { correlation: rec.envelope.correlation, traceparent: rec.envelope.traceparent };
                    match rec.envelope.event {
                        Event::WorkerStartRequested(cmd) => hive.start_worker(cmd, &meta).await,
                        Event::ModelPullRequested(cmd) => hive.pull_model(cmd, &meta).await,
                        Event::ModelRemoveRequested(cmd) => hive.remove_model(cmd, &meta).await,
                        _ => {}
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
    supervisor.stop_all("shutdown").await;
    // The workers' exits are on disk; they leave for the log before the hive exits, or with the
    // next hive of this data directory when the log stays away.
    supervisor.outbox().flush_before_exit().await;
    stop_outbox.cancel();
    Ok(())
}

/// Asks this node (as `rbee workers start` would: a command on its subject, carried out below like
/// any other) for a worker of the `--serve` model, unless one of its workers serves it already.
async fn ask_to_serve(log: &EventLog, view: &rbee_projections::LiveView, node: &str, source: &str, config: &Config) {
    let model = match (&config.serve_name, rbee_bus::model_ref::ModelRef::parse(source)) {
        (_, Err(e)) => {
            tracing::error!(error = %e, "--serve names no model; serving nothing");
            return;
        }
        (Some(name), Ok(_)) => name.clone(),
        (None, Ok(reference)) => reference.default_name(),
    };
    // The adoption just recorded which of this node's workers died with the last hive.
    if let Err(e) = view.catch_up(log, std::time::Duration::from_secs(10)).await {
        tracing::warn!(error = %e, "the view may be behind; deciding on it anyway");
    }
    let serving = view.read(|v| {
        v.registry
            .workers_for(&model)
            .any(|w| w.node == node && matches!(w.state, rbee_bus::WorkerState::Ready | rbee_bus::WorkerState::Loading))
    });
    if serving {
        tracing::info!(%model, "a worker of this node serves the model already");
        return;
    }
    use rbee_projections::aggregate::node::{NodeCommand, decide};
    let command = NodeCommand::StartWorker(rbee_bus::WorkerStartRequested {
        node: node.to_string(),
        worker: subjects::new_worker_id(node),
        model: model.clone(),
        source: source.to_string(),
        sha256: config.serve_sha256.clone(),
        slots: 1,
        backend: "cpu".into(),
        device: None,
    });
    let events = match decide(&command) {
        Ok(events) => events,
        Err(code) => {
            tracing::error!(%code, %model, "--serve asks for no valid worker; serving nothing");
            return;
        }
    };
    for event in events {
        match log.append(event, Expected::Any, &Meta::default()).await {
            Ok(_) => tracing::info!(%model, "asked for a worker of the model this machine serves"),
            Err(e) => {
                tracing::error!(error = %e, %model, "could not ask for a worker of the model this machine serves")
            }
        }
    }
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
    config: Live<Config>,
    supervisor: Supervisor,
    view: rbee_projections::LiveView,
    provisioner: Provisioner,
    cores: Option<Vec<usize>>,
}

impl Hive {
    /// Downloads to this node that a dead hive left under way are resumed at once, from the log,
    /// rather than when their command is redelivered.
    async fn resume_abandoned_downloads(self: std::sync::Arc<Self>) {
        let pid = std::process::id();
        let abandoned: Vec<rbee_projections::Download> =
            self.view.read(|v| v.downloads.active().filter(|d| d.node == self.node && d.pid != pid).cloned().collect());
        for d in abandoned {
            let hive = self.clone();
            tokio::spawn(async move {
                let meta = Meta { correlation: Some(d.id.clone()), traceparent: None };
                tracing::info!(model = %d.model, offset = d.offset, "resuming a download a previous hive left");
                if let Err(f) = hive.provisioner.ensure(&d.model, &d.source, d.expected_sha256.as_deref(), &meta).await
                {
                    tracing::error!(model = %d.model, code = %f.code, error = %f.message, "resumed download failed");
                }
            });
        }
    }

    /// Carries out `model.pull_requested`. A failure that is not a download's own (those record
    /// themselves) is recorded as `download.failed`, so whoever asked sees the outcome.
    #[tracing::instrument(name = "hive.pull_model", skip_all, fields(model = %cmd.model))]
    async fn pull_model(&self, cmd: ModelPullRequested, meta: &Meta) {
        match self.provisioner.ensure(&cmd.model, &cmd.source, cmd.sha256.as_deref(), meta).await {
            Ok(p) => tracing::info!(how = p.how, path = %p.file.path.display(), "model pulled"),
            Err(f) => {
                tracing::error!(code = %f.code, error = %f.message, "model not pulled");
                // The downloader records its own failures; a refusal before it ran is recorded here.
                let downloaded = !matches!(
                    rbee_bus::model_ref::ModelRef::parse(&cmd.source),
                    Ok(rbee_bus::model_ref::ModelRef::File(_)) | Err(_)
                ) && f.code != Code::SourceNotAllowed;
                if subjects::validate_name("model", &cmd.model).is_ok() && !downloaded {
                    let failed = Event::DownloadFailed(DownloadFailed {
                        download: download_id(&self.node, &cmd.model),
                        code: f.code,
                        message: f.message,
                    });
                    if let Err(e) = self.log.append(failed, Expected::Any, meta).await {
                        tracing::error!(error = %e, "failure not recorded");
                    }
                }
            }
        }
    }

    /// Carries out `model.remove_requested`: the file is deleted and `model.removed` recorded.
    async fn remove_model(&self, cmd: ModelRemoveRequested, meta: &Meta) {
        match self.provisioner.remove(&cmd.model, meta).await {
            Ok(freed) => tracing::info!(model = %cmd.model, freed, "model removed"),
            Err(f) => {
                tracing::error!(model = %cmd.model, code = %f.code, error = %f.message, "model not removed");
                if subjects::validate_name("model", &cmd.model).is_ok() {
                    let refused = Event::ModelRemoveRefused(rbee_bus::ModelRemoveRefused {
                        model: cmd.model.clone(),
                        node: self.node.clone(),
                        code: f.code,
                        message: f.message,
                    });
                    if let Err(e) = self.log.append(refused, Expected::Any, meta).await {
                        tracing::error!(error = %e, "refusal not recorded");
                    }
                }
            }
        }
    }

    /// Carries out a `worker.start_requested` command; failures become `worker.start_failed` events.
    #[tracing::instrument(name = "hive.start_worker", skip_all, fields(worker = %cmd.worker, model = %cmd.model))]
    async fn start_worker(&self, cmd: WorkerStartRequested, meta: &Meta) {
        match self.log.last_position(&subjects::worker(&self.node, &cmd.worker)).await {
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
        if let Err(Refusal { code, message }) = self.try_start(&cmd, meta).await {
            tracing::error!(%code, %message, "worker not started");
            let too_slow = code == Code::LoadingTimeout;
            let failed = Event::WorkerStartFailed(WorkerStartFailed {
                worker: cmd.worker.clone(),
                node: self.node.clone(),
                code,
                message,
            });
            if let Err(e) = self.log.append(failed, Expected::Any, meta).await {
                tracing::error!(error = %e, "failure not recorded");
            }
            // Killed only once the reason is recorded: whoever waits sees why before the exit.
            if too_slow {
                self.supervisor.kill(&cmd.worker, "loading_timeout").await;
            }
        }
    }

    async fn try_start(&self, cmd: &WorkerStartRequested, meta: &Meta) -> Result<(), Refusal> {
        for (field, value) in [("worker id", &cmd.worker), ("model", &cmd.model)] {
            subjects::validate_name(field, value).map_err(|e| Refusal::new(Code::InvalidName, e.to_string()))?;
        }
        // Preflight before anything is fetched: the backend, the device, and the memory when the
        // model's size can be known (catalog, local file, or what the hub announces).
        let size = self.provisioner.expected_size(&cmd.model, &cmd.source).await;
        let placement = self.preflight(cmd, size.map_or(0, rbee_bus::estimated_memory_bytes))?;
        let binary = self.config.get().worker_binary(placement.backend);
        crate::supervisor::check_binary(&binary)?;
        // Checked against this hive's view of the registry: hives starting workers at the same instant
        // may each see room for one more (the limit is a guard against runaway growth, not a quota).
        let (held, limit) = (self.view.read(|v| v.registry.workers.len()), self.config.get().max_workers);
        if held >= limit {
            return Err(Refusal::new(
                Code::RegistryFull,
                format!(
                    "the registry holds {held} workers, its limit (--max-workers {limit}); remove stale workers (rbee workers --state stale) or raise the limit"
                ),
            ));
        }
        let provisioned = self.provisioner.ensure(&cmd.model, &cmd.source, cmd.sha256.as_deref(), meta).await?;
        tracing::info!(how = provisioned.how, path = %provisioned.file.path.display(), "model provisioned");
        // Again just before the spawn: memory may have gone while the model was fetched.
        let placement = self.preflight(cmd, rbee_bus::estimated_memory_bytes(provisioned.file.size_bytes))?;
        tracing::info!(backend = placement.backend, device = ?placement.device, reason = %placement.reason, "preflight passed");
        let models_dir = self.config.get().models_dir();
        let busy = tokio::task::spawn_blocking(move || {
            crate::resources::disk_busy_percent(&models_dir, std::time::Duration::from_millis(250))
        })
        .await
        .ok()
        .flatten();
        if let Some(busy) = busy.filter(|b| *b >= self.config.get().disk_busy_warn_percent) {
            tracing::warn!(busy_percent = busy, "the models' disk is busy: loading the model may be slow");
        }
        let spec = WorkerSpec {
            worker: cmd.worker.clone(),
            model: cmd.model.clone(),
            model_path: provisioned.file.path,
            slots: cmd.slots.max(1),
            binary,
            cores: self.cores.clone(),
            device: placement.device,
        };
        self.supervisor.spawn(&spec)?;
        crate::lifecycle::wait_ready(&self.view, &self.supervisor, &cmd.worker, self.config.get().loading_timeout())
            .await
    }

    fn preflight(&self, cmd: &WorkerStartRequested, memory_bytes: u64) -> Result<crate::preflight::Placement, Refusal> {
        let config = self.config.get();
        let inventory = crate::preflight::read(&config.data_dir, config.gpu_inventory_file.as_deref());
        crate::preflight::place(&inventory, &cmd.backend, cmd.device, memory_bytes, &config.limits())
    }
}
