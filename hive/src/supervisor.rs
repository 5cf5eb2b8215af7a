//! Worker processes: spawned (pinned to the configured cores), watched until they exit, restarted
//! after a crash per policy, adopted again by a restarted hive, and stopped with SIGTERM then SIGKILL
//! after a grace period. Every exit is a `worker.exited` event with its code or signal, and every
//! signal the hive sends is a `worker.signalled` event with the reason.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_bus::Code;
use rbee_bus::outbox::{Outbox, OutboxError};
use rbee_bus::{Event, EventLog, Meta, WorkerExited, WorkerSignalled};
use tokio_util::task::TaskTracker;

use crate::identity::WorkerIdentities;

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
    pub fn code(&self) -> Code {
        match self {
            SpawnError::BinaryMissing(_) => Code::WorkerBinaryMissing,
            SpawnError::BinaryNotExecutable(_) => Code::WorkerBinaryNotExecutable,
            SpawnError::Io(_) => Code::WorkerSpawnFailed,
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
    /// The executable for the worker's backend.
    pub binary: PathBuf,
    /// CPU cores the process may run on (`None`: all).
    pub cores: Option<Vec<usize>>,
    /// The GPU it uses (exposed to it as its only device through `CUDA_VISIBLE_DEVICES`).
    pub device: Option<u32>,
}

/// When a worker that exited on its own is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestartPolicy {
    Never,
    /// After a crash (a non-zero exit or a signal the hive did not send).
    OnFailure,
}

#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    pub grace: Duration,
    pub restart: RestartPolicy,
    /// Restarts of one worker before the hive gives up on it.
    pub max_restarts: u32,
}

/// A process the supervisor answers for.
struct Tracked {
    pid: u32,
    spec: WorkerSpec,
    /// Why the hive is stopping it, once it is.
    stopping: Option<&'static str>,
    restarts: u32,
}

#[derive(Clone)]
pub struct Supervisor {
    log: EventLog,
    node: String,
    /// How the hive reaches NATS; its workers reach it the same way, each as itself.
    nats: rbee_runtime::NatsArgs,
    identities: Arc<WorkerIdentities>,
    /// One file per running worker this hive started: its process identity (see `rbee down`).
    records_dir: PathBuf,
    /// `<data-dir>/outbox`: the hive's facts about its workers (`hive/`) and each worker's own.
    outbox_dir: PathBuf,
    /// Exits and signals on their way to the log, kept through a log that cannot take them.
    outbox: Arc<Outbox>,
    logs_dir: PathBuf,
    settings: SupervisorSettings,
    running: Arc<Mutex<HashMap<String, Tracked>>>,
    watchers: TaskTracker,
}

/// The environment variable (and flag) that holds the node's worker signing key.
pub const WORKER_SIGNING_KEY_ENV: &str = "RBEE_WORKER_SIGNING_KEY";

