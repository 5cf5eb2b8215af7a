//! Worker processes: spawned, watched, and stopped (SIGTERM, grace, SIGKILL). Every exit is recorded
//! as a `worker.exited` event with its code or signal.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_bus::{Event, EventLog, Expected, Meta, WorkerExited};
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("worker binary {0} not found; build it (cargo build) or pass --worker-bin")]
    BinaryMissing(String),
    #[error("worker binary {0} is not executable; chmod +x it")]
    BinaryNotExecutable(String),
    #[error("cannot start worker: {0}")]
    Io(#[from] std::io::Error),
}

impl SpawnError {
    pub fn code(&self) -> &'static str {
        match self {
            SpawnError::BinaryMissing(_) => "WORKER_BINARY_MISSING",
            SpawnError::BinaryNotExecutable(_) => "WORKER_BINARY_NOT_EXECUTABLE",
            SpawnError::Io(_) => "WORKER_SPAWN_FAILED",
        }
    }
}

/// What the hive needs to start one worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub worker: String,
    pub model: String,
    pub model_path: PathBuf,
    pub slots: u32,
}

#[derive(Clone)]
pub struct Supervisor {
    log: EventLog,
    node: String,
    nats_url: String,
    binary: PathBuf,
    logs_dir: PathBuf,
    running: Arc<Mutex<HashMap<String, u32>>>,
    waiters: TaskTracker,
}

impl Supervisor {
    pub fn new(log: EventLog, node: String, nats_url: String, binary: PathBuf, logs_dir: PathBuf) -> Self {
        Supervisor { log, node, nats_url, binary, logs_dir, running: Default::default(), waiters: TaskTracker::new() }
    }

    /// Checks the worker binary before anything is spawned.
    pub fn check_binary(&self) -> Result<PathBuf, SpawnError> {
        let resolved = resolve(&self.binary).ok_or_else(|| SpawnError::BinaryMissing(self.binary.display().to_string()))?;
        let mode = std::fs::metadata(&resolved)?.permissions().mode();
        if mode & 0o111 == 0 {
            return Err(SpawnError::BinaryNotExecutable(resolved.display().to_string()));
        }
        Ok(resolved)
    }

    /// Starts a worker process; returns its pid. Its exit is recorded when it happens.
    pub fn spawn(&self, spec: &WorkerSpec) -> Result<u32, SpawnError> {
        let binary = self.check_binary()?;
        std::fs::create_dir_all(&self.logs_dir)?;
        let log_file = std::fs::File::create(self.logs_dir.join(format!("worker-{}.log", spec.worker)))?;
        let mut child = tokio::process::Command::new(binary)
            .arg("--nats-url").arg(&self.nats_url)
            .arg("--node").arg(&self.node)
            .arg("--worker-id").arg(&spec.worker)
            .arg("--model").arg(&spec.model)
            .arg("--model-path").arg(&spec.model_path)
            .arg("--slots").arg(spec.slots.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(spec.worker.clone(), pid);
        tracing::info!(worker = %spec.worker, pid, "worker spawned");
        let this = self.clone();
        let worker = spec.worker.clone();
        self.waiters.spawn(async move {
            let status = child.wait().await;
            this.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&worker);
            let (exit_code, signal) = match status {
                Ok(s) => (s.code(), s.signal()),
                Err(e) => {
                    tracing::error!(%worker, error = %e, "lost track of worker");
                    (None, None)
                }
            };
            tracing::info!(%worker, ?exit_code, ?signal, "worker exited");
            if !this.was_registered_incarnation(&worker, pid).await {
                tracing::info!(%worker, pid, "the exited process never held this worker id (another incarnation does); nothing recorded");
                return;
            }
            let exited = Event::WorkerExited(WorkerExited { worker: worker.clone(), node: this.node.clone(), exit_code, signal });
            if let Err(e) = this.log.append(exited, Expected::Any, &Meta::default()).await {
                tracing::error!(%worker, error = %e, "worker exit not recorded");
            }
        });
        Ok(pid)
    }

    /// False when another process (pid) is the registered incarnation of `worker`: an exit of this
    /// one (e.g. it lost the registration race) must not remove that one from the registry.
    async fn was_registered_incarnation(&self, worker: &str, pid: u32) -> bool {
        let subject = rbee_bus::subjects::aggregate(rbee_bus::AggregateKind::Worker, worker);
        match rbee_bus::read::read_subject(&self.log, &subject).await {
            Ok(history) => history
                .iter()
                .rev()
                .find_map(|r| match &r.envelope.event {
                    Event::WorkerRegistered(reg) => Some(reg.pid == pid),
                    _ => None,
                })
                .unwrap_or(true),
            Err(_) => true,
        }
    }

    /// Stops every worker: SIGTERM to all at once, then SIGKILL to those still running after `grace`.
    /// Returns when every exit has been recorded.
    pub async fn stop_all(&self, grace: Duration) {
        let pids: Vec<u32> = self.running.lock().unwrap_or_else(|p| p.into_inner()).values().copied().collect();
        for pid in &pids {
            signal(*pid, libc::SIGTERM);
        }
        self.waiters.close();
        if tokio::time::timeout(grace, self.waiters.wait()).await.is_err() {
            let left: Vec<(String, u32)> = self.running.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(w, p)| (w.clone(), *p)).collect();
            for (worker, pid) in left {
                tracing::warn!(%worker, pid, "worker ignored SIGTERM; killing it");
                signal(pid, libc::SIGKILL);
            }
            self.waiters.wait().await;
        }
    }
}

fn signal(pid: u32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill has no memory effects; the pid is one this supervisor spawned and still tracks.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

/// A path as given if it has a directory part, else looked up on PATH.
fn resolve(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}
