//! Configuration files: processes started with `--config FILE`, what they refuse, what overrides
//! what, and what SIGHUP changes.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use cucumber::{given, then, when};
use rbee_features::poll::eventually;
use rbee_features::signal::{self, Signal};

use super::{DEADLINE, RbeeWorld};

/// What a configuration scenario started and wrote.
#[derive(Default)]
pub struct Cfg {
    /// The config file of the process under test, and where that process logs.
    file: PathBuf,
    log: PathBuf,
    /// The pid of the process under test (its child is among the world's children).
    pid: u32,
    /// URL of the queen under test.
    url: String,
    /// Free ports a scenario named A, B and C.
    ports: Vec<u16>,
    /// The node of the scenario's own hive, and the model file copied for it.
    node: String,
    copy: PathBuf,
    model: String,
}

impl RbeeWorld {
    /// Writes `text` as the scenario's config file `name` in a scratch directory.
    fn write_config(&mut self, name: &str, text: &str) {
        if self.cfg.file.as_os_str().is_empty() {
            self.cfg.file = rbee_features::scratch_dir("config").join(name);
        }
        std::fs::write(&self.cfg.file, text).expect("config file written");
    }

    /// Starts `command` with its log in the scenario's scratch directory; remembers its pid.
    fn start_configured(&mut self, mut command: Command) {
        self.cfg.log = self.cfg.file.with_extension("log");
        let log = std::fs::File::create(&self.cfg.log).expect("log file");
        let child = command
            .arg("--config")
            .arg(&self.cfg.file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("the process starts");
        self.cfg.pid = child.id();
        self.children.push(child);
    }

    fn queen_command(&self) -> Command {
        let mut command = Command::new(rbee_features::bin("rbee-queen"));
        command.envs(self.cluster().queen_env()).env_remove("RBEE_BIND");
        command
    }

    fn configured_log(&self) -> String {
        std::fs::read_to_string(&self.cfg.log).unwrap_or_default()
    }

    /// Sends SIGHUP to the process under test and waits until its log shows the `nth` reload
    /// attempt (a reload, or a refusal) ending.
    async fn hang_up(&self, nth: usize) {
        assert!(signal::send(self.cfg.pid, Signal::Hangup), "the process under test runs");
        eventually("the process reads its configuration again", DEADLINE, || async {
            let log = self.configured_log();
            let seen = log.matches("configuration reloaded (SIGHUP)").count()
                + log.matches("configuration not reloaded").count();
            if seen >= nth { Ok(()) } else { Err(log) }
        })
        .await;
    }

    fn free_ports(&mut self, n: usize) {
        self.cfg.ports = (0..n).map(|_| rbee_local::process::free_port().expect("a free port")).collect();
    }
}

#[when(expr = "rbee-{word} is started with a config file holding {string}")]
async fn started_with_bad_file(w: &mut RbeeWorld, process: String, line: String) {
    w.write_config(&format!("{process}.toml"), &format!("{line}\n"));
    let c = w.cluster();
    let mut command = Command::new(rbee_features::bin(&format!("rbee-{process}")));
    match process.as_str() {
        "queen" => {
            command.envs(c.queen_env());
        }
        "hive" => {
            command.envs(c.hive_env(&c.node)).args(["--node", &c.node]).arg("--data-dir").arg(&c.data_dir);
        }
        _ => {
            command.args([
                "--node",
                &c.node,
                "--worker-id",
                "cfg-worker",
                "--model",
                "m",
                "--model-path",
                "/none.gguf",
            ]);
        }
    }
    let out = command.arg("--config").arg(&w.cfg.file).stdin(Stdio::null()).output().expect("the process runs");
    w.output = Some(out);
}

#[then(expr = "it exits with code {int} and {string}, naming {string} and saying {string}")]
fn refused_naming(w: &mut RbeeWorld, code: i32, error: String, key: String, reason: String) {
    let out = w.output.as_ref().expect("a process ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(&format!("error[{error}]")), "{stderr}");
    assert!(stderr.contains(&key) && stderr.contains(&reason), "{stderr}");
}

#[when("a queen is started whose config file binds port A and whose environment binds port B")]
async fn file_and_env(w: &mut RbeeWorld) {
    w.free_ports(3);
    let (a, b) = (w.cfg.ports[0], w.cfg.ports[1]);
    w.write_config("queen.toml", &format!("bind = '127.0.0.1:{a}'\n"));
    let mut command = w.queen_command();
    command.env("RBEE_BIND", format!("127.0.0.1:{b}"));
    w.start_configured(command);
}

#[when("that queen is stopped, and one is started whose file binds port A, environment port B and --bind port C")]
async fn file_env_and_flag(w: &mut RbeeWorld) {
    let mut queen = w.children.pop().expect("the queen under test");
    signal::send(queen.id(), Signal::Terminate);
    let _ = queen.wait();
    let (b, c) = (w.cfg.ports[1], w.cfg.ports[2]);
    let mut command = w.queen_command();
    command.env("RBEE_BIND", format!("127.0.0.1:{b}")).args(["--bind", &format!("127.0.0.1:{c}")]);
    w.start_configured(command);
}

/// Whether something accepts connections on the loopback `port`.
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_ok()
}

async fn answers_on(port: u16) {
    let url = format!("http://127.0.0.1:{port}/livez");
    eventually(&format!("a queen answers on port {port}"), DEADLINE, || async {
        match reqwest::get(&url).await {
            Ok(r) if r.status() == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[then("that queen answers on port B, and nothing on port A")]
async fn answers_on_b(w: &mut RbeeWorld) {
    answers_on(w.cfg.ports[1]).await;
    assert!(!listening(w.cfg.ports[0]), "the file's port was used, though the environment names another");
}

#[then("that queen answers on port C, and nothing on ports A and B")]
async fn answers_on_c(w: &mut RbeeWorld) {
    answers_on(w.cfg.ports[2]).await;
    for (name, port) in [("A", w.cfg.ports[0]), ("B", w.cfg.ports[1])] {
        assert!(!listening(port), "port {name} is in use, though --bind names another");
    }
}

#[given(expr = "a queen whose config file allows pages from {string}")]
async fn queen_allowing(w: &mut RbeeWorld, origin: String) {
    w.free_ports(2);
    let port = w.cfg.ports[0];
    w.write_config("queen.toml", &format!("bind = '127.0.0.1:{port}'\ncors_origins = ['{origin}']\n"));
    let command = w.queen_command();
    w.start_configured(command);
    answers_on(port).await;
    w.cfg.url = format!("http://127.0.0.1:{port}");
}

/// Whether the queen under test lets a page from `origin` call `/v1/models` (its preflight answered).
async fn page_may_call(w: &RbeeWorld, origin: &str) -> bool {
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/models", w.cfg.url))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("the queen under test answers");
    response.headers().get("access-control-allow-origin").is_some_and(|o| o == origin)
}

#[then(expr = "a page from {string} may not call that queen")]
async fn page_refused(w: &mut RbeeWorld, origin: String) {
    assert!(!page_may_call(w, &origin).await, "{origin} was allowed");
}

#[then(expr = "a page from {string} may call that queen, still on the port it started on")]
async fn page_allowed(w: &mut RbeeWorld, origin: String) {
    assert!(page_may_call(w, &origin).await, "{origin} was not allowed by {}", w.cfg.url);
    assert!(!listening(w.cfg.ports[1]), "the queen moved to the new port without a restart");
}

#[when(expr = "its file allows {string} instead and binds another port, and the queen gets SIGHUP")]
async fn queen_reloads(w: &mut RbeeWorld, origin: String) {
    let port = w.cfg.ports[1];
    std::fs::write(&w.cfg.file, format!("bind = '127.0.0.1:{port}'\ncors_origins = ['{origin}']\n")).unwrap();
    w.hang_up(1).await;
}

#[then(expr = "the queen's log says {string} was reloaded and {string} takes effect at the next start")]
fn queen_log_says(w: &mut RbeeWorld, reloaded: String, waits: String) {
    let log = w.configured_log();
    let line = |needle: &str, key: &str| log.lines().any(|l| l.contains(needle) && l.contains(&format!("key={key}")));
    assert!(line("configuration reloaded", &reloaded), "{log}");
    assert!(line("takes effect at the next start", &waits), "{log}");
}

#[when("its file is no longer TOML and the queen gets SIGHUP")]
async fn queen_gets_garbage(w: &mut RbeeWorld) {
    std::fs::write(&w.cfg.file, "cors_origins = ['https://three.example'\n").unwrap();
    w.hang_up(2).await;
}

#[then("the queen's log says the configuration was not reloaded, naming the file")]
fn not_reloaded(w: &mut RbeeWorld) {
    let log = w.configured_log();
    let file = w.cfg.file.display().to_string();
    assert!(log.lines().any(|l| l.contains("configuration not reloaded") && l.contains(&file)), "{log}");
}

#[given("a copy of the default model in a directory no hive allows")]
fn model_copy(w: &mut RbeeWorld) {
    let dir = rbee_features::scratch_dir("elsewhere");
    w.cfg.copy = dir.join("copy.gguf");
    let original = rbee_features::default_model_file();
    if std::fs::hard_link(&original, &w.cfg.copy).is_err() {
        std::fs::copy(&original, &w.cfg.copy).expect("the model copied");
    }
    w.dl.scratch.push(dir);
}

#[given("a hive of its own on a new node, its config file allowing no such directory")]
async fn hive_with_file(w: &mut RbeeWorld) {
    let c = w.cluster();
    let node = rbee_features::cluster::unique_node();
    let data_dir = rbee_features::scratch_dir("hive");
    // The file decides where models may come from: the environment's allowed directories are left out.
    let mut command = Command::new(rbee_features::bin("rbee-hive"));
    command.envs(c.hive_env(&node)).env_remove("RBEE_ALLOWED_DIRS");
    command.args(["--node", &node]).arg("--data-dir").arg(&data_dir);
    w.write_config("hive.toml", "allowed_dirs = []\nmax_workers = 64\n");
    w.start_configured(command);
    w.dl.scratch.push(data_dir);
    w.cfg.node = node.clone();
    w.cfg.model = format!("cfg-{node}");
    w.one_event("node.registered", "node", &node).await;
}

#[when("I pull the copy onto that hive's node with rbee models pull")]
async fn pull_copy(w: &mut RbeeWorld) {
    let source = format!("file://{}", w.cfg.copy.display());
    let args = ["models", "pull", source.as_str(), "--name", w.cfg.model.as_str(), "--node", w.cfg.node.as_str()];
    let mut command = w.cluster().rbee_command_for(&args);
    let out = tokio::task::spawn_blocking(move || command.output().expect("rbee models pull runs")).await.unwrap();
    w.dl.pull = Some(out);
}

#[when("its file allows the copy's directory, and the hive gets SIGHUP")]
async fn hive_reloads(w: &mut RbeeWorld) {
    let dir = w.cfg.copy.parent().expect("the copy's directory").display().to_string();
    std::fs::write(&w.cfg.file, format!("allowed_dirs = ['{dir}']\nmax_workers = 64\n")).unwrap();
    w.hang_up(1).await;
}

#[then(expr = "the hive's log says {string} was reloaded")]
fn hive_log_says(w: &mut RbeeWorld, key: String) {
    let log = w.configured_log();
    assert!(log.lines().any(|l| l.contains("configuration reloaded") && l.contains(&format!("key={key}"))), "{log}");
}

#[then("the pull succeeds and the copy is in the catalog of that hive's node")]
fn pulled(w: &mut RbeeWorld) {
    let out = w.dl.pull.as_ref().expect("a pull ran");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let registered = w.cluster().events_of("model.registered");
    assert!(
        registered
            .iter()
            .any(|e| e["data"]["model"] == w.cfg.model.as_str() && e["data"]["node"] == w.cfg.node.as_str()),
        "no model.registered for {} on {}",
        w.cfg.model,
        w.cfg.node
    );
}
