//! Bare infrastructure for integration tests: a nats-server with JetStream, and a Postgres cluster,
//! each private to the test, started with the same code `rbee up` uses.

use std::path::PathBuf;
use std::time::Duration;

use rbee_local::trust::{Identity, Trust};
use rbee_local::{nats, postgres, process};

/// A private nats-server that requires credentials, as every rbee cluster's does; stopped (by PID)
/// when dropped.
pub struct Nats {
    pub url: String,
    /// Its admin identity (every right).
    pub admin: rbee_bus::NatsAccess,
    pub monitor_url: String,
    pid: u32,
    dir: PathBuf,
}

impl Nats {
    /// The credentials file of `identity` in this server's trust.
    pub fn creds(&self, identity: Identity) -> PathBuf {
        rbee_local::trust::creds_path(&self.dir.join("trust"), identity)
    }

    /// `rbee` flags that point a command at this server as its admin.
    pub fn cli_args(&self) -> Vec<String> {
        let creds = self.creds(Identity::Admin).display().to_string();
        vec!["--nats-url".into(), self.url.clone(), "--nats-creds".into(), creds]
    }

    pub async fn start() -> Nats {
        Nats::start_with(true, false).await
    }

    /// A nats-server that lets anyone in: only a benchmark's baseline for the cost of credentials.
    pub async fn start_without_auth() -> Nats {
        Nats::start_with(false, false).await
    }

    /// A nats-server that requires credentials and TLS (its CA is [`Nats::ca`]).
    pub async fn start_with_tls() -> Nats {
        Nats::start_with(true, true).await
    }

    /// The CA a TLS server's certificate is signed by.
    pub fn ca(&self) -> Option<PathBuf> {
        let ca = self.dir.join("trust").join("nats-ca.pem");
        ca.exists().then_some(ca)
    }

    /// The client certificate a TLS server verifies.
    pub fn cert(&self) -> Option<PathBuf> {
        let cert = self.dir.join("trust").join("nats-client.pem");
        cert.exists().then_some(cert)
    }

    async fn start_with(auth: bool, tls: bool) -> Nats {
        let binary = nats::find_or_install(&crate::tools_dir()).expect("nats-server available");
        let dir = crate::scratch_dir("nats");
        let ports = process::free_ports(2).unwrap();
        let (port, monitor_port) = (ports[0], ports[1]);
        let trust = Trust::open(&dir.join("trust")).expect("trust");
        let auth = if auth { trust.server_config().expect("server config") } else { String::new() };
        let tls_files =
            tls.then(|| rbee_local::tls::ensure(&dir.join("trust"), &["127.0.0.1".into()]).expect("TLS files"));
        let plan = nats::NatsPlan {
            binary: &binary,
            port,
            monitor_port,
            store_dir: &dir.join("store"),
            log: &dir.join("nats.log"),
            sync_interval: "2m",
            auth: &auth,
            tls: tls_files.as_ref(),
        };
        let pid = nats::start(&plan).await.expect("nats-server starts");
        let url = format!("nats://127.0.0.1:{port}");
        Nats {
            admin: rbee_bus::NatsAccess::new(&url, Some(trust.creds(Identity::Admin)))
                .with_tls(tls_files.as_ref().map(|t| t.ca.clone()), tls_files.as_ref().map(|t| t.client.clone())),
            url,
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
    /// As the role the queens use (read and append).
    pub url: String,
    /// As the schema's owner.
    pub owner_url: String,
    bin: PathBuf,
    root: PathBuf,
    port: u16,
}

impl Postgres {
    pub async fn start() -> Postgres {
        let bin = postgres::find_bin_dir().expect("postgres binaries");
        let root = postgres::prepare_root(&crate::scratch_dir("pg")).expect("postgres dir");
        let secrets = root.join("secrets");
        let port = process::free_port().unwrap();
        let (_, url) = postgres::start(&bin, &root, port, &secrets).await.expect("postgres starts");
        let url = postgres::with_password(&url, &secrets).expect("the rbee role's password");
        let owner_url = postgres::url_with_password(&secrets, postgres::OWNER, port, postgres::DATABASE).unwrap();
        Postgres { url, owner_url, bin, root, port }
    }

    /// Stops the server (a fast shutdown: connections are cut), keeping its data.
    pub fn stop(&self) {
        postgres::stop(&self.bin, &self.root).expect("postgres stops");
    }

    /// Starts it again on the same port and data.
    pub async fn start_again(&self) {
        postgres::start(&self.bin, &self.root, self.port, &self.root.join("secrets")).await.expect("postgres starts");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = postgres::stop(&self.bin, &self.root);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
