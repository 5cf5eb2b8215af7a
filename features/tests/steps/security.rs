//! Steps of security.feature: clients holding no credentials or the wrong role try what only
//! another role may do; nats-server must refuse each, and nothing may change.

use std::time::Duration;

use cucumber::{given, then, when};
use rbee_bus::frames::{self, TokenFrame};
use rbee_bus::{Event, SlotClaimed, WorkerRegistered, WorkerStartRequested, subjects};
use rbee_features::intruder::Intruder;
use rbee_local::trust::Identity;

use rbee_features::poll::eventually;

use super::{DEADLINE, MODEL, RbeeWorld};

/// What the scenario's intruder tried, to check the server's answer against.
#[derive(Default)]
pub struct Attempt {
    pub intruder: Option<Intruder>,
    /// Subjects the server must have refused to this client.
    pub refused: Vec<String>,
    pub forged_worker: String,
    pub events_before: usize,
    pub connections: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    pub listener_port: u16,
    /// The worker id of a worker identity the client holds.
    pub as_worker: String,
    /// The node of a hive identity the client holds.
    pub as_node: String,
    /// A subject the server must have stored the client's event on.
    pub stored_on: String,
    /// What Postgres answered: a SQLSTATE, or the connection error.
    pub sql_error: Option<String>,
    /// The pids of nats-server, the hive and the queen `rbee up` recorded.
    pub cluster_pids: Vec<u32>,
    /// Every secret of the scenario's cluster.
    pub secrets: Vec<String>,
}

impl RbeeWorld {
    /// Connects as `who` to the scenario's cluster.
    async fn intrude(&mut self, who: &str) {
        let c = self.cluster();
        let (mut worker, mut node) = (String::new(), String::new());
        let creds = match who {
            "without credentials" => None,
            "as the operator" => Some(c.creds(Identity::Operator)),
            "as the queen" => Some(c.creds(Identity::Queen)),
            "as a worker of its node" => {
                let id = format!("intruder-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
                let creds = c.worker_creds(&c.node.clone(), &id);
                worker = id;
                Some(creds)
            }
            "as the hive of its node" => Some(c.creds(Identity::Hive(&c.node))),
            "as the hive of another node" => {
                node = rbee_features::cluster::unique_node();
                c.hive_env(&node);
                Some(c.creds(Identity::Hive(&node)))
            }
            other => panic!("unknown identity {other:?}"),
        };
        let intruder =
            Intruder::connect(&c.nats_url, creds.as_deref(), c.nats_ca.as_deref(), c.nats_cert.as_deref()).await;
        self.attempt.intruder = Some(intruder);
        self.attempt.as_worker = worker;
        self.attempt.as_node = node;
    }

    fn intruder(&self) -> &Intruder {
        self.attempt.intruder.as_ref().expect("a client tried")
    }

    /// A ready worker of the default model and its node.
    fn serving_worker(&self) -> (String, String, u32) {
        let workers = self.cluster().workers();
        let w = workers
            .iter()
            .find(|w| w["model"] == MODEL && w["state"] == "Ready")
            .expect("a ready worker of the default model");
        let id = w["id"].as_str().unwrap().to_string();
        (id, w["node"].as_str().unwrap().to_string(), w["slots"].as_u64().unwrap_or(1) as u32)
    }

    fn new_forged_worker(&mut self) -> String {
        self.attempt.forged_worker = format!("forged-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        self.attempt.forged_worker.clone()
    }
}

#[given("I note the number of events in the log")]
fn note_events(w: &mut RbeeWorld) {
    w.attempt.events_before = w.cluster().events(false).len();
}

#[given("a listener on a free local port that counts connections")]
async fn counting_listener(w: &mut RbeeWorld) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    w.attempt.listener_port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    w.attempt.connections = Some(count);
}

#[when(regex = r#"^a client (without credentials|as [a-z ]+) subscribes to "(.+)" and "(.+)"$"#)]
async fn subscribes(w: &mut RbeeWorld, who: String, first: String, second: String) {
    w.intrude(&who).await;
    for subject in [first, second] {
        w.intruder().subscribe(&subject).await;
        w.attempt.refused.push(subject);
    }
}

#[when(regex = r"^a client (without credentials|as [a-z ]+) publishes a token frame as the serving worker$")]
async fn publishes_tokens(w: &mut RbeeWorld, who: String) {
    w.intrude(&who).await;
    let (worker, node, _) = w.serving_worker();
    let subject = subjects::tokens(&node, &worker, "forged-request");
    let frame = TokenFrame::Delta { text: "forged".into(), tokens: vec![1], first: 0 };
    w.intruder().publish(&subject, frames::encode(&frame)).await;
    w.attempt.refused.push(subject);
}

#[when(
    regex = r"^a client (without credentials|as [a-z ]+) registers a forged worker of the default model on the cluster's node$"
)]
async fn registers_forged_worker(w: &mut RbeeWorld, who: String) {
    w.intrude(&who).await;
    let worker = w.new_forged_worker();
    let event = Event::WorkerRegistered(WorkerRegistered {
        worker,
        node: w.cluster().node.clone(),
        model: MODEL.into(),
        slots: 4,
        pid: std::process::id(),
        backend: "cpu".into(),
    });
    w.attempt.refused.push(subjects::for_event(&event));
    w.intruder().append(event).await;
}

