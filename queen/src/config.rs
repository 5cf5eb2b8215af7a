//! Queen configuration: flags, each also readable from the environment and from a TOML file
//! (`rbee_runtime::config_file`).

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "rbee-queen", version, about = "rbee queen: OpenAI-compatible gateway and scheduler")]
pub struct Config {
    #[command(flatten)]
    pub nats: rbee_runtime::NatsArgs,
    #[command(flatten)]
    pub log: rbee_runtime::LogArgs,
    /// Address the HTTP API listens on.
    #[arg(long, env = "RBEE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Postgres event store; when set, this queen archives the log into it.
    /// It holds a password: pass it in the environment, not on the command line.
    #[arg(long, env = "RBEE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// How long a request may wait in its model's queue for a slot before `QUEUE_TIMEOUT`.
    #[arg(long, env = "RBEE_QUEUE_TIMEOUT_SECS", default_value_t = 30)]
    pub queue_timeout_secs: u64,
    /// How many requests may wait per model before `QUEUE_FULL`.
    #[arg(long, env = "RBEE_QUEUE_DEPTH", default_value_t = 256)]
    pub queue_depth: usize,
    /// The longest a request may take, queue wait included, before `REQUEST_TIMEOUT` (a client may
    /// ask for less with the header `x-request-timeout: <seconds>`).
    #[arg(long, env = "RBEE_REQUEST_TIMEOUT_SECS", default_value_t = 600)]
    pub request_timeout_secs: u64,
    /// How long the stream may go without a token before the request fails.
    #[arg(long, env = "RBEE_TOKEN_TIMEOUT_SECS", default_value_t = 60)]
    pub token_timeout_secs: u64,
    /// Seconds without a heartbeat after which a worker is marked stale.
    #[arg(long, env = "RBEE_HEARTBEAT_TIMEOUT_SECS", default_value_t = 10)]
    pub heartbeat_timeout_secs: u64,
    /// Seconds a stale worker busy with requests keeps them before it is removed.
    #[arg(long, env = "RBEE_STALE_GRACE_SECS", default_value_t = 30)]
    pub stale_grace_secs: u64,
    /// Serve `/v1` without API keys. Only for a queen bound to loopback; it says so in its log.
    #[arg(long, env = "RBEE_NO_AUTH")]
    pub no_auth: bool,
    /// Seconds a client has to send a request's headers; a slower one is disconnected.
    #[arg(long, env = "RBEE_HEADER_TIMEOUT_SECS", default_value_t = 10.0)]
    pub header_timeout_secs: f64,
    /// Open connections one client address may hold; more are closed at once.
    #[arg(long, env = "RBEE_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256)]
    pub max_connections_per_client: usize,
    /// Web origins (`https://app.example`) whose pages may call the API from a browser; none by default.
    #[arg(long, env = "RBEE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "RBEE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
}

/// The keys a running queen takes on SIGHUP; the others wait for a restart.
pub const RELOADABLE: &[&str] = &[
    rbee_runtime::config_file::LOG_LEVEL,
    "queue_timeout_secs",
    "request_timeout_secs",
    "token_timeout_secs",
    "cors_origins",
];

impl Config {
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_secs(self.queue_timeout_secs)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_secs.max(1))
    }

    pub fn stale_grace(&self) -> Duration {
        Duration::from_secs(self.stale_grace_secs)
    }

    pub fn connection_limits(&self) -> crate::serve::ConnectionLimits {
        crate::serve::ConnectionLimits {
            header_timeout: Duration::from_secs_f64(self.header_timeout_secs.max(0.1)),
            max_per_client: self.max_connections_per_client.max(1),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }

    pub fn token_timeout(&self) -> Duration {
        Duration::from_secs(self.token_timeout_secs.max(1))
    }
}
