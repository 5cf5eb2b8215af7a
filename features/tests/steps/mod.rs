//! Step definitions. The world holds what one scenario saw; every `then` asserts on the running
//! system (HTTP answers, the event log, the registry), never on what an earlier step wrote here.

mod cancellation;
mod catalog;
mod compose;
mod config;
mod downloads;
mod failover;
mod faults;
mod keys;
mod lifecycle;
mod limits;
mod queens;
mod recovery;
mod registry;
mod reliability;
mod security;
mod serving;
mod validation;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rbee_features::cluster::Cluster;
use rbee_features::poll::eventually;
use rbee_features::signal::{self, Signal};
use serde_json::{Value, json};

pub const MODEL: &str = "SmolLM2-135M-Instruct";
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A stream's bytes received so far and whether it ended, shared with the task reading it.
pub type SharedStream = std::sync::Arc<std::sync::Mutex<(String, bool)>>;

/// Reads a streaming answer in the background; returns its request id and what it received.
pub fn follow_stream(response: reqwest::Response) -> (String, SharedStream) {
    use futures::StreamExt;
    let id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let received: SharedStream = Default::default();
    let sink = received.clone();
    tokio::spawn(async move {
        let mut bytes = response.bytes_stream();
        while let Some(Ok(chunk)) = bytes.next().await {
            sink.lock().unwrap().0.push_str(&String::from_utf8_lossy(&chunk));
        }
        sink.lock().unwrap().1 = true;
    });
    (id, received)
}

#[derive(cucumber::World)]
#[world(init = Self::new)]
pub struct RbeeWorld {
    /// A cluster this scenario started itself (stopped with the world).
    own: Option<Cluster>,
    /// A shared cluster the scenario uses.
    shared: Option<&'static Cluster>,
    /// The last HTTP answer: status, request id, body.
    status: u16,
    request_id: String,
    body: Value,
    /// Raw `data:` payloads of the last stream, in order.
    stream: Vec<String>,
    /// Output of the last `rbee` command.
    output: Option<std::process::Output>,
    /// Event counts by type taken before the step under test.
    counts_before: Vec<(String, usize)>,
    /// Worker ids seen ready before the step under test.
    ready_before: Vec<String>,
    /// Processes started by the scenario (killed by PID if still running at the end).
    children: Vec<Child>,
    /// The sequence and subject of an undecodable message a scenario published.
    junk: Option<(u64, String)>,
    /// When the scenario killed a process (ms since the epoch).
    killed_at_ms: u64,
    /// Processes of the scenario's cluster noted before a step under test, by name and pid.
    pids_before: Vec<(&'static str, u64)>,
    /// What each request of a burst got.
    burst: Vec<reliability::Sent>,
    /// A log sequence and the workers a scenario noted.
    noted_seq: u64,
    noted_workers: Vec<String>,
    noted_text: String,
    /// The completion tokens of the noted answer.
    noted_tokens: u64,
    /// Every answer the load of a fault or soak scenario got.
    answers: Vec<rbee_features::load::Answer>,
    /// The soak's processes (name, pid) with their resident memory samples in KiB.
    soak_memory: Vec<(String, u32, Vec<u64>)>,
    /// nats-server's subscriptions before the soak.
    soak_subscriptions_at_rest: u64,
    /// Status and whole SSE text of each of many streams.
    stream_texts: Vec<(u16, String)>,
    worker_id: String,
    /// A state digest noted before the step under test.
    digest: String,
    /// A backup file written by the scenario.
    backup: Option<std::path::PathBuf>,
    /// Extra private nats-servers (restore targets), stopped with the world.
    spare_nats: Vec<rbee_features::infra::Nats>,
    /// Worker PIDs (started by a hive) to resume and stop when the scenario ends.
    stop_at_end: Vec<i32>,
    /// URL of a second queen the scenario started.
    second_queen: String,
    /// Answers to a batch of concurrent requests: (status, request id, body).
    batch: Vec<(u16, String, Value)>,
    /// Streams running side by side: request id, and what it received so far.
    streams: Vec<(String, SharedStream)>,
    /// Seconds requests had waited for slots at both queens before the step under test.
    slot_waits_before: f64,
    /// The queen's `/metrics` text before the step under test.
    metrics_before: String,
    /// A data directory made for the next `rbee up`.
    fresh_dir: Option<std::path::PathBuf>,
    /// The first sequence JetStream kept after a purge.
    purged_below: u64,
    /// Path of a catalogued model file.
    model_path: String,
    /// Prefix of the model names a scenario registered in bulk.
    catalog_prefix: String,
    /// A request streaming in the background; yields everything it received.
    background: Option<tokio::task::JoinHandle<String>>,
    /// A second worker id the scenario started.
    second_worker: String,
    /// What a download scenario set up and saw.
    dl: downloads::Dl,
    cfg: config::Cfg,
    /// What a security scenario's intruder tried.
    attempt: security::Attempt,
    /// API keys the scenario made: name and secret.
    api_keys: Vec<(String, String)>,
    /// Headers of the last HTTP answer.
    www_authenticate: String,
    retry_after: Option<String>,
    /// When the scenario revoked a key.
    revoked_at: Option<std::time::Instant>,
    /// Log file of a queen the scenario started.
    queen_log: std::path::PathBuf,
    /// What a client that trickled its headers received, and when the queen closed it.
    slow_client: Option<(Vec<u8>, Option<Duration>)>,
    /// When the connection over a client's share closed, and whether the others stayed open.
    hoarded: Option<(Option<Duration>, bool)>,
    /// The prompt a validation scenario sends, and the queen's `x-rbee-warnings` for it.
    prompt: String,
    warnings_header: String,
    /// What a compose scenario's load went through while a service was away.
    outage: compose::Outage,
}

impl std::fmt::Debug for RbeeWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbeeWorld")
            .field("status", &self.status)
            .field("request_id", &self.request_id)
            .field("body", &self.body)
            .finish()
    }
}

