//! Postgres for the local stack: the machine's own binaries, a cluster under the data directory,
//! listening on a loopback port only, run as the `postgres` user when rbee runs as root (initdb
//! refuses root).
//!
//! Least privilege: every role logs in with a generated password (SCRAM), kept 0600 in the
//! secrets directory. `rbee_admin` (the superuser initdb makes) only sets up roles and the
//! database; `rbee_owner` owns the schema and runs the migrations; `rbee`, the role the queens
//! use, may read and append events and keep checkpoints, nothing else.

use rbee_bus::Code;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{self, run_checked};
use crate::{LocalError, LocalResult};

/// The role processes connect as.
pub const USER: &str = "rbee";
/// The role that owns the schema and runs migrations.
pub const OWNER: &str = "rbee_owner";
/// The superuser initdb makes; used only to set up roles and the database.
pub const ADMIN: &str = "rbee_admin";
pub const DATABASE: &str = "rbee";

/// The password of `role`, made on first use and kept 0600 in `secrets`.
pub fn password(secrets: &Path, role: &str) -> LocalResult<String> {
    let path = secrets.join(format!("postgres-{role}.password"));
    match std::fs::read_to_string(&path) {
        Ok(p) => Ok(p.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(secrets).map_err(|e| process::io_error("create", secrets, e))?;
            let random = || uuid::Uuid::new_v4().simple().to_string();
            let password = format!("{}{}", random(), random());
            crate::trust::write_secret(&path, &password)?;
            Ok(password)
        }
        Err(e) => Err(process::io_error("read", &path, e)),
    }
}

/// The database URL of `role` on `port`, with its password: give it to a process in its
/// environment or keep it in memory, never on a command line or in a log.
pub fn url_with_password(secrets: &Path, role: &str, port: u16, database: &str) -> LocalResult<String> {
    url_at(secrets, role, &format!("127.0.0.1:{port}"), database)
}

/// The database URL of `role` at `address` (`host:port`), with its password (see [`url_with_password`]).
pub fn url_at(secrets: &Path, role: &str, address: &str, database: &str) -> LocalResult<String> {
    Ok(format!("postgres://{role}:{}@{address}/{database}", password(secrets, role)?))
}

/// Makes the roles and the database of an event store that runs elsewhere (a container), as its
/// superuser, and brings the schema up to date as its owner. The passwords are the ones kept in
/// `secrets`. Waits up to `patience` for the server to take connections. Idempotent.
pub async fn prepare_remote(secrets: &Path, address: &str, patience: Duration) -> LocalResult<()> {
    let admin = url_at(secrets, ADMIN, address, "postgres")?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&admin).await {
            Ok(pool) => {
                pool.close().await;
                break;
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(LocalError::new(
                    Code::EventStoreUnavailable,
                    format!("Postgres at {address} took no connection within {}s: {e}", patience.as_secs()),
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    set_up_roles(secrets, &admin).await?;
    rbee_bus::archive::migrate(&url_at(secrets, OWNER, address, DATABASE)?)
        .await
        .map_err(|e| LocalError::new(Code::PostgresStartFailed, format!("cannot migrate the event store: {e}")))
}

/// `url` (as `cluster.json` keeps it, without a password) with the role's password put in.
pub fn with_password(url: &str, secrets: &Path) -> LocalResult<String> {
    match url.strip_prefix(&format!("postgres://{USER}@")) {
        Some(rest) => Ok(format!("postgres://{USER}:{}@{rest}", password(secrets, USER)?)),
        None => Ok(url.to_string()),
    }
}

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

/// Creates the cluster if missing, starts it on `port`, sets up the roles and the `rbee` database
/// and brings its schema up to date. Returns (postmaster pid, the `rbee` role's URL without its
/// password; [`with_password`] completes it).
pub async fn start(bin: &Path, root: &Path, port: u16, secrets: &Path) -> LocalResult<(u32, String)> {
    let data = root.join("data");
    let log = root.join("postgres.log");
    let admin_password = password(secrets, ADMIN)?;
    if !data.join("PG_VERSION").is_file() {
        // initdb reads the superuser's password from a file the cluster's owner can read.
        let pwfile = root.join("initdb.password");
        std::fs::write(&pwfile, &admin_password).map_err(|e| process::io_error("write", &pwfile, e))?;
        if is_root() {
            chown_postgres(&pwfile)?;
        }
        let made =
            run_checked(
                as_owner(&bin.join("initdb"))
                    .arg("-D")
                    .arg(&data)
                    .arg(format!("--pwfile={}", pwfile.display()))
                    .args(["-U", ADMIN, "-A", "scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions"]),
                "initdb",
            );
        let _ = std::fs::remove_file(&pwfile);
        made.map_err(|e| LocalError::new(Code::PostgresStartFailed, e.message))?;
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
    set_up_roles(secrets, &url_with_password(secrets, ADMIN, port, "postgres")?).await?;
    let owner = url_with_password(secrets, OWNER, port, DATABASE)?;
    rbee_bus::archive::migrate(&owner)
        .await
        .map_err(|e| LocalError::new(Code::PostgresStartFailed, format!("cannot migrate the event store: {e}")))?;
    Ok((pid, format!("postgres://{USER}@127.0.0.1:{port}/{DATABASE}")))
}

/// The owner and the processes' role, with their passwords, and the database the owner owns.
/// Idempotent: a restart sets the same passwords again. `admin` is the superuser's URL.
async fn set_up_roles(secrets: &Path, admin: &str) -> LocalResult<()> {
    let fail = |e: sqlx::Error| {
        LocalError::new(Code::PostgresStartFailed, format!("cannot set up the roles of the event store: {e}"))
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(admin)
        .await
        .map_err(|e| {
            LocalError::new(
                Code::PostgresStartFailed,
                format!(
                    "cannot log in to Postgres as {ADMIN} ({e}); a cluster made by an older rbee has no \
                     passwords: stop it and remove its postgres directory"
                ),
            )
        })?;
    for (role, extra) in [(OWNER, ""), (USER, " NOINHERIT")] {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&pool)
            .await
            .map_err(fail)?;
        if !exists {
            sqlx::query(&format!("CREATE ROLE {role}")).execute(&pool).await.map_err(fail)?;
        }
        // A password is a literal here (ALTER ROLE takes no parameters); it is hex, so it needs no quoting.
        let pw = password(secrets, role)?;
        let alter = format!("ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE{extra} PASSWORD '{pw}'");
        sqlx::query(&alter).execute(&pool).await.map_err(fail)?;
    }
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(DATABASE)
        .fetch_one(&pool)
        .await
        .map_err(fail)?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {DATABASE} OWNER {OWNER}")).execute(&pool).await.map_err(fail)?;
    }
    for grant in [
        format!("REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC"),
        format!("GRANT CONNECT ON DATABASE {DATABASE} TO {OWNER}, {USER}"),
    ] {
        sqlx::query(&grant).execute(&pool).await.map_err(fail)?;
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
