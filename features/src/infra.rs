//! Bare infrastructure for integration tests: a nats-server with JetStream, and a Postgres cluster,
//! each private to the test, started with the same code `rbee up` uses.

use std::path::PathBuf;
use std::time::Duration;

use rbee_local::{nats, postgres, process};

/// A private nats-server; stopped (by PID) when dropped.
pub struct Nats {
    pub url: String,
    pub monitor_url: String,
    pid: u32,
    dir: PathBuf,
}

impl Nats {
    pub async fn start() -> Nats {
        let binary = nats::find_or_install(&crate::tools_dir()).expect("nats-server available");
        let dir = crate::scratch_dir("nats");
        let ports = process::free_ports(2).unwrap();
        let (port, monitor_port) = (ports[0], ports[1]);
        let plan = nats::NatsPlan {
            binary: &binary,
            port,
            monitor_port,
            store_dir: &dir.join("store"),
            log: &dir.join("nats.log"),
            sync_interval: "2m",
        };
        let pid = nats::start(&plan).await.expect("nats-server starts");
        Nats {
            url: format!("nats://127.0.0.1:{port}"),
            monitor_url: format!("http://127.0.0.1:{monitor_port}"),
            pid,
            dir,
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        process::stop(self.pid, "nats-server", Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Postgres cluster; stopped when dropped.
pub struct Postgres {
    pub url: String,
    bin: PathBuf,
    root: PathBuf,
}

impl Postgres {
    pub async fn start() -> Postgres {
        let bin = postgres::find_bin_dir().expect("postgres binaries");
        let root = postgres::prepare_root(&crate::scratch_dir("pg")).expect("postgres dir");
        let (_, url) = postgres::start(&bin, &root, process::free_port().unwrap()).await.expect("postgres starts");
        Postgres { url, bin, root }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = postgres::stop(&self.bin, &self.root);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
