//! `rbee nodes add`: makes a machine a member of the local cluster. Its hive gets credentials of
//! its own (it may write only its node's events and read only its node's commands) and a signing
//! key for its workers' identities; nats-server learns the key without a restart.

use std::path::Path;

use rbee_bus::Code;
use rbee_local::nats;
use rbee_local::trust::{self, Identity, Trust};

use crate::cluster_file::ClusterFile;
use crate::error::{CliError, CliResult};

pub async fn add(data_dir: &Path, node: &str) -> CliResult<()> {
    let cf = ClusterFile::load(data_dir).ok_or_else(|| {
        CliError::new(Code::ClusterNotFound, format!("no cluster recorded in {}; run rbee up", data_dir.display()))
    })?;
    let trust = Trust::open(&trust::dir_in(data_dir))?;
    trust.add_node(node)?;
    nats::reload_auth(&data_dir.join("nats"), &trust.server_config()?, cf.nats_pid, &cf.nats_monitor_url).await?;
    println!("node {node} joined; start its hive with");
    println!("  RBEE_NATS_URL={}", cf.nats_url);
    println!("  RBEE_NATS_CREDS={}", trust.creds(Identity::Hive(node)).display());
    println!("  RBEE_WORKER_SIGNING_KEY={}", trust.worker_signer(node).display());
    if let Some(ca) = &cf.nats_ca {
        println!("  RBEE_NATS_CA={}", ca.display());
    }
    if let Some(cert) = &cf.nats_cert {
        println!("  RBEE_NATS_CERT={}", cert.display());
    }
    Ok(())
}
