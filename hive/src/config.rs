//! Hive configuration: flags, each also readable from the environment and from a TOML file
//! (`rbee_runtime::config_file`).

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "rbee-hive", version, about = "rbee hive: one per machine; provisions models and supervises workers")]
pub struct Config {
    #[command(flatten)]
    pub nats: rbee_runtime::NatsArgs,
    #[command(flatten)]
    pub log: rbee_runtime::LogArgs,
    /// File with this node's seed for signing its workers' NATS identities (from `rbee nodes add`).
    #[arg(long, env = "RBEE_WORKER_SIGNING_KEY")]
    pub worker_signing_key: Option<PathBuf>,
    /// This machine's name in the cluster (default: the host name).
    #[arg(long, env = "RBEE_NODE")]
    pub node: Option<String>,
    /// Serve /livez, /readyz, /health and /metrics on this address (e.g. 127.0.0.1:9464); off
    /// when unset. `rbee up` gives its hive a loopback port.
    #[arg(long, env = "RBEE_HIVE_STATUS_ADDR")]
    pub status_addr: Option<std::net::SocketAddr>,
    /// A model this machine always serves (`file:///path.gguf`, `hf:org/repo:file.gguf`,
    /// `https://...`): when the hive starts and none of its workers serves it, the hive asks
    /// itself for one, as `rbee workers start` would. A machine that restarts serves again.
    #[arg(long, env = "RBEE_SERVE")]
    pub serve: Option<String>,
    /// The name clients use for the `--serve` model (default: from its reference).
    #[arg(long, env = "RBEE_SERVE_NAME", requires = "serve")]
    pub serve_name: Option<String>,
    /// Expected sha256 of the `--serve` model's file.
    #[arg(long, env = "RBEE_SERVE_SHA256", requires = "serve")]
    pub serve_sha256: Option<String>,
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
    /// Seconds a worker gets after SIGTERM (it finishes its requests in flight) before it is killed.
    #[arg(long, env = "RBEE_WORKER_GRACE_SECS", default_value_t = 30.0)]
    pub worker_grace_secs: f64,
    /// The worker executable for the cuda backend (default: `rbee-worker-cuda` beside this one, else on PATH).
    #[arg(long, env = "RBEE_WORKER_BIN_CUDA")]
    pub worker_bin_cuda: Option<PathBuf>,
    /// The worker executable for the metal backend (default: `rbee-worker-metal`).
    #[arg(long, env = "RBEE_WORKER_BIN_METAL")]
    pub worker_bin_metal: Option<PathBuf>,
    /// Seconds a worker may take to load its model and become ready; then it is killed (LOADING_TIMEOUT).
    #[arg(long, env = "RBEE_LOADING_TIMEOUT_SECS", default_value_t = 300.0)]
    pub loading_timeout_secs: f64,
    /// Whether a crashed worker is started again.
    #[arg(long, env = "RBEE_RESTART", value_enum, default_value = "on-failure")]
    pub restart: crate::supervisor::RestartPolicy,
    /// Restarts of one worker before the hive gives up on it.
    #[arg(long, env = "RBEE_MAX_RESTARTS", default_value_t = 3)]
    pub max_restarts: u32,
    /// Seconds a ready worker may sit without requests before it is stopped (0: never).
    #[arg(long, env = "RBEE_IDLE_TIMEOUT_SECS", default_value_t = 0.0)]
    pub idle_timeout_secs: f64,
    /// CPU cores workers are pinned to, e.g. `0-3,6` (default: all).
    #[arg(long, env = "RBEE_CPU_CORES")]
    pub cpu_cores: Option<String>,
    /// A model needs its memory estimate times this percentage of free RAM (or VRAM) to start.
    #[arg(long, env = "RBEE_RAM_FACTOR_PERCENT", default_value_t = 100)]
    pub ram_factor_percent: u64,
    /// A worker start warns when the models' disk is busier than this (percent of time doing I/O).
    #[arg(long, env = "RBEE_DISK_BUSY_WARN_PERCENT", default_value_t = 80)]
    pub disk_busy_warn_percent: u64,
    /// Read the GPUs from this JSON file instead of NVML (a stand-in for machines without a GPU:
    /// `[{"index":0,"name":"…","vram_total_bytes":…,"vram_free_bytes":…,"temperature_c":…}]`).
    #[arg(long, env = "RBEE_GPU_INVENTORY_FILE")]
    pub gpu_inventory_file: Option<PathBuf>,
    /// GPUs at or above this temperature (Celsius) take no new worker.
    #[arg(long, env = "RBEE_MAX_GPU_TEMPERATURE_C", default_value_t = 85)]
    pub max_gpu_temperature_c: u32,
    /// The model hub (a mirror works), as huggingface_hub reads it.
    #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
    pub hf_endpoint: String,
    /// Hosts models may be downloaded from, as URLs (default: HF_ENDPOINT). Anything else is refused.
    #[arg(long, env = "RBEE_ALLOWED_HOSTS", value_delimiter = ',', value_parser = allowed_host)]
    pub allowed_hosts: Vec<String>,
    /// Directories local model files may be taken from (default: <data-dir>/models). Anything else is refused.
    #[arg(long, env = "RBEE_ALLOWED_DIRS", value_delimiter = ',', value_parser = allowed_dir)]
    pub allowed_dirs: Vec<PathBuf>,
    /// Token for gated or private models, sent as a bearer token.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,
    /// Bytes per download chunk: each is synced and recorded as a `download.progressed` event.
    #[arg(long, env = "RBEE_DOWNLOAD_CHUNK_BYTES", default_value_t = 8 << 20)]
    pub download_chunk_bytes: u64,
    /// Retries of a failed download (with exponential backoff) before it fails.
    #[arg(long, env = "RBEE_DOWNLOAD_RETRIES", default_value_t = 5)]
    pub download_retries: u32,
    /// Seconds without a byte before a download attempt is abandoned and retried.
    #[arg(long, env = "RBEE_DOWNLOAD_STALL_SECS", default_value_t = 30.0)]
    pub download_stall_secs: f64,
    /// Milliseconds before the first download retry; doubled per retry up to 30 s.
    #[arg(long, env = "RBEE_DOWNLOAD_BACKOFF_MS", default_value_t = 500)]
    pub download_backoff_ms: u64,
    /// Download bandwidth limit in bytes per second (0: none).
    #[arg(long, env = "RBEE_DOWNLOAD_LIMIT_BYTES_PER_SEC", default_value_t = 0)]
    pub download_limit_bytes_per_sec: u64,
}

