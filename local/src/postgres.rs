//! Postgres for the local stack: the machine's own binaries, a cluster under the data directory,
//! listening on a loopback port only, run as the `postgres` user when rbee runs as root (initdb
//! refuses root).

use rbee_bus::Code;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{self, run_checked};
use crate::{LocalError, LocalResult};

pub const USER: &str = "rbee";
pub const DATABASE: &str = "rbee";

/// Where the Postgres binaries are: `pg_ctl` on PATH, else the newest /usr/lib/postgresql/*/bin.
pub fn find_bin_dir() -> LocalResult<PathBuf> {
    if let Some(pg_ctl) = process::on_path("pg_ctl") {
        let resolved = std::fs::canonicalize(&pg_ctl).unwrap_or(pg_ctl);
        if let Some(dir) = resolved.parent().filter(|d| d.join("initdb").is_file()) {
            return Ok(dir.to_path_buf());
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).filter(|b| b.join("pg_ctl").is_file()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.pop().ok_or_else(|| {
        LocalError::new(
            Code::PostgresNotFound,
            "no Postgres binaries found (pg_ctl, initdb); install them, e.g. apt-get install postgresql",
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the user that owns the cluster.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Chooses the cluster's root directory: `preferred` when the owner can use it; as root, a
/// directory under /tmp when `preferred` sits below directories the `postgres` user cannot enter.
pub fn prepare_root(preferred: &Path) -> LocalResult<PathBuf> {
    std::fs::create_dir_all(preferred).map_err(|e| process::io_error("create", preferred, e))?;
    if !is_root() {
        return Ok(preferred.to_path_buf());
    }
    let usable = |dir: &Path| -> bool {
        chown_postgres(dir).is_ok()
            && Command::new("runuser")
                .args(["-u", "postgres", "--", "test", "-w"])
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success())
    };
    if usable(preferred) {
        return Ok(preferred.to_path_buf());
    }
    let digest = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(preferred.display().to_string().as_bytes())[..6])
    };
    let fallback = PathBuf::from(format!("/tmp/rbee-pg-{digest}"));
    std::fs::create_dir_all(&fallback).map_err(|e| process::io_error("create", &fallback, e))?;
    if usable(&fallback) {
        Ok(fallback)
    } else {
        Err(LocalError::new(
            Code::PostgresStartFailed,
            format!("the postgres user cannot write to {} or {}", preferred.display(), fallback.display()),
        ))
    }
}

fn chown_postgres(dir: &Path) -> LocalResult<()> {
    run_checked(Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir), "chown postgres").map(|_| ())
}

/// Creates the cluster if missing, starts it on `port`, creates the `rbee` database.
/// Returns (postmaster pid, database URL).
pub async fn start(bin: &Path, root: &Path, port: u16) -> LocalResult<(u32, String)> {
    let data = root.join("data");
    let log = root.join("postgres.log");
    if !data.join("PG_VERSION").is_file() {
        run_checked(
            as_owner(&bin.join("initdb")).arg("-D").arg(&data).args([
                "-U",
                USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ]),
            "initdb",
        )
        .map_err(|e| LocalError::new(Code::PostgresStartFailed, e.message))?;
    }
    let options = format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''");
    run_checked(
        as_owner(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"]),
        "pg_ctl start",
    )
    .map_err(|e| LocalError::new(Code::PostgresStartFailed, format!("{}; see {}", e.message, log.display())))?;
    let pid = postmaster_pid(root).ok_or_else(|| {
        LocalError::new(Code::PostgresStartFailed, format!("no postmaster.pid in {}", data.display()))
    })?;
    let admin = format!("postgres://{USER}@127.0.0.1:{port}/postgres");
    create_database(&admin).await?;
    Ok((pid, format!("postgres://{USER}@127.0.0.1:{port}/{DATABASE}")))
}

async fn create_database(admin_url: &str) -> LocalResult<()> {
    let fail =
        |e: sqlx::Error| LocalError::new(Code::PostgresStartFailed, format!("cannot create database {DATABASE}: {e}"));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(admin_url)
        .await
        .map_err(fail)?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(DATABASE)
        .fetch_one(&pool)
        .await
        .map_err(fail)?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {DATABASE}")).execute(&pool).await.map_err(fail)?;
    }
    pool.close().await;
    Ok(())
}

pub fn postmaster_pid(root: &Path) -> Option<u32> {
    std::fs::read_to_string(root.join("data").join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

/// Stops the cluster (fast shutdown: open sessions are ended, data is safe).
pub fn stop(bin: &Path, root: &Path) -> LocalResult<()> {
    run_checked(
        as_owner(&bin.join("pg_ctl")).arg("-D").arg(root.join("data")).args(["-m", "fast", "-w", "stop"]),
        "pg_ctl stop",
    )
    .map(|_| ())
}
