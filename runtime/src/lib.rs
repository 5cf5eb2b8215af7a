//! What every rbee process does the same way: logging, one shutdown token that SIGINT/SIGTERM
//! cancel, the exit code of its result, and what it needs to know about this host's processes.

pub mod config_file;
pub mod status;

use std::process::ExitCode;

use rbee_bus::Code;

use tokio_util::sync::CancellationToken;

/// Logs to stderr (coloured on a terminal), filtered by `filter` (a `--log-level`), else `RUST_LOG`, else `info`.
pub fn init_tracing(filter: Option<&str>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (layer, handle) = tracing_subscriber::reload::Layer::new(log_filter(filter));
    // Colours only on a terminal: a log file or `docker logs` gets plain `key=value` text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let logger = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour);
    if tracing_subscriber::registry().with(layer).with(logger).try_init().is_ok() {
        let _ = LOG_FILTER.set(handle);
    }
}

type FilterHandle = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// Filters the log from now on as `filter` says (as [`init_tracing`] reads it).
pub fn set_log_filter(filter: Option<&str>) {
    if let Some(handle) = LOG_FILTER.get()
        && let Err(e) = handle.reload(log_filter(filter))
    {
        tracing::error!(error = %e, "log filter not changed");
    }
}

fn log_filter(filter: Option<&str>) -> tracing_subscriber::EnvFilter {
    const DEFAULT: &str = "info,sqlx=warn,async_nats=warn";
    filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(DEFAULT))
}

/// What a process logs: the same flag on every rbee process.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// What to log, as a tracing filter (`warn`, `debug`, `rbee_queen=debug,info`); default:
    /// `RUST_LOG`, else `info`. Changes on SIGHUP.
    #[arg(long, env = "RBEE_LOG", value_parser = valid_log_filter)]
    pub log_level: Option<String>,
}

fn valid_log_filter(filter: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(filter).map(|_| filter.to_string()).map_err(|e| e.to_string())
}

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}

/// This machine's name as rbee accepts names: the host name with other characters replaced by `_`.
pub fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    let name: String =
        raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(64).collect();
    if name.is_empty() { "localhost".into() } else { name }
}

/// Makes ring the TLS crypto provider of this process (async-nats already brings it; HTTP clients
/// then use it too instead of compiling a second one). Call before building an HTTP client.
pub fn use_ring_for_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether `pid` is a live process: it exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    pid > 0 && !stat.is_empty() && !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
}

/// Whether `pid` is a live process whose command line mentions `program` (guards against pid reuse).
pub fn runs(pid: u32, program: &str) -> bool {
    alive(pid)
        && String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).contains(program)
}

/// The process's exit: 0 when `result` is ok, else `error[CODE]: message` on stderr and 1.
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>, code: impl Fn(&E) -> Code) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error[{}]: {e}", code(&e));
            ExitCode::from(1)
        }
    }
}

/// How a process reaches NATS and as whom: the same two flags on every rbee process.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server (JetStream enabled).
    #[arg(long, env = "RBEE_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Credentials file of this process's NATS identity (a path: the secret is never on the command line).
    #[arg(long, env = "RBEE_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// The cluster's CA certificate: connect over TLS, to a server it signed only.
    #[arg(long, env = "RBEE_NATS_CA")]
    pub nats_ca: Option<std::path::PathBuf>,
    /// This machine's client certificate and key (one PEM file), for a server that verifies clients.
    #[arg(long, env = "RBEE_NATS_CERT")]
    pub nats_cert: Option<std::path::PathBuf>,
    /// Seconds between pings to a silent NATS server; after three unanswered the client moves to
    /// another server. Lower in a cluster, so a server that vanished costs less than a heartbeat timeout.
    #[arg(long, env = "RBEE_NATS_PING_SECS", default_value_t = rbee_bus::auth::DEFAULT_PING.as_secs_f64())]
    pub nats_ping_secs: f64,
}

impl NatsArgs {
    pub fn access(&self) -> rbee_bus::NatsAccess {
        rbee_bus::NatsAccess::new(&self.nats_url, self.nats_creds.clone())
            .with_tls(self.nats_ca.clone(), self.nats_cert.clone())
            .with_ping(std::time::Duration::from_secs_f64(self.nats_ping_secs.clamp(0.5, 3600.0)))
    }
}

/// A process as the kernel knows it: its pid, when it started (clock ticks after boot) and its
/// executable. A pid alone can be reused, and a command line can be made to say anything; all
/// three together name one process, so rbee signals only what it recorded when it started it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_ticks: u64,
    pub exe: std::path::PathBuf,
}

impl ProcessIdentity {
    /// The identity of the live process `pid`, if there is one.
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        if !alive(pid) {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22 (starttime); fields after the parenthesised command name start at 3.
        let start_ticks = stat.rsplit(')').next()?.split_whitespace().nth(19)?.parse().ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        // A binary replaced after the start shows as "<path> (deleted)": still the same process.
        let exe = exe.to_string_lossy().trim_end_matches(" (deleted)").into();
        Some(ProcessIdentity { pid, start_ticks, exe })
    }

    /// Whether the recorded process still runs (and is not another one with the same pid).
    pub fn is_running(&self) -> bool {
        ProcessIdentity::of(self.pid).as_ref() == Some(self)
    }

    /// Writes the record to `path`.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec(self).map_err(std::io::Error::other)?)
    }

    /// The record in `path`, if it holds one.
    pub fn load(path: &std::path::Path) -> Option<ProcessIdentity> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// Writes a file only its owner can read. The text goes to a private temporary file first, which
/// then replaces `path` in one rename: a reader sees the old file or the new one, never none (a
/// worker starting while its credentials are rewritten) and never a half-written one.
pub fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}-{n}.tmp", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(text.as_bytes()).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Where a hive records the worker processes it started, one file per worker: `<data-dir>/workers`.
pub fn worker_records(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("workers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_known_by_pid_start_and_executable() {
        let me = ProcessIdentity::of(std::process::id()).expect("this process");
        assert!(me.is_running());
        assert_eq!(me.exe, std::env::current_exe().unwrap());
        let other = ProcessIdentity { start_ticks: me.start_ticks + 1, ..me.clone() };
        assert!(!other.is_running(), "the same pid started at another time is another process");
    }

    #[test]
    fn a_secret_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rbee-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        write_secret(&path, "one").unwrap();
        write_secret(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
