//! Background processes started by `rbee up`: detached into their own session, output to a log
//! file, tracked by PID, and stopped only by that PID (after checking it is still ours).

use rbee_bus::Code;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{LocalError, LocalResult};

/// Starts `program` detached (own session, no stdin), appending its output to `log`.
pub fn spawn_detached(program: &Path, args: &[String], log: &Path, envs: &[(&str, String)]) -> LocalResult<u32> {
    use std::os::unix::process::CommandExt;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create log dir", dir, e))?;
    }
    let out =
        std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| io_error("open log", log, e))?;
    let err = out.try_clone().map_err(|e| io_error("open log", log, e))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal and process group,
    // so Ctrl+C in this shell does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| LocalError::new(Code::SpawnFailed, format!("cannot start {}: {e}", program.display())))?;
    Ok(child.id())
}

/// Whether `pid` is alive and its command line mentions `expected` (guards against PID reuse).
pub fn is_ours(pid: u32, expected: &str) -> bool {
    rbee_runtime::runs(pid, expected)
}

/// SIGTERM, then SIGKILL after `grace`. Returns once the process is gone. Only for PIDs we started.
pub fn stop(pid: u32, expected: &str, grace: Duration) -> bool {
    if !is_ours(pid, expected) {
        return false;
    }
    signal(pid, libc::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if !is_ours(pid, expected) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(pid, libc::SIGKILL);
    while is_ours(pid, expected) {
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain syscall; the pid was checked to be a process we started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// A free TCP port on loopback.
pub fn free_port() -> LocalResult<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free TCP ports on loopback. All listeners are held until every port is chosen, so
/// the kernel cannot hand the same port out twice (one at a time, it may).
pub fn free_ports(n: usize) -> LocalResult<Vec<u16>> {
    let fail = |e: std::io::Error| LocalError::new(Code::NoFreePort, format!("cannot find a free port: {e}"));
    let listeners =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)).collect::<LocalResult<Vec<_>>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(fail)).collect()
}

/// Looks for an executable: beside this one first (a cargo build puts them together), then on PATH.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join(name)));
    beside.filter(|p| p.is_file()).or_else(|| on_path(name))
}

pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or(None)
}

pub fn io_error(what: &str, path: &Path, e: std::io::Error) -> LocalError {
    LocalError::new(Code::IoError, format!("cannot {what} {}: {e}", path.display()))
}

/// Runs a command to completion; its output becomes part of the error if it fails.
pub fn run_checked(cmd: &mut Command, what: &str) -> LocalResult<String> {
    let out = cmd.output().map_err(|e| LocalError::new(Code::CommandFailed, format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(LocalError::new(
            Code::CommandFailed,
            format!("{what} failed ({}): {}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join(" | ")),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
