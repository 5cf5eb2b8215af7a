//! The parts of a worker's life the hive decides from the cluster's view: readiness within the
//! loading timeout, stopping idle workers, and adopting workers a previous hive left running.

use std::time::Duration;

use rbee_bus::Code;
use rbee_bus::{Event, EventLog, Expected, Meta, WorkerExited, WorkerState};
use rbee_projections::LiveView;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::error::Refusal;
use crate::supervisor::{Supervisor, WorkerSpec};

/// Waits until a spawned worker is ready. Past `timeout` the answer is `LOADING_TIMEOUT` and the
/// caller records it, then kills the worker, so the reason is in the log before the exit; a worker
/// that exits while loading has its exit recorded by the supervisor.
pub async fn wait_ready(
    view: &LiveView,
    supervisor: &Supervisor,
    worker: &str,
    timeout: Duration,
) -> Result<(), Refusal> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if view.read(|v| v.registry.workers.get(worker).is_some_and(|w| w.state == WorkerState::Ready)) {
            return Ok(());
        }
        if !supervisor.workers().iter().any(|(w, _)| w == worker) {
            // Exited (recorded as worker.exited); a restart, if any, is the supervisor's.
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Refusal::new(
                Code::LoadingTimeout,
                format!("worker {worker} was not ready within {:.1}s; killed", timeout.as_secs_f64()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops workers of this hive that are ready, hold no request, and had none for `idle`.
pub async fn stop_idle_workers(view: LiveView, supervisor: Supervisor, idle: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval((idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = rbee_bus::envelope::now_ms();
        let ours = supervisor.workers();
        let idle_ones: Vec<String> = view.read(|v| {
            ours.iter()
                .filter_map(|(id, _)| v.registry.workers.get(id))
                .filter(|w| w.state == WorkerState::Ready && w.busy.is_empty())
                .filter(|w| now.saturating_sub(w.last_active_ms) >= idle.as_millis() as u64)
                .map(|w| w.id.clone())
                .collect()
        });
        for worker in idle_ones {
            tracing::info!(%worker, idle_secs = idle.as_secs_f64(), "worker idle past the idle timeout; stopping it");
            let supervisor = supervisor.clone();
            tokio::spawn(async move { supervisor.stop(&worker, "idle_timeout").await });
        }
    }
}

/// A restarted hive takes charge of the workers its node's registry lists: those still running
/// unsupervised (their hive died) are adopted; those gone are recorded as exited.
pub async fn adopt_running_workers(
    log: &EventLog,
    view: &LiveView,
    supervisor: &Supervisor,
    config: &Config,
    node: &str,
    cores: &Option<Vec<usize>>,
) {
    let listed: Vec<(rbee_projections::Worker, Option<String>)> = view.read(|v| {
        v.registry
            .workers
            .values()
            .filter(|w| w.node == node)
            .map(|w| (w.clone(), v.catalog.get(&w.model, node).map(|e| e.path.clone())))
            .collect()
    });
    for (w, model_path) in listed {
        let binary = config.worker_binary(w.backend.split(':').next().unwrap_or("cpu"));
        // Only a process a hive of this data directory recorded starting, or (a hive killed
        // between a spawn and its record) one running this hive's worker executable: a pid in the
        // log alone could name any process.
        let ours = supervisor.recorded(&w.id, w.pid) || runs_executable(w.pid, &binary);
        if is_worker_process(w.pid, &w.id) && ours {
            if supervised_by_live_hive(w.pid) {
                continue;
            }
            let spec = WorkerSpec {
                worker: w.id.clone(),
                model: w.model.clone(),
                model_path: model_path.unwrap_or_default().into(),
                slots: w.slots,
                binary,
                cores: cores.clone(),
                device: None,
            };
            supervisor.adopt(spec, w.pid);
        } else if rbee_runtime::alive(w.pid) && is_worker_process(w.pid, &w.id) {
            // Alive but not provably ours: neither adopted nor declared gone.
            tracing::warn!(worker = %w.id, pid = w.pid, "a process claims this worker but was not started by a hive here; left alone");
        } else {
            tracing::warn!(worker = %w.id, pid = w.pid, "worker is gone while no hive watched it; recording its exit");
            let exited = Event::WorkerExited(WorkerExited {
                worker: w.id.clone(),
                node: node.into(),
                exit_code: None,
                signal: None,
            });
            if let Err(e) = log.append(exited, Expected::Any, &Meta::default()).await {
                tracing::error!(worker = %w.id, error = %e, "exit not recorded");
            }
        }
    }
}

/// Whether `pid` is a live rbee-worker process serving `worker` (guards against pid reuse).
fn is_worker_process(pid: u32, worker: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    rbee_runtime::alive(pid)
        && args.first().is_some_and(|a| String::from_utf8_lossy(a).contains("rbee-worker"))
        && args.windows(2).any(|p| p[0] == b"--worker-id" && p[1] == worker.as_bytes())
}

/// Whether `pid` runs the executable at `binary` (its real path).
fn runs_executable(pid: u32, binary: &std::path::Path) -> bool {
    let real = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    rbee_runtime::ProcessIdentity::of(pid).is_some_and(|p| p.exe == real)
}

/// Whether the process's parent is a live hive other than this one (another hive on this node).
fn supervised_by_live_hive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid =
        stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
    ppid.is_some_and(|ppid| ppid != std::process::id() && rbee_runtime::runs(ppid, "rbee-hive"))
}
