//! Starting a worker through its node's hive (`rbee up`, `rbee workers start`): the command is an
//! event on the node's subject; the worker's own events (and its model's download, if the hive has
//! to fetch it) are followed until it is ready, failed or gone.

use std::time::Duration;

use rbee_bus::{AggregateKind, Code, Event, EventLog, Meta, WorkerStartRequested, WorkerState, subjects};
use rbee_local::model;
use rbee_projections::LiveView;
use rbee_projections::aggregate::node::NodeCommand;

use crate::error::{CliError, CliResult};
use crate::progress::{Bar, next_event};

/// What to ask a hive for.
pub struct StartRequest<'a> {
    pub source: &'a model::ModelSource,
    pub slots: u32,
    /// `cpu`, `cuda`, `metal` or `auto`; several comma-separated are refused by the hive.
    pub backend: &'a str,
    pub device: Option<u32>,
}

/// Asks `node`'s hive to start `worker` (unless `request` is None: it is already starting) and
/// follows the worker's events until it is ready, failed or gone.
pub async fn start_and_wait(
    log: &EventLog,
    view: &LiveView,
    node: &str,
    worker: &str,
    request: Option<StartRequest<'_>>,
    timeout: Duration,
) -> CliResult<()> {
    let unavailable = |e: String| CliError::new(Code::EventLogUnavailable, e);
    // Watch the worker's events before asking for it, so its readiness cannot be missed.
    let mut events =
        log.client().subscribe(subjects::worker(node, worker)).await.map_err(|e| unavailable(e.to_string()))?;
    // A model the hive has to download first: its progress is shown too.
    let mut downloads = match &request {
        Some(r) => {
            let subject = subjects::aggregate(AggregateKind::Download, &rbee_bus::download_id(node, &r.source.name));
            Some(log.client().subscribe(subject).await.map_err(|e| unavailable(e.to_string()))?)
        }
        None => None,
    };
    if view.read(|v| v.registry.workers.get(worker).is_some_and(|w| w.state == WorkerState::Ready)) {
        println!("worker {worker} ready");
        return Ok(());
    }
    if let Some(r) = &request {
        let command = NodeCommand::StartWorker(WorkerStartRequested {
            node: node.to_string(),
            worker: worker.to_string(),
            model: r.source.name.clone(),
            source: r.source.source.clone(),
            sha256: r.source.sha256.clone(),
            slots: r.slots,
            backend: r.backend.to_string(),
            device: r.device,
        });
        let meta = Meta { correlation: Some(worker.to_string()), traceparent: None };
        crate::node_command::send(log, command, &meta).await?;
        println!("starting worker {worker} for {} ...", r.source.name);
    }
    let bar = Bar::new();
    let wait = async {
        loop {
            let event = next_event(&mut events, downloads.as_mut()).await?;
            bar.show(&event);
            match event {
                Event::WorkerRegistered(_) => println!("worker {worker} registered; loading the model"),
                Event::WorkerStateChanged(s) if s.state == WorkerState::Ready => {
                    println!("worker {worker} ready (context {} tokens)", s.context_length);
                    return Ok(());
                }
                Event::WorkerStartFailed(f) => return Err(CliError::new(f.code, f.message)),
                Event::WorkerExited(x) => {
                    return Err(CliError::new(
                        Code::WorkerExited,
                        format!(
                            "worker {worker} exited during start (code {:?}, signal {:?}); see its log in logs/",
                            x.exit_code, x.signal
                        ),
                    ));
                }
                _ => {}
            }
        }
    };
    let outcome = tokio::time::timeout(timeout, wait).await.map_err(|_| {
        CliError::new(Code::LoadingTimeout, format!("worker {worker} was not ready within {}s", timeout.as_secs()))
    });
    bar.abandon();
    outcome?
}
