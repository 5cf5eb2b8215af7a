//! A whole local cluster, started the way a user starts it: `rbee up` in a private data directory.

use std::path::PathBuf;
use std::process::{Command, Output};

use rbee_bus::NatsAccess;
use rbee_local::trust::{self, Identity};
use serde_json::Value;

/// A running cluster; `rbee down` when dropped.
pub struct Cluster {
    pub data_dir: PathBuf,
    pub queen_url: String,
    pub nats_url: String,
    /// NATS as the cluster's admin (every right): what a test uses to look and to meddle.
    pub admin: NatsAccess,
    /// The CA of the cluster's nats-server when it serves TLS.
    pub nats_ca: Option<PathBuf>,
    /// The client certificate (and key) the cluster's nats-server verifies, when it serves TLS.
    pub nats_cert: Option<PathBuf>,
    pub database_url: String,
    /// The API key `rbee up` made for the cluster.
    pub api_key: String,
    pub node: String,
    /// What `rbee up` printed.
    pub up_output: String,
}

impl Cluster {
    /// `rbee up` with the default model (from the shared cache) on free ports.
    pub fn up(extra: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::up_with_env(extra, &[])
    }

    /// `rbee up` with extra environment for its processes (the hive reads HF_ENDPOINT, RBEE_DOWNLOAD_*).
    pub fn up_with_env(extra: &[&str], env: &[(&str, String)]) -> anyhow::Result<Cluster> {
        Cluster::up_in(crate::scratch_dir("cluster"), extra, env)
    }

    /// `rbee up` in the given data directory (the cluster removes it when dropped).
    pub fn up_in(data_dir: PathBuf, extra: &[&str], env: &[(&str, String)]) -> anyhow::Result<Cluster> {
        let node = unique_node();
        let mut args = vec!["up", "--port", "0", "--node", &node];
        args.extend_from_slice(extra);
        let out = rbee_command(&data_dir, &args).envs(env.iter().map(|(k, v)| (k, v))).output().expect("run rbee");
        let up_output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let cluster = Cluster::attach(data_dir, node, up_output);
        if !out.status.success() {
            // The data directory goes with the cluster: keep what its processes said.
            let mut logs = String::new();
            for name in ["queen.log", "hive.log", "nats.log"] {
                let text = cluster.log_file(name);
                let lines: Vec<&str> = text.lines().collect();
                logs.push_str(&format!(
                    "--- last lines of {name}\n{}\n",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                ));
            }
            anyhow::bail!("rbee up failed ({}):\n{}\n{logs}", out.status, cluster.up_output);
        }
        Ok(cluster)
    }

    /// `rbee <args>` against this cluster, not yet run.
    pub fn rbee_command_for(&self, args: &[&str]) -> Command {
        rbee_command(&self.data_dir, args)
    }

    /// What `rbee up` recorded in `cluster.json` now (pids, ports, files).
    pub fn file(&self) -> Value {
        let text = std::fs::read_to_string(self.data_dir.join("cluster.json")).expect("cluster.json");
        serde_json::from_str(&text).expect("cluster.json is JSON")
    }

    /// Runs `rbee <args>` against this cluster.
    pub fn rbee(&self, args: &[&str]) -> Output {
        rbee(&self.data_dir, args)
    }

    /// Every event in the log now (heartbeats included when asked), decoded by `rbee events tail`.
    pub fn events(&self, heartbeats: bool) -> Vec<Value> {
        let mut args = vec!["events", "tail", "--no-follow"];
        if !heartbeats {
            args.push("--no-heartbeats");
        }
        let out = self.rbee(&args);
        assert!(out.status.success(), "rbee events tail failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    /// Events of one type.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events(kind == "worker.heartbeat").into_iter().filter(|e| e["type"] == kind).collect()
    }

    /// The registry as `rbee workers --json` shows it.
    pub fn workers(&self) -> Vec<Value> {
        let out = self.rbee(&["workers", "--json"]);
        assert!(out.status.success(), "rbee workers failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).expect("workers JSON").as_array().cloned().unwrap_or_default()
    }

    /// An HTTP client that sends this cluster's API key with every request.
    pub fn http(&self) -> reqwest::Client {
        rbee_runtime::use_ring_for_tls();
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = format!("Bearer {}", self.api_key);
        headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().expect("a key is a valid header value"));
        reqwest::Client::builder().default_headers(headers).build().expect("an HTTP client")
    }

    /// A client of this cluster's NATS as its admin.
    pub async fn admin_client(&self) -> async_nats::Client {
        rbee_bus::EventLog::connect(&self.admin).await.expect("admin connects").client().clone()
    }

    /// The path of `identity`'s credentials file in this cluster's trust.
    pub fn creds(&self, identity: Identity) -> PathBuf {
        trust::creds_path(&trust::dir_in(&self.data_dir), identity)
    }

    /// The environment a hive of `node` runs with: this cluster's NATS and the node's identity.
    /// A node other than the cluster's joins first (`rbee nodes add`).
    pub fn hive_env(&self, node: &str) -> Vec<(&'static str, String)> {
        let signer = trust::dir_in(&self.data_dir).join("nodes").join(format!("{node}.nk"));
        if !signer.exists() {
            let out = self.rbee(&["nodes", "add", node]);
            assert!(out.status.success(), "rbee nodes add {node}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut env = vec![
            ("RBEE_NATS_URL", self.nats_url.clone()),
            ("RBEE_NATS_CREDS", self.creds(Identity::Hive(node)).display().to_string()),
            ("RBEE_WORKER_SIGNING_KEY", signer.display().to_string()),
            // Workers start from the default model in the shared cache.
            ("RBEE_ALLOWED_DIRS", crate::cache_dir().display().to_string()),
        ];
        env.extend(self.tls_env());
        env
    }

    /// Where this cluster's processes find its CA and client certificate, when its NATS serves TLS.
    fn tls_env(&self) -> Vec<(&'static str, String)> {
        let files = [("RBEE_NATS_CA", &self.nats_ca), ("RBEE_NATS_CERT", &self.nats_cert)];
        files.into_iter().filter_map(|(name, file)| Some((name, file.as_ref()?.display().to_string()))).collect()
    }

    /// The environment a queen runs with: this cluster's NATS as the queen.
    pub fn queen_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("RBEE_NATS_URL", self.nats_url.clone()),
            ("RBEE_NATS_CREDS", self.creds(Identity::Queen).display().to_string()),
        ];
        env.extend(self.tls_env());
        env
    }

