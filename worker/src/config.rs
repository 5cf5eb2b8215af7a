//! Worker configuration: flags, each also readable from the environment and from a TOML file
//! (`rbee_runtime::config_file`).

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "rbee-worker", version, about = "rbee inference worker: serves one GGUF model over NATS")]
pub struct Config {
    #[command(flatten)]
    pub nats: rbee_runtime::NatsArgs,
    #[command(flatten)]
    pub log: rbee_runtime::LogArgs,
    /// The node (machine) this worker runs on.
    #[arg(long, env = "RBEE_NODE")]
    pub node: String,
    /// This worker's id; unique in the cluster.
    #[arg(long, env = "RBEE_WORKER_ID")]
    pub worker_id: String,
    /// The model name clients ask for.
    #[arg(long, env = "RBEE_MODEL")]
    pub model: String,
    /// The GGUF file to load.
    #[arg(long, env = "RBEE_MODEL_PATH")]
    pub model_path: PathBuf,
    /// Concurrent requests this worker accepts.
    #[arg(long, env = "RBEE_WORKER_SLOTS", default_value_t = 1)]
    pub slots: u32,
    /// Most seconds to let in-flight requests finish after SIGTERM (draining) before exiting.
    #[arg(long, env = "RBEE_DRAIN_SECS", default_value_t = 120)]
    pub drain_secs: u64,
    /// Threads for inference (default: the machine's physical cores).
    #[arg(long, env = "RBEE_WORKER_THREADS")]
    pub threads: Option<usize>,
    /// Where facts wait for the log when it cannot take them (default: a directory named after the
    /// worker in the system's temporary directory). A worker started again with the same id sends
    /// what its previous incarnation left there.
    #[arg(long, env = "RBEE_OUTBOX_DIR")]
    pub outbox_dir: Option<PathBuf>,
    /// Seconds one generation may run; past it, it ends with GENERATION_TIMEOUT and the text made so far.
    #[arg(long, env = "RBEE_GENERATION_TIMEOUT_SECS", default_value_t = 600.0)]
    pub generation_timeout_secs: f64,
    /// Serve /livez, /readyz, /health and /metrics on this address; off when unset.
    #[arg(long, env = "RBEE_WORKER_STATUS_ADDR")]
    pub status_addr: Option<std::net::SocketAddr>,
    /// Seconds between heartbeats.
    #[arg(long, env = "RBEE_HEARTBEAT_SECS", default_value_t = 2)]
    pub heartbeat_secs: u64,
}

/// The keys a running worker takes on SIGHUP; the others wait for a restart.
pub const RELOADABLE: &[&str] = &[rbee_runtime::config_file::LOG_LEVEL];

impl Config {
    /// Threads for the forward pass: `--threads`, or the physical cores.
    pub fn inference_threads(&self) -> usize {
        self.threads.unwrap_or_else(physical_cores).max(1)
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.outbox_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("rbee-outbox-{}", self.worker_id)))
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }
}

/// Physical cores: distinct (package, core) pairs in sysfs; logical CPUs when sysfs does not say.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let read = |cpu: usize, what: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{what}"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let cores: std::collections::BTreeSet<(String, String)> =
        (0..logical).filter_map(|cpu| Some((read(cpu, "physical_package_id")?, read(cpu, "core_id")?))).collect();
    if cores.is_empty() { logical } else { cores.len() }
}

#[cfg(test)]
mod tests {
    #[test]
    fn physical_cores_are_at_least_one_and_at_most_the_logical_cpus() {
        let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let physical = super::physical_cores();
        assert!((1..=logical).contains(&physical), "{physical} of {logical}");
    }
}