impl RbeeWorld {
    /// Waits for the pulls started in the background (2 min each at most); their outputs.
    pub async fn background_pulls(&mut self) -> Vec<std::process::Output> {
        let mut outs = Vec::new();
        for handle in std::mem::take(&mut self.dl.background) {
            let (out, took) = tokio::time::timeout(Duration::from_secs(120), handle)
                .await
                .expect("the pull ends")
                .expect("pull task");
            self.dl.pull_took = took;
            outs.push(out);
        }
        outs
    }

    /// The hub's GETs of the scenario's model file since the scenario started.
    pub fn hub_gets(&self) -> Vec<rbee_features::hub::Seen> {
        let needle = format!("{}/{}", self.dl.file.0, self.dl.file.1);
        crate::hub().seen("")[self.dl.mark..]
            .iter()
            .filter(|s| s.method == "GET" && s.path == needle)
            .cloned()
            .collect()
    }

    /// Starts a hive of the scenario's own on a new node (its models on a tmpfs of `models_fs_mb`
    /// when given) and waits for it to register.
    pub async fn own_hive(&mut self, env: Vec<(String, String)>, models_fs_mb: Option<u64>) {
        self.dl.node = rbee_features::cluster::unique_node();
        self.dl.hive_dir = rbee_features::scratch_dir("hive");
        self.dl.hive_env = env;
        if let Some(mb) = models_fs_mb {
            let models = self.dl.hive_dir.join("models");
            std::fs::create_dir_all(&models).unwrap();
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
                .arg(&models)
                .status()
                .expect("run mount");
            assert!(status.success(), "a small filesystem for the disk-full scenario needs mount (root): {status}");
            self.dl.mount = Some(models);
        }
        self.dl.hive = Some(self.cluster().spawn_hive(&self.dl.node, &self.dl.hive_dir, &self.dl.hive_env));
        let node = self.dl.node.clone();
        self.one_event("node.registered", "node", &node).await;
    }

    /// Starts `rbee-queen` on a free port against the scenario's cluster (and its event store when
    /// `with_store`); returns its URL.
    pub async fn start_queen(&mut self, with_store: bool) -> String {
        self.start_queen_with(with_store, &[]).await
    }

    /// [`RbeeWorld::start_queen`] with more environment.
    pub async fn start_queen_with(&mut self, with_store: bool, env: &[(String, String)]) -> String {
        let port = rbee_local::process::free_port().unwrap();
        let mut command = Command::new(rbee_features::bin("rbee-queen"));
        command.args(["--bind", &format!("127.0.0.1:{port}")]).envs(self.cluster().queen_env());
        if with_store {
            // The URL holds the password: in the environment, never on the command line.
            command.env("RBEE_DATABASE_URL", &self.cluster().database_url);
        }
        let child = command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rbee-queen starts");
        self.children.push(child);
        let url = format!("http://127.0.0.1:{port}");
        let health = format!("{url}/health");
        eventually("the second queen answers", DEADLINE, || async { reqwest::get(&health).await.map(|_| ()) }).await;
        url
    }

    /// SIGKILLs the second queen (the last process the scenario started).
    pub fn kill_second_queen(&mut self) {
        let mut queen = self.children.pop().expect("the second queen");
        queen.kill().expect("SIGKILL");
        queen.wait().unwrap();
    }