#[when("a client as a worker of its node registers a forged worker on its own subject")]
async fn registers_under_own_subject(w: &mut RbeeWorld) {
    w.intrude("as a worker of its node").await;
    let forged = w.new_forged_worker();
    let event = Event::WorkerRegistered(WorkerRegistered {
        worker: forged,
        node: w.cluster().node.clone(),
        model: MODEL.into(),
        slots: 4,
        pid: std::process::id(),
        backend: "cpu".into(),
    });
    let own = subjects::worker(&w.cluster().node, &w.attempt.as_worker);
    w.intruder().append_on(&own, event).await;
    w.attempt.refused.clear();
    w.attempt.stored_on = own;
}

#[when("a client as the hive of another node registers the serving worker's id on its own node")]
async fn registers_serving_id_elsewhere(w: &mut RbeeWorld) {
    w.intrude("as the hive of another node").await;
    let (worker, _, _) = w.serving_worker();
    w.attempt.forged_worker = worker.clone();
    let event = Event::WorkerRegistered(WorkerRegistered {
        worker,
        node: w.attempt.as_node.clone(),
        model: MODEL.into(),
        slots: 4,
        pid: std::process::id(),
        backend: "cpu".into(),
    });
    w.attempt.stored_on = subjects::for_event(&event);
    w.intruder().append(event).await;
    w.attempt.refused.clear();
}

#[then("nats-server stores it, and rbee workers still lists that worker on the cluster's node only")]
async fn stored_but_node_kept(w: &mut RbeeWorld) {
    let stored = w.stored_event_sequence().await;
    assert!(stored > 0);
    // The CLI has folded past it when it answers.
    let c = w.cluster();
    let listed: Vec<serde_json::Value> =
        c.workers().into_iter().filter(|x| x["id"] == w.attempt.forged_worker.as_str()).collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["node"], c.node.as_str(), "{listed:?}");
}

impl RbeeWorld {
    /// The sequence of the event the client's write left on `attempt.stored_on`.
    async fn stored_event_sequence(&self) -> u64 {
        let subject = self.attempt.stored_on.clone();
        let js = async_nats::jetstream::new(self.cluster().admin_client().await);
        let stream = js.get_stream(subjects::EVENTS_STREAM).await.expect("the event stream");
        let stored = eventually("the server stores the event on the client's own subject", DEADLINE, || async {
            stream.get_last_raw_message_by_subject(&subject).await.map_err(|e| e.to_string())
        })
        .await;
        assert!(self.intruder().violations_naming(&subject, Duration::from_millis(500)).await.is_empty());
        stored.sequence
    }
}

#[then("nats-server stores it, and rbee workers does not list the forged worker")]
async fn stored_but_not_believed(w: &mut RbeeWorld) {
    assert!(w.stored_event_sequence().await > 0);
    // The queen has folded past it by the time it answers a request.
    let forged = w.attempt.forged_worker.clone();
    assert!(w.cluster().workers().iter().all(|x| x["id"] != forged.as_str()), "rbee workers does not list it");
}

#[then("the queen's log reports FORGED_EVENT for it")]
async fn queen_reports_forgery(w: &mut RbeeWorld) {
    let c = w.cluster();
    let subject = w.attempt.stored_on.clone();
    eventually("the queen reports the forged event", DEADLINE, || async {
        let log = c.log_file("queen.log");
        let line = log.lines().find(|l| {
            l.contains(rbee_bus::Code::ForgedEvent.as_str()) && l.contains("worker.registered") && l.contains(&subject)
        });
        line.map(str::to_string).ok_or(())
    })
    .await;
}

