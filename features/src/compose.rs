//! The compose cluster of `docker-compose.yml`, started the way a user starts it
//! (`scripts/cluster up DIR`), under a compose project of its own on free loopback ports, and
//! taken down (containers and files) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::cluster::Cluster;

/// Set to run the test command without the compose scenarios, on a machine without Docker.
pub const SKIP_ENV: &str = "RBEE_SKIP_DOCKER";

/// Whether the user opted out of the scenarios that need a Docker engine.
pub fn skipped() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| v == "1")
}

pub struct Compose {
    /// What `rbee cluster init` wrote.
    pub dir: PathBuf,
    pub project: String,
    /// The cluster as the host's CLI sees it (`DIR/client`): the balancer's URL, NATS, the API key.
    pub cluster: Cluster,
    /// What `scripts/cluster up` printed.
    pub up_output: String,
    /// Containers started beside the project's (machines that joined), removed with it.
    pub machines: std::sync::Mutex<Vec<String>>,
}

/// The repository's root (where `docker-compose.yml` and `scripts/` are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("features/ is in the repository").to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl Compose {
    /// Builds the images and starts the whole cluster from nothing; returns once it answered a
    /// chat request through the balancer.
    pub fn up() -> anyhow::Result<Compose> {
        let engine = Command::new("docker").arg("info").output();
        if !engine.as_ref().is_ok_and(|o| o.status.success()) {
            anyhow::bail!(
                "no Docker engine answers (`docker info` failed): the compose scenarios need one; \
                 set {SKIP_ENV}=1 to run the tests without them"
            );
        }
        let dir = crate::scratch_dir("compose");
        let project = format!("rbee-test-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let nats_ports: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
        let out = Command::new(repo_root().join("scripts").join("cluster"))
            .args(["up"])
            .arg(&dir)
            .env("RBEE_COMPOSE_PROJECT", &project)
            .env("RBEE_HTTP_PORT", free_port().to_string())
            .env("RBEE_NATS_PORTS", nats_ports.join(","))
            .env("RBEE_POSTGRES_PORT", free_port().to_string())
            .env("RBEE_QUEEN_PORT", free_port().to_string())
            .env("RBEE_TOOLS_DIR", crate::tools_dir())
            .env("RBEE_CACHE_DIR", crate::cache_dir())
            .env("CARGO_TARGET_DIR", crate::bin_dir().parent().expect("the target directory"))
            .output()
            .expect("run scripts/cluster");
        let up_output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let cluster = Cluster::attach(dir.join("client"), "hive-a".into(), up_output.clone());
        let compose = Compose { dir, project, cluster, up_output, machines: Default::default() };
        if !out.status.success() {
            let logs = compose.compose(&["logs", "--tail", "15", "--no-color"]);
            anyhow::bail!(
                "scripts/cluster up failed ({}):\n{}\n--- containers' last lines\n{}",
                out.status,
                compose.up_output,
                String::from_utf8_lossy(&logs.stdout)
            );
        }
        Ok(compose)
    }

    /// A setting of `compose.env` (a port, the uid, a directory).
    pub fn setting(&self, key: &str) -> String {
        let env = std::fs::read_to_string(self.dir.join("compose.env")).expect("compose.env");
        env.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_default().to_string()
    }

    /// `docker-compose <args>` in this cluster's project.
    pub fn compose(&self, args: &[&str]) -> Output {
        let v2 = Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
        let mut cmd = if v2 {
            let mut c = Command::new("docker");
            c.arg("compose");
            c
        } else {
            Command::new("docker-compose")
        };
        cmd.arg("-p")
            .arg(&self.project)
            .arg("--env-file")
            .arg(self.dir.join("compose.env"))
            .arg("-f")
            .arg(repo_root().join("docker-compose.yml"))
            .args(args)
            .output()
            .expect("run docker-compose")
    }

    /// The container of `service`.
    pub fn container(&self, service: &str) -> String {
        let out = self.compose(&["ps", "-q", service]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The network the cluster's containers share (compose's default network of the project).
    pub fn network(&self) -> String {
        let container = self.container("queen-1");
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}"])
            .arg(&container)
            .output()
            .expect("run docker inspect");
        let names = String::from_utf8_lossy(&out.stdout).to_string();
        names.split_whitespace().next().expect("queen-1 is on a network").to_string()
    }

    /// `docker <args>` on the container of `service`, which must succeed.
    pub fn docker(&self, verb: &[&str], service: &str) {
        let container = self.container(service);
        let out = Command::new("docker").args(verb).arg(&container).output().expect("run docker");
        assert!(
            out.status.success(),
            "docker {} {service} failed: {}",
            verb.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every running service's container with the uids its processes run as (`docker top`).
    pub fn process_uids(&self) -> Vec<(String, Vec<String>)> {
        let out = self.compose(&["ps", "--services", "--filter", "status=running"]);
        let services: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        services
            .into_iter()
            .filter(|s| !self.container(s).is_empty())
            .map(|s| {
                let top = Command::new("docker")
                    .args(["top", &self.container(&s), "-eo", "pid,uid"])
                    .output()
                    .expect("run docker top");
                let uids = String::from_utf8_lossy(&top.stdout)
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                    .collect();
                (s, uids)
            })
            .collect()
    }

    /// `scripts/cluster <args>` on this cluster.
    pub fn script(&self, args: &[&str]) -> Output {
        Command::new(repo_root().join("scripts").join("cluster"))
            .args(args)
            .arg(&self.dir)
            .env("RBEE_COMPOSE_PROJECT", &self.project)
            .env("CARGO_TARGET_DIR", crate::bin_dir().parent().expect("the target directory"))
            .output()
            .expect("run scripts/cluster")
    }

    /// A new machine on the cluster's network: a container of the rbee image running `command`
    /// (a shell command line), with the file `token` at `/run/rbee/join.token` and the models at
    /// `/models`. Removed with the cluster.
    pub fn start_machine(&self, name: &str, token: &Path, command: &str) -> String {
        let env = std::fs::read_to_string(self.dir.join("compose.env")).expect("compose.env");
        let value =
            |key: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_default().to_string();
        let container = format!("{}-{name}", self.project);
        let out = Command::new("docker")
            .args(["run", "-d", "--init", "--name", &container, "--hostname", name])
            .args(["--network", &format!("{}_default", self.project)])
            .args(["--user", &format!("{}:{}", value("RBEE_UID"), value("RBEE_GID"))])
            .args(["-v", &format!("{}:/run/rbee/join.token:ro", token.display())])
            .args(["-v", &format!("{}:/models:ro", value("RBEE_MODELS_DIR"))])
            .args(["-e", "RBEE_CACHE_DIR=/models", "-e", "RBEE_STREAM_REPLICAS=3"])
            .args(["rbee:latest", "sh", "-c", command])
            .output()
            .expect("run docker");
        assert!(out.status.success(), "docker run {name}: {}", String::from_utf8_lossy(&out.stderr));
        self.machines.lock().unwrap().push(container.clone());
        container
    }

    /// Stops and removes the containers, then the cluster's files.
    pub fn down(&self) {
        for container in self.machines.lock().unwrap().drain(..) {
            let _ = Command::new("docker").args(["rm", "-f", &container]).output();
        }
        let out = self.compose(&["down", "--remove-orphans", "--timeout", "10"]);
        if !out.status.success() {
            eprintln!("docker-compose down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if self.dir.exists() {
            self.down();
        }
    }
}
