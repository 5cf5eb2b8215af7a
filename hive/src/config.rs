//! Hive configuration: flags, each also readable from the environment.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "rbee-hive", version, about = "rbee hive: one per machine; provisions models and supervises workers")]
pub struct Config {
    /// NATS server (JetStream enabled).
    #[arg(long, env = "RBEE_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// This machine's name in the cluster (default: the host name).
    #[arg(long, env = "RBEE_NODE")]
    pub node: Option<String>,
    /// Where models and worker logs live.
    #[arg(long, env = "RBEE_DATA_DIR", default_value = ".rbee")]
    pub data_dir: PathBuf,
    /// The worker executable (default: `rbee-worker` beside this executable, else on PATH).
    #[arg(long, env = "RBEE_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// Most workers the cluster's registry may hold; a start beyond it fails with REGISTRY_FULL.
    #[arg(long, env = "RBEE_MAX_WORKERS", default_value_t = 64)]
    pub max_workers: usize,
    /// Seconds between checks that every catalogued model file of this node still exists.
    #[arg(long, env = "RBEE_CATALOG_CHECK_SECS", default_value_t = 30)]
    pub catalog_check_secs: u64,
    /// Seconds a worker gets to exit after SIGTERM before it is killed.
    #[arg(long, env = "RBEE_WORKER_GRACE_SECS", default_value_t = 10)]
    pub worker_grace_secs: u64,
}

impl Config {
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(rbee_bus::process::hostname)
    }

    pub fn models_dir(&self) -> PathBuf {
        self.data_dir.join("models")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    pub fn worker_grace(&self) -> Duration {
        Duration::from_secs(self.worker_grace_secs)
    }

    /// The worker binary to spawn.
    pub fn worker_binary(&self) -> PathBuf {
        if let Some(bin) = &self.worker_bin {
            return bin.clone();
        }
        let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("rbee-worker")));
        beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("rbee-worker"))
    }
}
