//! Steps of reliability.feature: dependencies that go away and come back.

use std::time::{Duration, Instant};

use cucumber::{then, when};
use rbee_features::poll::eventually;
use rbee_features::signal::{self, Signal};
use serde_json::Value;

use super::{DEADLINE, RbeeWorld};

impl RbeeWorld {
    /// `pg_ctl` on the cluster's Postgres, as `rbee up` set it up.
    fn cluster_postgres(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        let file = self.cluster().file();
        let path = |key: &str| std::path::PathBuf::from(file[key].as_str().expect("the cluster runs Postgres"));
        (path("postgres_bin"), path("postgres_root"))
    }

    /// GET `path` of the hive's status endpoints (`rbee up` records where).
    async fn hive_get(&self, path: &str) -> (u16, String) {
        let base = self.cluster().file()["hive_status_url"]
            .as_str()
            .expect("cluster.json records the hive's status")
            .to_string();
        let response = reqwest::get(format!("{base}{path}")).await.expect("the hive's status answers");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }

    async fn queen_get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(format!("{}{path}", self.cluster().queen_url)).await.expect("the queen answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[when("the cluster's Postgres is stopped")]
fn postgres_stopped(w: &mut RbeeWorld) {
    let (bin, root) = w.cluster_postgres();
    rbee_local::postgres::stop(&bin, &root).expect("pg_ctl stop");
}

#[when("the cluster's Postgres is started again")]
async fn postgres_started(w: &mut RbeeWorld) {
    let (bin, root) = w.cluster_postgres();
    let port: u16 = w.cluster().file()["database_url"]
        .as_str()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|tail| tail.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("the database URL names its port");
    let secrets = rbee_local::trust::dir_in(&w.cluster().data_dir);
    rbee_local::postgres::start(&bin, &root, port, &secrets).await.expect("pg_ctl start");
}

#[then("/health answers 503, the archiver retrying and behind the log")]
async fn archive_retrying(w: &mut RbeeWorld) {
    let health = eventually("/health reports the archiver retrying", DEADLINE * 2, || async {
        let (status, body) = w.queen_get("/health").await;
        let retrying = body["archive"]["state"] == "retrying" && body["archive"]["lag_events"].as_u64() > Some(0);
        if status == 503 && body["status"] == "degraded" && retrying { Ok(body) } else { Err((status, body)) }
    })
    .await;
    let reasons = health["reasons"].to_string();
    assert!(reasons.contains("archiver"), "{health}");
}

#[then(expr = "\\/health answers 200 with status {string} and the archive caught up")]
async fn archive_caught_up(w: &mut RbeeWorld, status: String) {
    eventually("the archive catches up", Duration::from_secs(90), || async {
        let (code, body) = w.queen_get("/health").await;
        let caught_up = body["archive"]["state"] == "archiving" && body["archive"]["lag_events"] == 0;
        if code == 200 && body["status"] == status.as_str() && caught_up { Ok(()) } else { Err((code, body)) }
    })
    .await;
}

#[then("the archive holds every event of the log, by sequence and event id")]
async fn archive_equals_log(w: &mut RbeeWorld) {
    let log: Vec<(i64, String)> = w
        .cluster()
        .events(false)
        .iter()
        .map(|e| (e["seq"].as_i64().unwrap(), e["id"].as_str().unwrap().to_string()))
        .collect();
    let pool = sqlx::PgPool::connect(&w.cluster().database_url).await.expect("the archive");
    let last = log.last().map_or(0, |e| e.0);
    let archived = eventually("the archive reaches the log's end", DEADLINE, || async {
        let rows: Vec<(i64, uuid::Uuid)> =
            sqlx::query_as("SELECT stream_seq, event_id FROM events WHERE stream_seq <= $1 ORDER BY stream_seq")
                .bind(last)
                .fetch_all(&pool)
                .await
                .map_err(|e| e.to_string())?;
        if rows.last().map(|r| r.0) == Some(last) { Ok(rows) } else { Err(format!("{:?}", rows.last())) }
    })
    .await;
    let archived: Vec<(i64, String)> = archived.into_iter().map(|(s, id)| (s, id.to_string())).collect();
    let only_in = |a: &[(i64, String)], b: &[(i64, String)]| -> Vec<(i64, String)> {
        let b: std::collections::BTreeSet<&(i64, String)> = b.iter().collect();
        a.iter().filter(|row| !b.contains(row)).take(20).cloned().collect()
    };
    let (missing, extra) = (only_in(&log, &archived), only_in(&archived, &log));
    assert!(
        missing.is_empty() && extra.is_empty(),
        "archive != log ({} rows archived, {} in the log): in the log only {missing:?}; in the archive only {extra:?}",
        archived.len(),
        log.len()
    );
}

#[then(expr = "\\/readyz answers {int}")]
async fn readyz_answers(w: &mut RbeeWorld, status: u16) {
    let (code, body) = w.queen_get("/readyz").await;
    assert_eq!(code, status, "{body}");
}

#[then(expr = "the hive's \\/readyz answers {int}")]
async fn hive_readyz_answers(w: &mut RbeeWorld, status: u16) {
    let (code, body) = w.hive_get("/readyz").await;
    assert_eq!(code, status, "{body}");
}

#[then(expr = "the hive's \\/readyz answers 503 naming {string}")]
async fn hive_readyz_names(w: &mut RbeeWorld, dependency: String) {
    eventually("the hive's /readyz names the dependency", DEADLINE, || async {
        match w.hive_get("/readyz").await {
            (503, body) if body.contains(&dependency) && body.contains("not_ready") => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[when("the cluster's nats-server is killed")]
fn nats_killed(w: &mut RbeeWorld) {
    let pid = w.cluster().file()["nats_pid"].as_u64().expect("cluster.json records nats-server") as u32;
    signal::send(pid, Signal::Kill);
    eventually_dead(pid);
}

fn eventually_dead(pid: u32) {
    let deadline = Instant::now() + DEADLINE;
    while rbee_runtime::alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!rbee_runtime::alive(pid), "nats-server {pid} is gone");
}

#[then(expr = "\\/readyz answers 503 naming {string}")]
async fn readyz_names(w: &mut RbeeWorld, dependency: String) {
    let body = eventually("/readyz names the dependency", DEADLINE, || async {
        let (code, body) = w.queen_get("/readyz").await;
        if code == 503 && body["reasons"].to_string().contains(&dependency) { Ok(body) } else { Err((code, body)) }
    })
    .await;
    assert_eq!(body["status"], "not_ready");
}

#[then(expr = "\\/health answers 503 with status {string}")]
async fn health_degraded(w: &mut RbeeWorld, status: String) {
    let (code, body) = w.queen_get("/health").await;
    assert_eq!((code, body["status"].as_str()), (503, Some(status.as_str())), "{body}");
    assert_eq!(body["nats"], "disconnected", "{body}");
}

#[then(expr = "a chat request is refused within {int} seconds with HTTP {int} and code {string}")]
async fn refused_fast(w: &mut RbeeWorld, seconds: u64, status: u16, code: String) {
    let started = Instant::now();
    let response = w.post_chat("Say hi.", 2, false).await;
    let elapsed = started.elapsed();
    let answer = (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null));
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code.as_str(), "{}", answer.1);
    assert!(elapsed < Duration::from_secs(seconds), "refused after {elapsed:?}");
}

/// How long a CLI command may take against a cluster that holds an undecodable event.
const CLI_DEADLINE: Duration = Duration::from_secs(15);

impl RbeeWorld {
    /// Runs `rbee <args>` against the scenario's cluster; a command still running after
    /// [`CLI_DEADLINE`] is killed (by the pid this step started) and fails the step as hung.
    fn rbee_within_deadline(&self, args: &[&str]) -> std::process::Output {
        let child = self
            .cluster()
            .rbee_command_for(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("rbee starts");
        let pid = child.id();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait_with_output());
        });
        match finished.recv_timeout(CLI_DEADLINE) {
            Ok(output) => output.expect("rbee ran"),
            Err(_) => {
                signal::send(pid, Signal::Kill);
                panic!("rbee {} hung past {CLI_DEADLINE:?}", args.join(" "));
            }
        }
    }
}

#[when(expr = "the admin publishes a 2-byte message without headers on {string}")]
async fn publish_junk(w: &mut RbeeWorld, subject: String) {
    let client = w.cluster().admin_client().await;
    let js = async_nats::jetstream::new(client);
    let ack = js.publish(subject.clone(), b"\x01\x02"[..].into()).await.unwrap().await.expect("stored");
    w.junk = Some((ack.sequence, subject));
}

#[then("rbee events tail --no-follow shows it as undecodable, with its subject and sequence")]
fn tail_shows_junk(w: &mut RbeeWorld) {
    let (seq, subject) = w.junk.clone().expect("junk published");
    let out = w.rbee_within_deadline(&["events", "tail", "--no-follow", "--no-heartbeats"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
    let junk = lines.iter().find(|l| l["seq"] == seq).expect("the junk has a line");
    assert_eq!(junk["type"], "undecodable", "{junk}");
    assert_eq!(junk["subject"], subject.as_str(), "{junk}");
    assert!(junk["reason"].as_str().is_some_and(|r| !r.is_empty()), "{junk}");
}

#[then("rbee workers, rbee replay and rbee replay at its sequence each answer, rbee replay counting it as skipped")]
fn commands_answer(w: &mut RbeeWorld) {
    let (seq, _) = w.junk.clone().expect("junk published");
    let workers = w.rbee_within_deadline(&["workers", "--json"]);
    assert!(workers.status.success(), "{}", String::from_utf8_lossy(&workers.stderr));
    let listed: Value = serde_json::from_slice(&workers.stdout).expect("workers JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    for args in [vec!["replay".to_string()], vec!["replay".into(), "--at".into(), seq.to_string()]] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = w.rbee_within_deadline(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("1 event(s) could not be decoded"), "{stderr}");
    }
}

#[then("rbee replay at every sequence of the log answers with the registry")]
fn replay_everywhere(w: &mut RbeeWorld) {
    let last = w.cluster().events(false).last().and_then(|e| e["seq"].as_u64()).expect("events");
    let (junk, _) = w.junk.clone().expect("junk published");
    assert!(last > junk, "an event after the junk");
    for seq in 1..=last {
        let out = w.rbee_within_deadline(&["replay", "--at", &seq.to_string()]);
        assert!(out.status.success(), "rbee replay --at {seq}: {}", String::from_utf8_lossy(&out.stderr));
        let view: Value = serde_json::from_slice(&out.stdout).expect("replay JSON");
        assert!(view["workers"].is_array(), "{view}");
    }
}

#[then("the queen's log reports the undecodable event with its sequence and subject")]
async fn queen_reports_junk(w: &mut RbeeWorld) {
    let (seq, subject) = w.junk.clone().expect("junk published");
    let c = w.cluster();
    eventually("the queen reports the undecodable event", DEADLINE, || async {
        let log = c.log_file("queen.log");
        let line = log.lines().find(|l| {
            l.contains(rbee_bus::Code::UndecodableEvent.as_str()) && l.contains(&format!("event {seq} on {subject}"))
        });
        line.map(str::to_string).ok_or(())
    })
    .await;
}

#[when(
    expr = "a streaming request with max_tokens {int} runs through the second queen, which is killed after its first tokens"
)]
async fn stream_then_kill_queen(w: &mut RbeeWorld, max_tokens: u32) {
    let body = serde_json::json!({"model": super::MODEL, "stream": true, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Tell me a long story about a bee."}]});
    let url = format!("{}/v1/chat/completions", w.second_queen);
    let response = w.cluster().http().post(url).json(&body).send().await.expect("the second queen answers");
    assert_eq!(response.status().as_u16(), 200);
    w.request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut bytes = response.bytes_stream();
    let mut seen = Vec::new();
    while String::from_utf8_lossy(&seen).matches("data: ").count() < 3 {
        let chunk = futures::StreamExt::next(&mut bytes).await.expect("the stream goes on").expect("a chunk");
        seen.extend_from_slice(&chunk);
    }
    w.killed_at_ms = rbee_bus::envelope::now_ms();
    w.kill_second_queen();
}

#[then("within 2 seconds of the kill the worker records the request cancelled and releases its slot")]
async fn orphan_stopped(w: &mut RbeeWorld) {
    let request = w.request_id.clone();
    let c = w.cluster();
    let (finished, released) = eventually("the request's end is recorded", DEADLINE, || async {
        let events = c.events(false);
        let of_request =
            |kind: &str| events.iter().find(|e| e["type"] == kind && e["data"]["request"] == request.as_str()).cloned();
        match (of_request("request.finished"), of_request("slot.released")) {
            (Some(f), Some(r)) => Ok((f, r)),
            other => Err(other),
        }
    })
    .await;
    let reason = finished["data"]["finish_reason"].as_str().unwrap_or_default().to_lowercase();
    assert_eq!(reason, "cancelled", "{finished}");
    assert!(finished["data"]["completion_tokens"].as_u64() < Some(2000), "{finished}");
    let after = finished["at_ms"].as_u64().unwrap().saturating_sub(w.killed_at_ms);
    assert!(after <= 2000, "stopped {after} ms after the queen died");
    assert!(released["at_ms"].as_u64().unwrap() >= finished["at_ms"].as_u64().unwrap(), "{released}");
}

#[when(
    expr = "a streaming request with max_tokens {int} runs and nats-server is paused for {int} seconds right after its first tokens"
)]
async fn pause_nats_mid_request(w: &mut RbeeWorld, max_tokens: u32, seconds: u64) {
    w.stream_in_background("Tell me a long story about a bee.", max_tokens).await;
    let pid = w.cluster().file()["nats_pid"].as_u64().expect("cluster.json records nats-server") as u32;
    signal::send(pid, Signal::Stop);
    let paused = Instant::now();
    // Meanwhile the request ends, and its outcome waits on the worker's disk.
    let dir = w.worker_outbox();
    let worker = dir.file_name().unwrap().to_string_lossy().to_string();
    let series = format!("rbee_hive_outbox_events{{owner=\"{worker}\"}}");
    let (mut waited, mut shown) = (0, 0.0f64);
    while paused.elapsed() < Duration::from_secs(seconds) {
        waited = waited.max(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0));
        let (_, metrics) = w.hive_get("/metrics").await;
        shown = shown.max(super::serving::sample(&metrics, &series));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal::send(pid, Signal::Continue);
    assert!(waited > 0, "no event waited in {} while nats-server was paused", dir.display());
    assert!(shown > 0.0, "the hive's /metrics never showed {series} above 0 while events waited");
}

impl RbeeWorld {
    /// The outbox directory of the cluster's (only) worker.
    fn worker_outbox(&self) -> std::path::PathBuf {
        let file = std::fs::read_dir(rbee_runtime::worker_records(&self.cluster().data_dir))
            .expect("the hive's worker records")
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "json"))
            .expect("a worker record");
        let id = file.path().file_stem().unwrap().to_string_lossy().to_string();
        self.cluster().data_dir.join("outbox").join("workers").join(id)
    }
}