#[when(regex = r"^a client (without credentials|as [a-z ]+) claims every slot of the serving worker$")]
async fn claims_slots(w: &mut RbeeWorld, who: String) {
    w.intrude(&who).await;
    let (worker, node, slots) = w.serving_worker();
    for slot in 0..slots {
        let event = Event::SlotClaimed(SlotClaimed {
            worker: worker.clone(),
            node: node.clone(),
            slot,
            request: format!("forged-{slot}"),
        });
        w.attempt.refused.push(subjects::for_event(&event));
        w.intruder().append(event).await;
    }
}

#[when(
    regex = r"^a client (without credentials|as [a-z ]+) asks the cluster's hive to start a worker from a URL on that port$"
)]
async fn forges_hive_command(w: &mut RbeeWorld, who: String) {
    w.intrude(&who).await;
    let worker = w.new_forged_worker();
    let event = Event::WorkerStartRequested(WorkerStartRequested {
        node: w.cluster().node.clone(),
        worker,
        model: "forged-model".into(),
        source: format!("http://127.0.0.1:{}/forged.gguf", w.attempt.listener_port),
        sha256: None,
        slots: 1,
        backend: "cpu".into(),
        device: None,
    });
    w.attempt.refused.push(subjects::for_event(&event));
    w.intruder().append(event).await;
}

