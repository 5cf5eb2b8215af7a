//! `rbee down`: stops what `rbee up` started, by the PIDs it recorded: the queen, then the hive
//! (which stops its workers and records their exits), then nats-server and Postgres.

use std::path::Path;
use std::time::Duration;

use rbee_projections::history::Until;

use crate::cluster_file::ClusterFile;
use crate::error::CliResult;
use rbee_local::{postgres, process, trust};

pub async fn down(data_dir: &Path) -> CliResult<()> {
    match ClusterFile::load(data_dir) {
        Some(cf) => {
            let leftovers = workers_on_node(&cf, data_dir).await;
            stop_cluster(&cf);
            // Workers whose hive died (SIGKILL) outlive it; the log knows them by id and pid.
            for (worker, pid) in leftovers {
                if process::stop(pid, &worker, Duration::from_secs(10)) {
                    println!("stopped worker {worker} (pid {pid}) that had lost its hive");
                }
            }
            ClusterFile::remove(data_dir);
            println!("rbee is down");
        }
        None => println!("nothing to stop: no cluster recorded in {}", data_dir.display()),
    }
    Ok(())
}

/// Workers the log places on this cluster's node, with their pids.
async fn workers_on_node(cf: &ClusterFile, data_dir: &Path) -> Vec<(String, u32)> {
    let reader = trust::creds_path(&trust::dir_in(data_dir), trust::Identity::Operator);
    let nats = rbee_bus::NatsAccess::new(&cf.nats_url, Some(reader));
    let Ok(log) = rbee_bus::EventLog::connect(&nats).await else { return Vec::new() };
    let Ok(folded) = rbee_projections::history::replay_to(&log, None, Until::End).await else { return Vec::new() };
    let view = folded.view;
    view.registry.workers.values().filter(|w| w.node == cf.node).map(|w| (w.id.clone(), w.pid)).collect()
}

/// Stops every process the file names that is still ours. Safe on a half-started cluster.
pub fn stop_cluster(cf: &ClusterFile) {
    process::stop(cf.queen_pid, "rbee-queen", Duration::from_secs(10));
    // The hive gives its workers their own grace period before it exits.
    process::stop(cf.hive_pid, "rbee-hive", Duration::from_secs(30));
    process::stop(cf.nats_pid, "nats-server", Duration::from_secs(10));
    if let (Some(bin), Some(root)) = (&cf.postgres_bin, &cf.postgres_root)
        && postgres::postmaster_pid(root).is_some_and(|pid| process::is_ours(pid, "postgres"))
        && let Err(e) = postgres::stop(bin, root)
    {
        eprintln!("warning: {e}");
    }
}
