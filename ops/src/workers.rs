//! `rbee workers`: the worker registry, folded from the log right now.

use rbee_bus::Code;
use rbee_bus::NatsAccess;
use std::time::Duration;

use crate::error::{CliError, CliResult};

#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// The node whose hive starts it (default: this cluster's node).
    #[arg(long)]
    pub node: Option<String>,
    /// Serve this model instead of the default one: hf:org/repo[:file.gguf], https://..., or a file.
    #[arg(long, alias = "model-file")]
    pub model: Option<String>,
    /// Expected sha256 of the model file (the hub's checksum is used when it gives one).
    #[arg(long)]
    pub sha256: Option<String>,
    /// Backend: cpu, cuda or metal (comma-separated lists are refused: one backend per worker).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// GPU index (default: the one with most free VRAM).
    #[arg(long)]
    pub device: Option<u32>,
    /// The name clients use for the model.
    #[arg(long)]
    pub model_name: Option<String>,
    /// Concurrent requests the worker takes.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Seconds to wait for it to be ready.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

/// `rbee workers start`: a new worker, started by a hive through a command event.
pub async fn start(nats: &NatsAccess, node: &str, args: &StartArgs) -> CliResult<()> {
    rbee_bus::subjects::validate_name("node", node).map_err(|e| CliError::new(Code::InvalidName, e.to_string()))?;
    let mut source = rbee_local::model::resolve(
        args.model.as_deref(),
        args.model_name.as_deref(),
        &rbee_local::model::default_cache_dir(),
    )?;
    if args.sha256.is_some() {
        source.sha256 = args.sha256.clone();
    }
    let cluster = crate::live::connect(nats).await?;
    let worker = rbee_bus::subjects::new_worker_id(node);
    let request = crate::start::StartRequest {
        source: &source,
        slots: args.slots.max(1),
        backend: &args.backend,
        device: args.device,
    };
    crate::start::start_and_wait(
        &cluster.log,
        &cluster.view,
        node,
        &worker,
        Some(request),
        Duration::from_secs(args.timeout_secs),
    )
    .await
}

/// Which workers to show; every filter given must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerFilter {
    /// Only workers serving this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only workers in this state (loading, ready, draining, stale).
    #[arg(long)]
    pub state: Option<String>,
    /// Only workers on this node.
    #[arg(long)]
    pub node: Option<String>,
}

impl WorkerFilter {
    fn matches(&self, w: &rbee_projections::Worker) -> bool {
        self.model.as_deref().is_none_or(|m| w.model == m)
            && self.state.as_deref().is_none_or(|s| w.state.as_str() == s)
            && self.node.as_deref().is_none_or(|n| w.node == n)
    }
}

pub async fn workers(nats: &NatsAccess, filter: &WorkerFilter, json: bool) -> CliResult<()> {
    if let Some(state) = filter.state.as_deref().filter(|s| !["loading", "ready", "draining", "stale"].contains(s)) {
        let shown: String = state.chars().take(40).flat_map(char::escape_default).collect();
        return Err(CliError::new(
            Code::InvalidFilter,
            format!("--state must be loading, ready, draining or stale, got \"{shown}\""),
        ));
    }
    let cluster = crate::live::connect(nats).await?;
    let workers: Vec<_> =
        cluster.view.read(|v| v.registry.workers.values().filter(|w| filter.matches(w)).cloned().collect());
    if json {
        println!("{}", serde_json::to_string_pretty(&workers).expect("plain data serializes"));
        return Ok(());
    }
    let now = rbee_bus::envelope::now_ms();
    println!(
        "{:<32} {:<16} {:<24} {:<9} {:>5} {:>7} {:>9}",
        "WORKER", "NODE", "MODEL", "STATE", "BUSY", "CONTEXT", "HEARTBEAT"
    );
    for w in &workers {
        let heartbeat = w
            .last_heartbeat_ms
            .map(|hb| format!("{:.1}s ago", now.saturating_sub(hb) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<32} {:<16} {:<24} {:<9} {:>5} {:>7} {:>9}",
            w.id,
            w.node,
            w.model,
            w.state.as_str(),
            format!("{}/{}", w.busy.len(), w.slots),
            w.context_length,
            heartbeat
        );
    }
    if workers.is_empty() {
        println!("(no workers)");
    }
    Ok(())
}

/// `rbee workers drain <id>`: the worker takes no new requests; its current ones finish. The
/// worker aggregate's rules decide whether it may drain.
pub async fn drain(nats: &NatsAccess, worker: &str) -> CliResult<()> {
    use rbee_projections::aggregate::worker::WorkerCommand;
    use rbee_projections::aggregate::{CommandError, on_worker};
    rbee_bus::subjects::validate_name("worker id", worker)
        .map_err(|e| CliError::new(Code::InvalidName, e.to_string()))?;
    let cluster = crate::live::connect(nats).await?;
    match on_worker(&cluster.log, &cluster.view, worker, &WorkerCommand::Drain, &rbee_bus::Meta::default()).await {
        Ok(events) if events.is_empty() => println!("worker {worker} is already draining"),
        Ok(_) => println!("worker {worker} is draining: it takes no new requests"),
        Err(CommandError::Rejected(Code::WorkerNotFound)) => {
            return Err(CliError::new(Code::WorkerNotFound, format!("no worker {worker}; rbee workers lists them")));
        }
        Err(CommandError::Rejected(code)) => {
            let state = cluster.view.read(|v| v.registry.workers.get(worker).map(|w| w.state.as_str()));
            let state = state.unwrap_or("gone");
            return Err(CliError::new(
                code,
                format!("worker {worker} is {state}: only a loading or ready worker can drain"),
            ));
        }
        Err(CommandError::Contended) => {
            return Err(CliError::new(Code::WorkerAlreadyBusy, format!("worker {worker} kept changing; try again")));
        }
        Err(CommandError::Unavailable(e)) => return Err(crate::live::unavailable(e)),
    }
    Ok(())
}