/// The keys a running hive takes on SIGHUP; the others wait for a restart.
pub const RELOADABLE: &[&str] = &[
    rbee_runtime::config_file::LOG_LEVEL,
    "allowed_hosts",
    "allowed_dirs",
    "max_workers",
    "loading_timeout_secs",
    "ram_factor_percent",
    "max_gpu_temperature_c",
    "disk_busy_warn_percent",
];

impl Config {
    /// Fails on a malformed `--cpu-cores`.
    pub fn cores(&self) -> Result<Option<Vec<usize>>, String> {
        self.cpu_cores.as_deref().map(crate::supervisor::parse_cores).transpose()
    }

    pub fn download_settings(&self) -> crate::fetch::DownloadSettings {
        crate::fetch::DownloadSettings {
            chunk_bytes: self.download_chunk_bytes,
            retries: self.download_retries,
            stall: Duration::from_secs_f64(self.download_stall_secs.clamp(0.1, 3600.0)),
            backoff: Duration::from_millis(self.download_backoff_ms),
            limit_bytes_per_sec: self.download_limit_bytes_per_sec,
            hub: crate::fetch::hub::HubSettings { endpoint: self.hf_endpoint.clone(), token: self.hf_token.clone() },
        }
    }

    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(rbee_runtime::hostname)
    }

    /// Where models may come from: the listed hosts and directories, or HF_ENDPOINT and the models directory.
    pub fn source_policy(&self) -> Result<crate::sources::SourcePolicy, String> {
        let hosts =
            if self.allowed_hosts.is_empty() { vec![self.hf_endpoint.clone()] } else { self.allowed_hosts.clone() };
        let mut dirs = self.allowed_dirs.clone();
        dirs.push(std::path::absolute(self.models_dir()).map_err(|e| e.to_string())?);
        crate::sources::SourcePolicy::new(&hosts, &dirs)
    }

    pub fn models_dir(&self) -> PathBuf {
        self.data_dir.join("models")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    pub fn supervisor_settings(&self) -> crate::supervisor::SupervisorSettings {
        crate::supervisor::SupervisorSettings {
            grace: secs(self.worker_grace_secs),
            restart: self.restart,
            max_restarts: self.max_restarts,
        }
    }

    pub fn loading_timeout(&self) -> Duration {
        secs(self.loading_timeout_secs)
    }

    /// `None` when workers are never stopped for idleness.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0.0).then(|| secs(self.idle_timeout_secs))
    }

    pub fn limits(&self) -> crate::preflight::Limits {
        crate::preflight::Limits {
            ram_factor_percent: self.ram_factor_percent,
            max_gpu_temperature_c: self.max_gpu_temperature_c,
        }
    }

    /// The worker binary for a backend: as configured, else beside this executable, else on PATH.
    pub fn worker_binary(&self, backend: &str) -> PathBuf {
        let (given, name) = match backend {
            "cuda" => (&self.worker_bin_cuda, "rbee-worker-cuda"),
            "metal" => (&self.worker_bin_metal, "rbee-worker-metal"),
            _ => (&self.worker_bin, "rbee-worker"),
        };
        if let Some(bin) = given {
            return bin.clone();
        }
        let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join(name)));
        beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from(name))
    }
}

fn allowed_host(url: &str) -> Result<String, String> {
    crate::sources::origin(url).map(|_| url.to_string()).ok_or_else(|| "not an http(s) URL without user info".into())
}

fn allowed_dir(dir: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(dir);
    (path.is_absolute() || path.exists()).then_some(path).ok_or_else(|| "not an absolute path".into())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e7))
}