    /// Credentials for a worker `worker` of `node`, issued as that node's hive issues them.
    pub fn worker_creds(&self, node: &str, worker: &str) -> PathBuf {
        let env = self.hive_env(node);
        let issuer = rbee_bus::auth::WorkerIssuer::load(env[1].1.as_ref(), env[2].1.as_ref()).expect("signing key");
        let path = self.data_dir.join(format!("{worker}.creds"));
        trust::write_secret(&path, &issuer.issue(worker)).expect("worker credentials");
        path
    }

    /// Starts one more hive on this cluster's log, as another node with its own data directory.
    pub fn spawn_hive<K: AsRef<std::ffi::OsStr>>(
        &self,
        node: &str,
        data_dir: &std::path::Path,
        env: &[(K, String)],
    ) -> std::process::Child {
        std::fs::create_dir_all(data_dir.join("logs")).expect("hive data dir");
        let log = std::fs::File::create(data_dir.join("logs").join(format!("hive-{node}.log"))).expect("hive log");
        Command::new(crate::bin("rbee-hive"))
            .args(["--node", node, "--data-dir"])
            .arg(data_dir)
            .envs(self.hive_env(node))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("hive log"))
            .stderr(log)
            .spawn()
            .expect("rbee-hive starts")
    }

    /// The cluster a data directory describes (its `cluster.json`, trust and API key), as `rbee
    /// up` or `rbee cluster init` wrote it.
    pub fn attach(data_dir: PathBuf, node: String, up_output: String) -> Cluster {
        let file = data_dir.join("cluster.json");
        let cluster_file: Value =
            std::fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
        let nats_url = cluster_file["nats_url"].as_str().unwrap_or_default().to_string();
        let admin_creds = trust::creds_path(&trust::dir_in(&data_dir), Identity::Admin);
        let nats_ca = cluster_file["nats_ca"].as_str().map(PathBuf::from);
        let nats_cert = cluster_file["nats_cert"].as_str().map(PathBuf::from);
        let api_key = std::fs::read_to_string(data_dir.join("api-key")).unwrap_or_default().trim().to_string();
        Cluster {
            api_key,
            queen_url: cluster_file["queen_url"].as_str().unwrap_or_default().to_string(),
            admin: NatsAccess::new(&nats_url, Some(admin_creds)).with_tls(nats_ca.clone(), nats_cert.clone()),
            nats_ca,
            nats_cert,
            nats_url,
            database_url: rbee_local::postgres::with_password(
                cluster_file["database_url"].as_str().unwrap_or_default(),
                &trust::dir_in(&data_dir),
            )
            .unwrap_or_default(),
            data_dir,
            node,
            up_output,
        }
    }

    pub fn log_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.data_dir.join("logs").join(name)).unwrap_or_default()
    }
}

impl Cluster {
    /// `rbee down` and remove the data directory. Also done on drop.
    pub fn down(&self) {
        if !self.data_dir.exists() {
            return;
        }
        let out = self.rbee(&["down"]);
        if !out.status.success() {
            eprintln!("rbee down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.down();
    }
}

/// A node name no other test uses.
pub fn unique_node() -> String {
    format!("node-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// `rbee` with the shared caches and a data directory.
pub fn rbee(data_dir: &std::path::Path, args: &[&str]) -> Output {
    rbee_command(data_dir, args).output().expect("run rbee")
}

pub fn rbee_command(data_dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(crate::bin("rbee"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RBEE_TOOLS_DIR", crate::tools_dir())
        .env("RBEE_CACHE_DIR", crate::cache_dir())
        .env_remove("RBEE_URL")
        .env_remove("RBEE_NATS_URL")
        .env_remove("RBEE_NATS_CREDS")
        .env_remove("RBEE_PORT");
    cmd
}