    fn new() -> Self {
        // Every HTTP client of a scenario, reqwest::get included, uses ring for TLS.
        rbee_runtime::use_ring_for_tls();
        RbeeWorld {
            own: None,
            shared: None,
            status: 0,
            request_id: String::new(),
            body: Value::Null,
            stream: Vec::new(),
            output: None,
            counts_before: Vec::new(),
            ready_before: Vec::new(),
            children: Vec::new(),
            junk: None,
            killed_at_ms: 0,
            pids_before: Vec::new(),
            burst: Vec::new(),
            noted_seq: 0,
            noted_workers: Vec::new(),
            noted_text: String::new(),
            noted_tokens: 0,
            answers: Vec::new(),
            soak_memory: Vec::new(),
            soak_subscriptions_at_rest: 0,
            stream_texts: Vec::new(),
            worker_id: String::new(),
            digest: String::new(),
            backup: None,
            spare_nats: Vec::new(),
            stop_at_end: Vec::new(),
            second_queen: String::new(),
            batch: Vec::new(),
            streams: Vec::new(),
            purged_below: 0,
            fresh_dir: None,
            metrics_before: String::new(),
            slot_waits_before: 0.0,
            model_path: String::new(),
            catalog_prefix: String::new(),
            background: None,
            second_worker: String::new(),
            dl: downloads::Dl::default(),
            cfg: config::Cfg::default(),
            attempt: security::Attempt::default(),
            api_keys: Vec::new(),
            www_authenticate: String::new(),
            retry_after: None,
            revoked_at: None,
            queen_log: Default::default(),
            slow_client: None,
            hoarded: None,
            prompt: String::new(),
            warnings_header: String::new(),
            outage: Default::default(),
        }
    }

    pub fn cluster(&self) -> &Cluster {
        self.own.as_ref().or(self.shared).expect("the scenario has a cluster")
    }

    /// POSTs a chat completion request for `prompt` to the queen.
    pub async fn post_chat(&self, prompt: &str, max_tokens: u32, stream: bool) -> reqwest::Response {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": stream});
        self.post_chat_body(&body).await
    }

    /// POSTs `body` to the queen's chat completions with the cluster's key.
    pub async fn post_chat_body(&self, body: &serde_json::Value) -> reqwest::Response {
        self.cluster()
            .http()
            .post(format!("{}/v1/chat/completions", self.cluster().queen_url))
            .json(body)
            .send()
            .await
            .expect("the queen answers")
    }

    /// POSTs a non-streaming chat completion; keeps status, request id and body.
    pub async fn ask(&mut self, prompt: &str, max_tokens: u32) {
        let response = self.post_chat(prompt, max_tokens, false).await;
        self.status = response.status().as_u16();
        self.request_id =
            response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        self.body = response.json().await.expect("a JSON body");
    }

    /// Starts a streaming request and returns once its first text arrived; the rest is collected in
    /// the background (`self.background`).
    pub async fn stream_in_background(&mut self, prompt: &str, max_tokens: u32) {
        let response = self.post_chat(prompt, max_tokens, true).await;
        assert_eq!(response.status().as_u16(), 200);
        let mut bytes = response.bytes_stream();
        let mut seen = Vec::new();
        while String::from_utf8_lossy(&seen).matches("data: ").count() < 2 {
            seen.extend_from_slice(
                &futures::StreamExt::next(&mut bytes).await.expect("stream goes on").expect("chunk"),
            );
        }
        self.background = Some(tokio::spawn(async move {
            while let Some(Ok(chunk)) = futures::StreamExt::next(&mut bytes).await {
                seen.extend_from_slice(&chunk);
            }
            String::from_utf8_lossy(&seen).into_owned()
        }));
    }

    /// Every event (heartbeats aside) about the current worker id, in log order.
    pub fn worker_history(&self) -> Vec<Value> {
        self.cluster().events(false).into_iter().filter(|e| e["data"]["worker"] == self.worker_id.as_str()).collect()
    }

    /// Events of `kind` for the current request id.
    pub fn request_events(&self, kind: &str) -> Vec<Value> {
        self.cluster()
            .events_of(kind)
            .into_iter()
            .filter(|e| e["data"]["request"] == self.request_id.as_str())
            .collect()
    }

    /// Waits until the log holds exactly one event of `kind` whose `data.<field>` is `value`; returns it.
    pub async fn one_event(&self, kind: &str, field: &str, value: &str) -> Value {
        let c = self.cluster();
        let found = rbee_features::poll::eventually(
            &format!("one {kind} with {field} {value} in the log"),
            DEADLINE,
            || async {
                let found: Vec<Value> = c.events_of(kind).into_iter().filter(|e| e["data"][field] == value).collect();
                if found.len() == 1 { Ok(found) } else { Err(found) }
            },
        )
        .await;
        found.into_iter().next().expect("one event")
    }

    pub fn count_events(&self, kinds: &[&str]) -> Vec<(String, usize)> {
        let events = self.cluster().events(false);
        kinds.iter().map(|k| (k.to_string(), events.iter().filter(|e| e["type"] == *k).count())).collect()
    }
}

impl Drop for RbeeWorld {
    fn drop(&mut self) {
        // Workers this scenario's cluster started for it (some paused by it).
        for pid in &self.stop_at_end {
            signal::send(*pid as u32, Signal::Continue);
            signal::send(*pid as u32, Signal::Terminate);
        }
        for child in &mut self.children {
            if child.try_wait().ok().flatten().is_none() {
                signal::send(child.id(), Signal::Terminate);
                let _ = child.wait();
            }
        }
    }
}