#[when(
    regex = r"^a client (without credentials|as [a-z ]+) asks JetStream to delete and purge the event stream and delete the archiver$"
)]
async fn jetstream_vandal(w: &mut RbeeWorld, who: String) {
    w.intrude(&who).await;
    let stream = subjects::EVENTS_STREAM;
    for subject in [
        format!("$JS.API.STREAM.PURGE.{stream}"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.{}", subjects::ARCHIVER_CONSUMER),
        format!("$JS.API.STREAM.DELETE.{stream}"),
    ] {
        let answered = w.intruder().jetstream_api(&subject).await;
        assert!(!answered, "JetStream answered {subject}");
        w.attempt.refused.push(subject);
    }
}

#[then(regex = r"^nats-server refuses that client(?: and JetStream answered none of it)?$")]
async fn server_refuses(w: &mut RbeeWorld) {
    let intruder = w.intruder();
    if !intruder.connected() {
        let why = intruder.connect_error.clone().unwrap_or_default();
        assert!(why.to_lowercase().contains("authorization"), "refused as unauthorized: {why}");
        return;
    }
    for subject in &w.attempt.refused {
        let violations = intruder.violations_naming(subject, Duration::from_secs(5)).await;
        assert!(!violations.is_empty(), "nats-server reported a permissions violation for {subject}");
    }
}

#[then("that client received no message")]
async fn received_nothing(w: &mut RbeeWorld) {
    assert_eq!(w.intruder().received(), 0, "a refused subscription delivers nothing");
}

#[then("the log holds no event of the forged worker and no more events of other kinds than noted")]
fn no_forged_events(w: &mut RbeeWorld) {
    let events = w.cluster().events(false);
    let forged = &w.attempt.forged_worker;
    let about_it: Vec<_> = events.iter().filter(|e| e["data"]["worker"] == forged.as_str()).collect();
    assert!(about_it.is_empty(), "events of the forged worker: {about_it:?}");
    assert_eq!(events.len(), w.attempt.events_before, "the log did not grow");
    assert!(w.cluster().workers().iter().all(|x| x["id"] != forged.as_str()), "the registry does not list it");
}

#[then("the log holds no more slot events than noted")]
fn no_forged_slots(w: &mut RbeeWorld) {
    let events = w.cluster().events(false);
    assert!(events.iter().all(|e| !e["data"]["request"].as_str().unwrap_or("").starts_with("forged-")));
    assert_eq!(events.len(), w.attempt.events_before, "the log did not grow");
}

#[then(expr = "after {int} seconds the listener has had no connection")]
async fn no_connection(w: &mut RbeeWorld, secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let count = w.attempt.connections.as_ref().expect("a listener").load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(count, 0, "nobody connected to the forged source");
}

#[then("the event stream and the archiver's consumer are still there, with at least the noted events")]
async fn stream_intact(w: &mut RbeeWorld) {
    let js = async_nats::jetstream::new(w.cluster().admin_client().await);
    let mut stream = js.get_stream(subjects::EVENTS_STREAM).await.expect("the event stream exists");
    let info = stream.info().await.expect("stream info");
    assert!(info.state.messages as usize >= w.attempt.events_before, "no event was purged: {:?}", info.state);
    stream.consumer_info(subjects::ARCHIVER_CONSUMER).await.expect("the archiver's consumer exists");
}

#[when(expr = "the role the queens use runs {string} on the event store")]
async fn archiver_runs(w: &mut RbeeWorld, statement: String) {
    let pool = sqlx::PgPool::connect(&w.cluster().database_url).await.expect("the queens' role connects");
    w.attempt.events_before =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap() as usize;
    let result = sqlx::query(&statement).execute(&pool).await;
    w.attempt.sql_error = match result {
        Ok(done) => panic!("{statement} was allowed ({} rows)", done.rows_affected()),
        Err(e) => {
            Some(e.as_database_error().and_then(|d| d.code()).map(|c| c.to_string()).unwrap_or_else(|| e.to_string()))
        }
    };
    pool.close().await;
}

#[then("Postgres refuses it for lack of privilege")]
fn refused_privilege(w: &mut RbeeWorld) {
    // 42501: insufficient_privilege ("permission denied", "must be owner").
    assert_eq!(w.attempt.sql_error.as_deref(), Some("42501"));
}

#[then("the archive still holds every event it held")]
async fn archive_intact(w: &mut RbeeWorld) {
    let pool = sqlx::PgPool::connect(&w.cluster().database_url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
    assert!(n as usize >= w.attempt.events_before, "{n} < {}", w.attempt.events_before);
    let forged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'forged'").fetch_one(&pool).await.unwrap();
    assert_eq!(forged, 0);
    assert!(!std::path::Path::new("/tmp/rbee-forged").exists(), "no program ran");
}

#[when("a client connects to the event store as the role the queens use without its password")]
async fn connect_without_password(w: &mut RbeeWorld) {
    let url = w.cluster().database_url.clone();
    let (user_and_password, rest) = url.split_once('@').unwrap();
    let user = user_and_password.split(':').take(2).collect::<Vec<_>>().join(":");
    let without = format!("{user}@{rest}");
    assert!(!without.contains(&rbee_local::postgres::password(&w.cluster().data_dir.join("trust"), "rbee").unwrap()));
    w.attempt.sql_error = sqlx::PgPool::connect(&without).await.err().map(|e| e.to_string());
}

#[then("Postgres refuses the connection")]
fn connection_refused(w: &mut RbeeWorld) {
    let why = w.attempt.sql_error.clone().expect("the connection was refused");
    assert!(why.contains("password"), "{why}");
}

#[when(expr = "I pull {string} onto the cluster's node with rbee models pull")]
async fn pull_forbidden(w: &mut RbeeWorld, source: String) {
    let source = source.replace("{port}", &w.attempt.listener_port.to_string());
    let c = w.cluster();
    let args = ["models", "pull", source.as_str(), "--name", "forged-source", "--node", c.node.as_str()];
    let mut cmd = c.rbee_command_for(&args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("rbee models pull runs")).await.unwrap();
    w.dl.pull = Some(out);
}

#[then(expr = "the log holds no download or catalog entry of the model {string}")]
fn no_download(w: &mut RbeeWorld, model: String) {
    let events = w.cluster().events(false);
    let fetched: Vec<_> = events
        .iter()
        .filter(|e| e["data"]["model"] == model.as_str())
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("download.") || t == "model.registered"))
        .collect();
    assert!(fetched.is_empty(), "{fetched:?}");
}

#[given(expr = "an unrelated process whose command line names the worker {string}")]
fn unrelated_process(w: &mut RbeeWorld, worker: String) {
    // Its command line says rbee-worker and --worker-id <worker>: only a recorded identity tells it apart.
    // One process (no shell with a child of its own that would outlive it), its output nowhere:
    // the scenario's end stops all of it.
    let child = std::process::Command::new("python3")
        .args(["-c", "import time; time.sleep(300)", "rbee-worker", "--worker-id", &worker])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 starts");
    w.children.push(child);
}

