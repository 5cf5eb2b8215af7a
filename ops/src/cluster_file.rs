//! `<data-dir>/cluster.json`: what `rbee up` started and where it listens, so later commands
//! (`down`, `infer`, `workers`, `events`) find the cluster, and `down` stops exactly those PIDs.

use rbee_bus::Code;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, CliResult};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterFile {
    pub nats_url: String,
    pub nats_monitor_url: String,
    pub queen_url: String,
    /// The hive's /livez, /readyz, /health and /metrics, on loopback.
    #[serde(default)]
    pub hive_status_url: Option<String>,
    pub database_url: Option<String>,
    pub node: String,
    pub model: String,
    pub nats_pid: u32,
    pub hive_pid: u32,
    pub queen_pid: u32,
    pub postgres_pid: Option<u32>,
    pub postgres_root: Option<PathBuf>,
    pub postgres_bin: Option<PathBuf>,
    /// The identity (pid, start time, executable) of each process `up` started: `down` signals a
    /// recorded pid only while it is still that very process.
    #[serde(default)]
    pub processes: Vec<rbee_runtime::ProcessIdentity>,
    /// The CA that signed nats-server's certificate, when it serves TLS (`rbee up --nats-tls`).
    #[serde(default)]
    pub nats_ca: Option<PathBuf>,
    /// The client certificate (and key) processes and the CLI show nats-server, which verifies it.
    #[serde(default)]
    pub nats_cert: Option<PathBuf>,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster.json")
}

impl ClusterFile {
    /// NATS as `creds`, over TLS when the cluster serves it.
    pub fn nats(&self, creds: Option<PathBuf>) -> rbee_bus::NatsAccess {
        rbee_bus::NatsAccess::new(&self.nats_url, creds).with_tls(self.nats_ca.clone(), self.nats_cert.clone())
    }

    /// Records the process `pid` that `up` just started.
    pub fn record(&mut self, pid: u32) {
        self.processes.extend(rbee_runtime::ProcessIdentity::of(pid));
    }

    /// Whether `pid` is still the process `up` recorded under it.
    pub fn still_ours(&self, pid: u32) -> bool {
        self.processes.iter().any(|p| p.pid == pid && p.is_running())
    }

    pub fn load(data_dir: &Path) -> Option<ClusterFile> {
        let text = std::fs::read_to_string(path(data_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self, data_dir: &Path) -> CliResult<()> {
        let p = path(data_dir);
        let text = serde_json::to_string_pretty(self).expect("plain struct serializes");
        std::fs::write(&p, text).map_err(|e| CliError::new(Code::IoError, format!("cannot write {}: {e}", p.display())))
    }

    pub fn remove(data_dir: &Path) {
        let _ = std::fs::remove_file(path(data_dir));
    }
}
