//! Each worker speaks on the bus as itself: a NATS user named after its id, signed by this node's
//! scoped signing key, whose permissions (fixed by the cluster's account, not by this hive) reach
//! only that worker's heartbeat, events, work items and token streams. The credentials file is
//! written 0600 before the worker starts and handed over by path in its environment.

use std::path::{Path, PathBuf};

use rbee_bus::auth::WorkerIssuer;

/// Issues workers' identities; no issuer when the hive itself connects without credentials.
pub struct WorkerIdentities {
    issuer: Option<WorkerIssuer>,
    dir: PathBuf,
}

impl WorkerIdentities {
    pub fn load(hive_creds: Option<&Path>, signing_key: Option<&Path>, dir: PathBuf) -> Result<Self, String> {
        let issuer = match (hive_creds, signing_key) {
            (None, _) => None,
            (Some(_), None) => {
                return Err("--worker-signing-key is required when the hive has NATS credentials".into());
            }
            (Some(creds), Some(key)) => Some(WorkerIssuer::load(creds, key)?),
        };
        Ok(WorkerIdentities { issuer, dir })
    }

    /// Writes `worker`'s credentials file and returns its path (None: workers connect without).
    pub fn issue(&self, worker: &str) -> std::io::Result<Option<PathBuf>> {
        let Some(issuer) = &self.issuer else { return Ok(None) };
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{worker}.creds"));
        rbee_runtime::write_secret(&path, &issuer.issue(worker))?;
        Ok(Some(path))
    }

    /// Forgets a worker's credentials once it has exited.
    pub fn revoke(&self, worker: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{worker}.creds")));
    }
}