#[when(expr = "a client as the admin records worker {string} on the cluster's node with that process's pid")]
async fn admin_forges_registration(w: &mut RbeeWorld, worker: String) {
    let pid = w.children.last().expect("the unrelated process").id();
    let c = w.cluster();
    let intruder =
        Intruder::connect(&c.nats_url, Some(&c.creds(Identity::Admin)), c.nats_ca.as_deref(), c.nats_cert.as_deref())
            .await;
    let event = Event::WorkerRegistered(WorkerRegistered {
        worker: worker.clone(),
        node: c.node.clone(),
        model: MODEL.into(),
        slots: 1,
        pid,
        backend: "cpu".into(),
    });
    intruder.append(event).await;
    eventually("the registration is in the log", DEADLINE, || async {
        let listed = c.workers().iter().any(|x| x["id"] == worker.as_str());
        if listed { Ok(()) } else { Err(()) }
    })
    .await;
}

#[when("I stop the cluster with rbee down")]
fn stop_with_down(w: &mut RbeeWorld) {
    let file = w.cluster().file();
    w.attempt.cluster_pids =
        ["nats_pid", "hive_pid", "queen_pid"].iter().map(|k| file[k].as_u64().unwrap() as u32).collect();
    let out = w.cluster().rbee(&["down"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[then("the unrelated process is still alive")]
fn unrelated_alive(w: &mut RbeeWorld) {
    let child = w.children.last_mut().expect("the unrelated process");
    assert!(child.try_wait().unwrap().is_none(), "rbee down killed a process it did not start");
}

#[then("the processes rbee up started are gone")]
fn cluster_gone(w: &mut RbeeWorld) {
    for pid in &w.attempt.cluster_pids {
        assert!(!rbee_runtime::alive(*pid), "pid {pid} still runs");
    }
}

#[when("I gather the cluster's secrets: its API key, database passwords and NATS seeds")]
fn gather_secrets(w: &mut RbeeWorld) {
    let c = w.cluster();
    let mut secrets = vec![c.api_key.clone()];
    for entry in walk(&c.data_dir.join("trust")) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".password") || name.ends_with(".nk") {
            secrets.push(text.trim().to_string());
        }
        // A credentials file's seed (the JWT beside it is public: the server holds those).
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.contains("BEGIN USER NKEY SEED") {
                secrets.extend(lines.next().map(|s| s.trim().to_string()));
            }
        }
    }
    assert!(secrets.len() >= 8, "the key, 3 passwords, 4 seeds at least: {}", secrets.len());
    assert!(secrets.iter().all(|s| s.len() >= 32), "every secret is long");
    w.attempt.secrets = secrets;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

fn assert_no_secret(w: &RbeeWorld, place: &str, text: &str) {
    for secret in &w.attempt.secrets {
        assert!(!text.contains(secret.as_str()), "a secret appears in {place}");
    }
}

#[then("none of them appears in the logs of its processes, their command lines, /health or /metrics")]
async fn no_secret_in_logs(w: &mut RbeeWorld) {
    let c = w.cluster();
    for log in walk(&c.data_dir.join("logs")) {
        assert_no_secret(w, &log.display().to_string(), &String::from_utf8_lossy(&std::fs::read(&log).unwrap()));
    }
    let file = c.file();
    let mut pids: Vec<u64> = ["nats_pid", "hive_pid", "queen_pid"].iter().filter_map(|k| file[k].as_u64()).collect();
    pids.extend(c.workers().iter().filter_map(|x| x["pid"].as_u64()));
    assert!(pids.len() >= 4, "nats-server, hive, queen and a worker");
    for pid in pids {
        let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .replace('\0', " ");
        assert!(!cmdline.is_empty(), "pid {pid} runs");
        assert_no_secret(w, &format!("the command line of {pid}"), &cmdline);
    }
    assert_no_secret(w, "cluster.json", &file.to_string());
    for path in ["/health", "/metrics"] {
        let text = reqwest::get(format!("{}{path}", c.queen_url)).await.unwrap().text().await.unwrap();
        assert_no_secret(w, path, &text);
    }
}

#[then("none of them appears in rbee events tail or in a backup of its log")]
fn no_secret_in_log(w: &mut RbeeWorld) {
    let c = w.cluster();
    let events = c.rbee(&["events", "tail", "--no-follow"]);
    assert!(events.status.success());
    assert_no_secret(w, "rbee events tail", &String::from_utf8_lossy(&events.stdout));
    let dir = rbee_features::scratch_dir("backup");
    let file = dir.join("rbee.backup");
    let out = c.rbee(&["backup", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let backup = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert_no_secret(w, "the backup", &backup);
}

#[then("every file of its trust directory, and its API key file, is readable by its owner only")]
fn secret_files_private(w: &mut RbeeWorld) {
    use std::os::unix::fs::PermissionsExt;
    let c = w.cluster();
    let mut files = walk(&c.data_dir.join("trust"));
    files.push(c.data_dir.join("api-key"));
    for file in files {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

#[then("rbee-queen --help does not show the value of RBEE_DATABASE_URL")]
fn help_hides_url(w: &mut RbeeWorld) {
    let out = std::process::Command::new(rbee_features::bin("rbee-queen"))
        .arg("--help")
        .env("RBEE_DATABASE_URL", &w.cluster().database_url)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(help.contains("RBEE_DATABASE_URL"), "{help}");
    assert_no_secret(w, "rbee-queen --help", &help);
    assert!(!help.contains(&w.cluster().database_url), "{help}");
}

#[given("a cluster of my own started with --nats-tls")]
async fn tls_cluster(w: &mut RbeeWorld) {
    let cluster = tokio::task::spawn_blocking(|| rbee_features::cluster::Cluster::up(&["--nats-tls"])).await.unwrap();
    w.own = Some(cluster.expect("rbee up --nats-tls"));
    assert!(w.cluster().nats_ca.is_some(), "cluster.json names the CA");
}

#[then("a client that does not trust the cluster's CA cannot connect, even with the admin's credentials")]
async fn untrusted_ca_refused(w: &mut RbeeWorld) {
    let c = w.cluster();
    // A CA of its own: the client dials over TLS but cannot verify the server.
    let other = rbee_features::scratch_dir("other-ca");
    let other_ca = rbee_local::tls::ensure(&other, &["127.0.0.1".to_string()]).unwrap().ca;
    let intruder =
        Intruder::connect(&c.nats_url, Some(&c.creds(Identity::Admin)), Some(&other_ca), c.nats_cert.as_deref()).await;
    let _ = std::fs::remove_dir_all(other);
    assert!(!intruder.connected(), "connected to a server another CA signed");
    assert!(intruder.connect_error.is_some());
}

#[then("a client that connects without TLS is refused, even with the admin's credentials")]
async fn plain_tcp_refused(w: &mut RbeeWorld) {
    let c = w.cluster();
    let intruder = Intruder::connect(&c.nats_url, Some(&c.creds(Identity::Admin)), None, None).await;
    assert!(!intruder.connected(), "a plain TCP client was let in");
}

#[then("a client that shows no certificate of the cluster is refused, even with the admin's credentials")]
async fn no_client_certificate_refused(w: &mut RbeeWorld) {
    let c = w.cluster();
    assert!(c.nats_cert.is_some(), "cluster.json names the client certificate");
    let intruder = Intruder::connect(&c.nats_url, Some(&c.creds(Identity::Admin)), c.nats_ca.as_deref(), None).await;
    assert!(!intruder.connected(), "a client without a certificate was let in");
    // A certificate another CA signed is no better.
    let other = rbee_features::scratch_dir("other-client");
    let foreign = rbee_local::tls::ensure(&other, &["127.0.0.1".to_string()]).unwrap().client;
    let intruder =
        Intruder::connect(&c.nats_url, Some(&c.creds(Identity::Admin)), c.nats_ca.as_deref(), Some(&foreign)).await;
    let _ = std::fs::remove_dir_all(other);
    assert!(!intruder.connected(), "a client with a foreign certificate was let in");
}

#[when(
    regex = r"^a client as the hive of its node, over TLS, sends the serving worker a work item and listens to tokens$"
)]
async fn hive_as_queen(w: &mut RbeeWorld) {
    w.intrude("as the hive of its node").await;
    assert!(w.intruder().connected(), "the hive's identity connects over TLS");
    let (worker, node, _) = w.serving_worker();
    let work = subjects::work(&node, &worker);
    w.intruder().publish(&work, b"not a work item".to_vec()).await;
    w.intruder().subscribe(subjects::TOKENS_SUBJECTS).await;
    w.attempt.refused = vec![work, subjects::TOKENS_SUBJECTS.to_string()];
}
