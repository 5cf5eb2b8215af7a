//! `rbee down`: stops what `rbee up` started, by the PIDs it recorded: the queen, then the hive
//! (which stops its workers and records their exits), then nats-server and Postgres.

use std::path::Path;
use std::time::Duration;

use crate::cluster_file::ClusterFile;
use crate::error::CliResult;
use rbee_local::{postgres, process};

pub async fn down(data_dir: &Path) -> CliResult<()> {
    match ClusterFile::load(data_dir) {
        Some(cf) => {
            stop_cluster(&cf);
            // Workers whose hive died (SIGKILL) outlive it; the hive recorded each one it started.
            for (worker, identity) in recorded_workers(data_dir) {
                if identity.is_running() && process::stop(identity.pid, "rbee-worker", Duration::from_secs(10)) {
                    println!("stopped worker {worker} (pid {}) that had lost its hive", identity.pid);
                }
            }
            ClusterFile::remove(data_dir);
            println!("rbee is down");
        }
        None => println!("nothing to stop: no cluster recorded in {}", data_dir.display()),
    }
    Ok(())
}

/// The worker processes the local hive recorded starting (never pids read from the log, which
/// anyone who could write an event there would choose).
fn recorded_workers(data_dir: &Path) -> Vec<(String, rbee_runtime::ProcessIdentity)> {
    let dir = rbee_runtime::worker_records(data_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let worker = e.path().file_stem()?.to_str()?.to_string();
            Some((worker, rbee_runtime::ProcessIdentity::load(&e.path())?))
        })
        .collect()
}

/// Stops every process the file names that is still ours. Safe on a half-started cluster.
pub fn stop_cluster(cf: &ClusterFile) {
    // The hive gives its workers their own grace period before it exits.
    for (pid, name, grace) in
        [(cf.queen_pid, "rbee-queen", 10), (cf.hive_pid, "rbee-hive", 30), (cf.nats_pid, "nats-server", 10)]
    {
        if cf.still_ours(pid) {
            process::stop(pid, name, Duration::from_secs(grace));
        }
    }
    if let (Some(bin), Some(root)) = (&cf.postgres_bin, &cf.postgres_root)
        && postgres::postmaster_pid(root).is_some_and(|pid| process::is_ours(pid, "postgres"))
        && let Err(e) = postgres::stop(bin, root)
    {
        eprintln!("warning: {e}");
    }
}