#[then("the log holds the request's request.finished and slot.released, each once")]
async fn outcome_landed(w: &mut RbeeWorld) {
    let c = w.cluster();
    let request = eventually("the request is in the log", Duration::from_secs(60), || async {
        let accepted = c.events_of("request.accepted");
        accepted.last().map(|e| e["data"]["request"].as_str().unwrap().to_string()).ok_or(())
    })
    .await;
    eventually("its outcome reaches the log", Duration::from_secs(60), || async {
        let events = c.events(false);
        let count = |kind: &str| {
            events.iter().filter(|e| e["type"] == kind && e["data"]["request"] == request.as_str()).count()
        };
        match (count("request.finished"), count("slot.released")) {
            (1, 1) => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[then("the worker's outbox is empty")]
async fn outbox_empty(w: &mut RbeeWorld) {
    let dir = w.worker_outbox();
    let left = |dir: &std::path::Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    eventually("the worker's outbox empties", DEADLINE, || async {
        match left(&dir) {
            0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    assert!(dir.is_dir(), "the running worker keeps its outbox at {}", dir.display());
}

/// The processes of the scenario's cluster: nats-server, Postgres, the hive, the queen and the
/// worker, by pid.
fn cluster_pids(w: &RbeeWorld) -> Vec<(&'static str, u64)> {
    let file = w.cluster().file();
    let worker = w.cluster().workers()[0]["pid"].as_u64().expect("the worker's pid");
    vec![
        ("nats-server", file["nats_pid"].as_u64().unwrap()),
        ("postgres", file["postgres_pid"].as_u64().unwrap()),
        ("hive", file["hive_pid"].as_u64().unwrap()),
        ("queen", file["queen_pid"].as_u64().unwrap()),
        ("worker", worker),
    ]
}

#[when("its queen is killed and rbee up runs again")]
fn queen_killed_then_up(w: &mut RbeeWorld) {
    let before = cluster_pids(w);
    let queen = before.iter().find(|(name, _)| *name == "queen").unwrap().1 as u32;
    signal::send(queen, Signal::Kill);
    eventually_dead(queen);
    let out = w.rbee_within_deadline(&["up", "--port", "0", "--node", &w.cluster().node.clone()]);
    assert!(out.status.success(), "rbee up: {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("starting the queen again"), "{said}");
    w.pids_before = before;
}

#[then("the queen answers again on its recorded port, recovered from its checkpoint")]
async fn queen_back(w: &mut RbeeWorld) {
    let (status, health) = w.queen_get("/health").await;
    assert_eq!(status, 200, "{health}");
    let recovery = health["recovery"].as_str().unwrap_or_default();
    assert!(recovery.contains("checkpoint"), "{health}");
}

#[then("nats-server, Postgres, the hive and the worker are the same processes as before")]
fn same_processes(w: &mut RbeeWorld) {
    let now = cluster_pids(w);
    for ((name, before), (_, after)) in w.pids_before.iter().zip(&now) {
        if *name == "queen" {
            assert_ne!(before, after, "a new queen");
        } else {
            assert_eq!(before, after, "{name} was started again");
        }
    }
}

/// What a request of a burst got: when it was sent (its index), its id, status, queue position
/// and completion tokens.
#[derive(Debug, Clone)]
pub struct Sent {
    index: usize,
    request: String,
    status: u16,
    position: usize,
    tokens: u64,
}

#[when(expr = "{int} chat requests with max_tokens {int} are sent {int} ms apart, without waiting for answers")]
async fn burst(w: &mut RbeeWorld, n: usize, max_tokens: u32, gap_ms: u64) {
    let (client, url) = (w.cluster().http(), format!("{}/v1/chat/completions", w.cluster().queen_url));
    let mut tasks = Vec::new();
    for index in 0..n {
        let (client, url) = (client.clone(), url.clone());
        let body = serde_json::json!({"model": super::MODEL, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": format!("Tell me story number {index} about a bee.")}]});
        tasks.push(tokio::spawn(async move {
            let response = client.post(url).json(&body).send().await.expect("the queen answers");
            let header =
                |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let (request, position) = (header("x-request-id"), header("x-queue-position").parse().unwrap_or(0));
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let tokens = body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
            Sent { index, request, status, position, tokens }
        }));
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
    }
    w.burst = futures::future::join_all(tasks).await.into_iter().map(|t| t.unwrap()).collect();
}

#[then(expr = "every one completes with {int} tokens, none refused")]
fn burst_completed(w: &mut RbeeWorld, tokens: u64) {
    for sent in &w.burst {
        assert_eq!((sent.status, sent.tokens), (200, tokens), "{sent:?}");
    }
}

#[then("the later ones were told they waited behind others")]
fn burst_positions(w: &mut RbeeWorld) {
    let last = w.burst.last().expect("a burst");
    assert!(last.position >= 2, "the last of the burst waited behind others: {:?}", w.burst);
    assert!(w.burst.iter().all(|s| s.position >= 1), "{:?}", w.burst);
}

#[then("the log accepted them in the order they were sent")]
fn burst_order(w: &mut RbeeWorld) {
    let accepted: Vec<String> = w
        .cluster()
        .events_of("request.accepted")
        .iter()
        .map(|e| e["data"]["request"].as_str().unwrap().to_string())
        .filter(|r| w.burst.iter().any(|s| &s.request == r))
        .collect();
    let sent: Vec<String> = w.burst.iter().map(|s| s.request.clone()).collect();
    assert_eq!(
        accepted,
        sent,
        "accepted in another order than sent: {:?}",
        w.burst.iter().map(|s| s.index).collect::<Vec<_>>()
    );
}

#[when(expr = "a request with max_tokens {int} runs and a second one, queued behind it, is abandoned by its client")]
async fn abandon_queued(w: &mut RbeeWorld, max_tokens: u32) {
    w.stream_in_background("Tell me a long story about a bee.", max_tokens).await;
    let (client, url) = (w.cluster().http(), format!("{}/v1/chat/completions", w.cluster().queen_url));
    let body = serde_json::json!({"model": super::MODEL, "max_tokens": 4,
        "messages": [{"role": "user", "content": "Say hi."}]});
    // Its client gives up while it waits: the request is dropped before any answer.
    let abandoned = tokio::time::timeout(Duration::from_millis(500), client.post(url).json(&body).send()).await;
    assert!(abandoned.is_err(), "the second request was answered at once: {abandoned:?}");
}

#[then("once the first has finished, the log holds no request but the first")]
async fn only_first_ran(w: &mut RbeeWorld) {
    let text = tokio::time::timeout(DEADLINE * 4, w.background.take().expect("the first request"))
        .await
        .expect("the first request ends")
        .unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // Long enough for a queued request to have been admitted, had it stayed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = w.cluster().events_of("request.accepted");
    assert_eq!(accepted.len(), 1, "{accepted:?}");
}

#[when(expr = "I ask for {int} tokens with the header x-request-timeout {int}")]
async fn ask_with_deadline(w: &mut RbeeWorld, max_tokens: u32, seconds: u64) {
    let body = serde_json::json!({"model": super::MODEL, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Tell me a long story about a bee."}]});
    let response = w
        .cluster()
        .http()
        .post(format!("{}/v1/chat/completions", w.cluster().queen_url))
        .header("x-request-timeout", seconds.to_string())
        .json(&body)
        .send()
        .await
        .expect("the queen answers");
    w.request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().into();
    w.record(response).await;
}

#[then(expr = "the answer is HTTP {int} with code {string}")]
fn answer_is(w: &mut RbeeWorld, status: u16, code: String) {
    assert_eq!(w.status, status, "{}", w.body);
    assert_eq!(w.body["error"]["code"], code.as_str(), "{}", w.body);
}

#[then("the log records that request cancelled for its deadline, its end and its slot released")]
async fn deadline_recorded(w: &mut RbeeWorld) {
    let request = w.request_id.clone();
    let c = w.cluster();
    eventually("the request's cancellation, end and slot release are recorded", DEADLINE, || async {
        let events = c.events(false);
        let of =
            |kind: &str| events.iter().find(|e| e["type"] == kind && e["data"]["request"] == request.as_str()).cloned();
        match (of("request.cancelled"), of("request.finished"), of("slot.released")) {
            (Some(cancelled), Some(finished), Some(_)) if cancelled["data"]["reason"] == "deadline" => {
                let tokens = finished["data"]["completion_tokens"].as_u64().unwrap_or(u64::MAX);
                if tokens < 2000 { Ok(()) } else { Err(format!("it ran to the end: {finished}")) }
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[when(expr = "a streaming request with max_tokens {int} runs and nats-server is killed right after its first tokens")]
async fn kill_nats_mid_stream(w: &mut RbeeWorld, max_tokens: u32) {
    w.stream_in_background("Tell me a long story about a bee.", max_tokens).await;
    let pid = w.cluster().file()["nats_pid"].as_u64().expect("cluster.json records nats-server") as u32;
    signal::send(pid, Signal::Kill);
    w.killed_at_ms = rbee_bus::envelope::now_ms();
    eventually_dead(pid);
}

#[then(expr = "the stream ends with an error event {string} within {int} seconds of the kill")]
async fn stream_ends_with_error(w: &mut RbeeWorld, code: String, seconds: u64) {
    let text = tokio::time::timeout(DEADLINE * 4, w.background.take().expect("a streaming request"))
        .await
        .expect("the stream ends")
        .unwrap();
    let ended_after = rbee_bus::envelope::now_ms().saturating_sub(w.killed_at_ms);
    assert!(text.contains(&format!("\"code\":\"{code}\"")), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(ended_after <= seconds * 1000, "the stream ended {ended_after} ms after the kill");
}

#[when("nats-server is started again on its port and store")]
async fn nats_started_again(w: &mut RbeeWorld) {
    let file = w.cluster().file();
    let old = file["nats_pid"].as_u64().unwrap();
    let exe = file["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"].as_u64() == Some(old)))
        .and_then(|p| p["exe"].as_str())
        .map(std::path::PathBuf::from)
        .expect("cluster.json records nats-server's executable");
    let data = w.cluster().data_dir.clone();
    let config = data.join("nats").join("nats.conf").display().to_string();
    let pid = rbee_local::process::spawn_detached(
        &exe,
        &["-c".into(), config],
        &data.join("logs").join("nats-again.log"),
        &[],
    )
    .expect("nats-server starts again");
    // Not recorded in cluster.json: this scenario stops it.
    w.stop_at_end.push(pid as i32);
    let monitor = format!("{}/healthz?js-enabled-only=true", file["nats_monitor_url"].as_str().unwrap());
    eventually("nats-server serves again", DEADLINE, || async {
        match reqwest::get(&monitor).await {
            Ok(r) if r.status().is_success() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

pub(super) fn greedy_body(prompt: &str, max_tokens: u32, stream: bool) -> Value {
    serde_json::json!({"model": super::MODEL, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": prompt}]})
}

#[when(expr = "the greedy answer to {string} with max_tokens {int} is noted from one request alone")]
async fn note_greedy(w: &mut RbeeWorld, prompt: String, max_tokens: u32) {
    let response = w.post_chat_body(&greedy_body(&prompt, max_tokens, false)).await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    w.prompt = prompt;
    w.noted_text = body["choices"][0]["message"]["content"].as_str().expect("an answer").to_string();
    w.noted_tokens = body["usage"]["completion_tokens"].as_u64().expect("usage");
    w.noted_seq = max_tokens as u64;
    assert!(!w.noted_text.is_empty());
}

#[when(expr = "{int} streaming requests of it run at once")]
async fn many_streams(w: &mut RbeeWorld, n: usize) {
    let body = greedy_body(&w.prompt, w.noted_seq as u32, true);
    let (client, url) = (w.cluster().http(), format!("{}/v1/chat/completions", w.cluster().queen_url));
    let streams = (0..n).map(|_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            let response = client.post(url).json(&body).send().await.expect("the queen answers");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    });
    w.stream_texts = futures::future::join_all(streams).await;
}

#[then(expr = "every stream completes with {int} tokens and exactly the noted text, in order, ending with [DONE]")]
fn streams_exact(w: &mut RbeeWorld, tokens: u64) {
    for (status, sse) in &w.stream_texts {
        assert_eq!(*status, 200, "{sse}");
        assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
        let mut text = String::new();
        let mut usage = None;
        for data in sse.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
            let chunk: Value = serde_json::from_str(data).expect("a JSON chunk");
            text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
            if chunk["usage"].is_object() {
                usage = chunk["usage"]["completion_tokens"].as_u64();
            }
        }
        assert_eq!(text, w.noted_text, "a token lost or out of order");
        assert_eq!(usage, Some(tokens), "{sse}");
    }
}

/// A worker silent through an outage is stale until its next heartbeat is folded again.
#[then("the queen is ready again once it hears the worker")]
async fn ready_again(w: &mut RbeeWorld) {
    eventually("/readyz answers 200 again", DEADLINE * 2, || async {
        match w.queen_get("/readyz").await {
            (200, _) => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[then("the worker was never marked stale: the queen judges no silence it could not hear")]
fn never_stale(w: &mut RbeeWorld) {
    let stale: Vec<Value> =
        w.cluster().events_of("worker.state_changed").into_iter().filter(|e| e["data"]["state"] == "Stale").collect();
    assert!(stale.is_empty(), "marked stale after the outage: {stale:?}");
}
