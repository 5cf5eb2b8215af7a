//! Worker configuration: flags, each also readable from the environment.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "rbee-worker", version, about = "rbee inference worker: serves one GGUF model over NATS")]
pub struct Config {
    /// NATS server (JetStream enabled).
    #[arg(long, env = "RBEE_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
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
    /// Seconds between heartbeats.
    #[arg(long, env = "RBEE_HEARTBEAT_SECS", default_value_t = 2)]
    pub heartbeat_secs: u64,
}

impl Config {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }
}