/// How long reading a worker's history may take when the log is unreachable: never hang on it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Supervisor {
    pub fn new(
        log: EventLog,
        node: String,
        nats: rbee_runtime::NatsArgs,
        identities: WorkerIdentities,
        data_dir: &Path,
        logs_dir: PathBuf,
        settings: SupervisorSettings,
    ) -> Result<Self, OutboxError> {
        let outbox_dir = data_dir.join("outbox");
        let outbox = Outbox::open(&outbox_dir.join("hive"), rbee_bus::outbox::CAPACITY)?;
        Ok(Supervisor {
            log,
            node,
            nats,
            identities: Arc::new(identities),
            records_dir: rbee_runtime::worker_records(data_dir),
            outbox_dir,
            outbox,
            logs_dir,
            settings,
            running: Default::default(),
            watchers: TaskTracker::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Workers this supervisor answers for, with their pids.
    pub fn workers(&self) -> Vec<(String, u32)> {
        self.lock().iter().map(|(w, t)| (w.clone(), t.pid)).collect()
    }

    /// Starts a worker process; returns its pid. Its exit is recorded when it happens.
    pub fn spawn(&self, spec: &WorkerSpec) -> Result<u32, SpawnError> {
        self.spawn_incarnation(spec.clone(), 0)
    }

    fn spawn_incarnation(&self, spec: WorkerSpec, restarts: u32) -> Result<u32, SpawnError> {
        let binary = check_binary(&spec.binary)?;
        std::fs::create_dir_all(&self.logs_dir)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs_dir.join(format!("worker-{}.log", spec.worker)))?;
        let creds = self.identities.issue(&spec.worker)?;
        let mut command = tokio::process::Command::new(binary);
        // The worker speaks as itself: its own credentials, never the hive's or its signing key.
        command.env_remove(WORKER_SIGNING_KEY_ENV).env_remove("RBEE_NATS_CREDS");
        if let Some(creds) = creds {
            command.env("RBEE_NATS_CREDS", creds);
        }
        for (name, file) in [("RBEE_NATS_CA", &self.nats.nats_ca), ("RBEE_NATS_CERT", &self.nats.nats_cert)] {
            if let Some(file) = file {
                command.env(name, file);
            }
        }
        command
            .arg("--nats-url")
            .arg(&self.nats.nats_url)
            .arg("--node")
            .arg(&self.node)
            .arg("--worker-id")
            .arg(&spec.worker)
            .arg("--outbox-dir")
            .arg(self.outbox_path(&spec.worker))
            .arg("--model")
            .arg(&spec.model)
            .arg("--model-path")
            .arg(&spec.model_path)
            .arg("--slots")
            .arg(spec.slots.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(device) = spec.device {
            command.env("CUDA_VISIBLE_DEVICES", device.to_string());
        }
        if let Some(cores) = spec.cores.clone() {
            // SAFETY: sched_setaffinity is async-signal-safe; the set is built before fork.
            unsafe {
                command.pre_exec(move || pin_to(&cores));
            }
        }
        let child = command.spawn()?;
        let pid = child.id().unwrap_or(0);
        match rbee_runtime::ProcessIdentity::of(pid) {
            Some(identity) => {
                if let Err(e) = identity.save(&self.record_path(&spec.worker)) {
                    tracing::warn!(worker = %spec.worker, error = %e, "worker process not recorded");
                }
            }
            None => tracing::warn!(worker = %spec.worker, pid, "worker process gone before it was recorded"),
        }
        tracing::info!(worker = %spec.worker, pid, restarts, cores = ?spec.cores, "worker spawned");
        let worker = spec.worker.clone();
        self.lock().insert(worker.clone(), Tracked { pid, spec, stopping: None, restarts });
        let this = self.clone();
        self.watchers.spawn(async move {
            let mut child = child;
            let (exit_code, signal) = match child.wait().await {
                Ok(s) => (s.code(), s.signal()),
                Err(e) => {
                    tracing::error!(%worker, error = %e, "lost track of worker");
                    (None, None)
                }
            };
            this.exited(&worker, pid, exit_code, signal).await;
        });
        Ok(pid)
    }

    /// Where the process identity of `worker` is recorded.
    fn record_path(&self, worker: &str) -> PathBuf {
        self.records_dir.join(format!("{worker}.json"))
    }

    /// Where `worker` keeps the facts the log has not taken yet; a worker started again under the
    /// same id (a restart after a crash) sends what is left there.
    fn outbox_path(&self, worker: &str) -> PathBuf {
        self.outbox_dir.join("workers").join(worker)
    }

    /// Whether `pid` is the very process a hive of this data directory recorded for `worker`.
    pub fn recorded(&self, worker: &str, pid: u32) -> bool {
        rbee_runtime::ProcessIdentity::load(&self.record_path(worker)).is_some_and(|r| r.pid == pid && r.is_running())
    }

    /// Takes charge of a worker process a previous hive started and that still runs: it is watched
    /// (by its pid, as it is not our child) and stopped like the others.
    pub fn adopt(&self, spec: WorkerSpec, pid: u32) {
        let worker = spec.worker.clone();
        tracing::info!(%worker, pid, "adopted a running worker");
        self.lock().insert(worker.clone(), Tracked { pid, spec, stopping: None, restarts: 0 });
        let this = self.clone();
        self.watchers.spawn(async move {
            while rbee_runtime::alive(pid) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Not our child: its exit status went to init.
            this.exited(&worker, pid, None, None).await;
        });
    }

    /// Records an exit, then restarts the worker if it crashed and the policy says so.
    async fn exited(&self, worker: &str, pid: u32, exit_code: Option<i32>, signal: Option<i32>) {
        let tracked = {
            let mut running = self.lock();
            match running.get(worker) {
                Some(t) if t.pid == pid => running.remove(worker),
                _ => None,
            }
        };
        tracing::info!(%worker, pid, ?exit_code, ?signal, "worker exited");
        if tracked.is_some() {
            self.identities.revoke(worker);
            let _ = std::fs::remove_file(self.record_path(worker));
        }
        if !self.was_registered_incarnation(worker, pid).await {
            tracing::info!(%worker, pid, "the exited process never held this worker id (another incarnation does); nothing recorded");
            return;
        }
        let exited =
            Event::WorkerExited(WorkerExited { worker: worker.into(), node: self.node.clone(), exit_code, signal });
        self.record(exited).await;
        let Some(t) = tracked else { return };
        let crashed = t.stopping.is_none() && exit_code != Some(0);
        if !crashed || self.settings.restart == RestartPolicy::Never {
            return;
        }
        if t.restarts >= self.settings.max_restarts {
            tracing::error!(%worker, restarts = t.restarts, "worker keeps crashing; not restarted again");
            return;
        }
        let delay = Duration::from_millis(500 << t.restarts.min(6));
        tracing::warn!(%worker, ?exit_code, ?signal, ?delay, "worker crashed; restarting it");
        tokio::time::sleep(delay).await;
        if let Err(e) = self.spawn_incarnation(t.spec, t.restarts + 1) {
            tracing::error!(%worker, error = %e, "worker not restarted");
        }
    }

    /// Keeps a fact for the log (see [`Outbox`]).
    async fn record(&self, event: Event) {
        let kind = event.kind();
        if let Err(e) = self.outbox.record(event, &Meta::default()) {
            tracing::error!(error = %e, kind, "not recorded");
        }
    }

    /// The hive's outbox, for its drainer.
    pub fn outbox(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }

    /// Events waiting to reach the log, by owner: this hive's, then each worker's outbox.
    pub fn outbox_waiting(&self) -> Vec<(String, usize)> {
        let mut waiting = vec![("hive".to_string(), self.outbox.pending())];
        if let Ok(dirs) = std::fs::read_dir(self.outbox_dir.join("workers")) {
            for dir in dirs.flatten() {
                let worker = dir.file_name().to_string_lossy().into_owned();
                waiting.push((worker, rbee_bus::outbox::waiting_in(&dir.path())));
            }
        }
        waiting
    }

    /// False when another process (pid) is the registered incarnation of `worker`: an exit of this
    /// one (e.g. it lost the registration race) must not remove that one from the registry.
    async fn was_registered_incarnation(&self, worker: &str, pid: u32) -> bool {
        let subject = rbee_bus::subjects::worker(&self.node, worker);
        match tokio::time::timeout(READ_TIMEOUT, rbee_bus::read::read_subject(&self.log, &subject)).await {
            Ok(Ok(history)) => history
                .iter()
                .rev()
                .find_map(|r| match &r.envelope.event {
                    Event::WorkerRegistered(reg) => Some(reg.pid == pid),
                    _ => None,
                })
                .unwrap_or(true),
            _ => true,
        }
    }

    /// Sends `sig` to a tracked worker and records it with `reason`.
    async fn signal(&self, worker: &str, pid: u32, sig: i32, reason: &'static str) {
        send_signal(pid, sig);
        let signalled = Event::WorkerSignalled(WorkerSignalled {
            worker: worker.into(),
            node: self.node.clone(),
            pid,
            signal: sig,
            reason: reason.into(),
        });
        self.record(signalled).await;
    }

    /// Stops one worker: SIGTERM (it drains its requests), then SIGKILL after the grace period.
    pub async fn stop(&self, worker: &str, reason: &'static str) {
        let Some(pid) = self.mark_stopping(worker, reason) else { return };
        self.signal(worker, pid, libc::SIGTERM, reason).await;
        let deadline = tokio::time::Instant::now() + self.settings.grace;
        while tokio::time::Instant::now() < deadline {
            if self.lock().get(worker).is_none_or(|t| t.pid != pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.lock().get(worker).is_some_and(|t| t.pid == pid) {
            tracing::warn!(%worker, pid, "worker did not exit within the grace period; killing it");
            self.signal(worker, pid, libc::SIGKILL, "grace_expired").await;
        }
    }

    /// Stops every worker at once, and returns when every exit has been recorded.
    pub async fn stop_all(&self, reason: &'static str) {
        let workers: Vec<String> = self.lock().keys().cloned().collect();
        futures::future::join_all(workers.iter().map(|w| self.stop(w, reason))).await;
        self.watchers.close();
        self.watchers.wait().await;
    }

    /// Kills a worker that did not become ready in time, and keeps it from being restarted.
    pub async fn kill(&self, worker: &str, reason: &'static str) {
        let Some(pid) = self.mark_stopping(worker, reason) else { return };
        self.signal(worker, pid, libc::SIGKILL, reason).await;
    }

    /// Notes that the hive ends this worker on purpose (so its exit is no crash); its pid.
    fn mark_stopping(&self, worker: &str, reason: &'static str) -> Option<u32> {
        let mut running = self.lock();
        let t = running.get_mut(worker)?;
        t.stopping = Some(reason);
        Some(t.pid)
    }
}

/// The binary if it exists and may be executed.
pub fn check_binary(binary: &Path) -> Result<PathBuf, SpawnError> {
    let resolved = resolve(binary).ok_or_else(|| SpawnError::BinaryMissing(binary.display().to_string()))?;
    let mode = std::fs::metadata(&resolved)?.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(SpawnError::BinaryNotExecutable(resolved.display().to_string()));
    }
    Ok(resolved)
}

fn pin_to(cores: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it for indexes < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &core in cores.iter().filter(|c| **c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(core, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn send_signal(pid: u32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill has no memory effects; the pid is one this supervisor spawned or adopted and still tracks.
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

/// Parses a core list such as `0-3,6`.
pub fn parse_cores(list: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("invalid core list {list:?}: use e.g. 0-3,6");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b >= 1024 {
                    return Err(bad());
                }
                cores.extend(a..=b);
            }
            None => cores.push(part.parse().ok().filter(|c| *c < 1024).ok_or_else(bad)?),
        }
    }
    if cores.is_empty() {
        return Err(format!("invalid core list {list:?}: no cores"));
    }
    cores.sort_unstable();
    cores.dedup();
    Ok(cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists_parse() {
        assert_eq!(parse_cores("0").unwrap(), vec![0]);
        assert_eq!(parse_cores("0-2,5,1").unwrap(), vec![0, 1, 2, 5]);
        for bad in ["", "a", "3-1", "0-5000", "-1"] {
            assert!(parse_cores(bad).is_err(), "{bad:?} accepted");
        }
    }
}
