//! Steps of registry.feature: duplicate registration, and a worker's life in the registry.

use std::process::{Command, Stdio};

use cucumber::{given, then, when};
use rbee_bus::Code;
use rbee_features::poll::eventually;
use rbee_features::signal::{self, Signal};
use serde_json::Value;

use super::{DEADLINE, MODEL, RbeeWorld};

/// The shared cluster without workers. An earlier scenario's workers may still be leaving it
/// (their hive stops them, or the reaper removes them: this cluster's timeouts are short).
#[given("a running cluster without workers")]
async fn bare_cluster(w: &mut RbeeWorld) {
    w.shared = Some(crate::bare());
    eventually("no worker is left in the shared cluster", DEADLINE * 4, || async {
        let workers = w.cluster().workers();
        if workers.is_empty() { Ok(()) } else { Err(workers) }
    })
    .await;
}

#[when("three worker processes start at once with the same worker id")]
fn three_workers(w: &mut RbeeWorld) {
    w.worker_id = format!("dup-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    for _ in 0..3 {
        // Their stderr is read later: the losers say why they exited.
        spawn_worker(w, 1, Stdio::piped());
    }
}

#[then("exactly one of them is still running")]
async fn one_running(w: &mut RbeeWorld) {
    let exited = eventually("two of the three workers exit", DEADLINE, || {
        let done: Vec<bool> = w.children.iter_mut().map(|c| c.try_wait().ok().flatten().is_some()).collect();
        async move { if done.iter().filter(|d| **d).count() == 2 { Ok(done) } else { Err(done) } }
    })
    .await;
    assert_eq!(exited.iter().filter(|d| !**d).count(), 1);
    let c = w.cluster();
    let id = w.worker_id.clone();
    eventually("the winner is in the registry", DEADLINE, || async {
        let workers = c.workers();
        if workers.iter().any(|x| x["id"] == id.as_str()) { Ok(()) } else { Err(workers) }
    })
    .await;
}

#[then(expr = "the other two exit with code 1 saying {string}")]
fn losers_exit(w: &mut RbeeWorld, code: String) {
    let mut losers = 0;
    for child in &mut w.children {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            assert_eq!(status.code(), Some(1), "{stderr}");
            assert!(stderr.contains(&format!("error[{code}]")), "{stderr}");
            losers += 1;
        }
    }
    assert_eq!(losers, 2);
}

#[then("the log holds exactly one worker.registered for that id")]
fn one_registration(w: &mut RbeeWorld) {
    let registered: Vec<Value> = w
        .cluster()
        .events_of("worker.registered")
        .into_iter()
        .filter(|e| e["data"]["worker"] == w.worker_id.as_str())
        .collect();
    assert_eq!(registered.len(), 1, "{registered:?}");
}

#[given("a worker is started for the default model through rbee up")]
#[when("a worker is started for the default model through rbee up")]
fn worker_through_up(w: &mut RbeeWorld) {
    let c = w.cluster();
    let out = c.rbee(&["up", "--port", "0", "--node", &c.node]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let started = stdout.lines().find_map(|l| l.strip_prefix("starting worker ")).expect("rbee up started a worker");
    w.worker_id = started.split_whitespace().next().unwrap().to_string();
}

fn listed(w: &RbeeWorld, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["workers", "--json"];
    args.extend_from_slice(filters);
    let out = w.cluster().rbee(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["id"] == w.worker_id.as_str())
        .cloned()
        .collect()
}

#[then("rbee workers lists it as ready with its model and node")]
fn listed_ready(w: &mut RbeeWorld) {
    let found = listed(w, &[]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["state"], "Ready");
    assert_eq!(found[0]["model"], MODEL);
    assert_eq!(found[0]["node"], w.cluster().node.as_str());
}

#[then("rbee workers filtered by its model and by state ready lists it")]
fn filtered_in(w: &mut RbeeWorld) {
    let node = w.cluster().node.clone();
    assert_eq!(listed(w, &["--model", MODEL, "--state", "ready", "--node", &node]).len(), 1);
}

#[then("rbee workers filtered by another model or by state loading does not list it")]
fn filtered_out(w: &mut RbeeWorld) {
    assert!(listed(w, &["--model", "other-model"]).is_empty());
    assert!(listed(w, &["--state", "loading"]).is_empty());
    let bad = w.cluster().rbee(&["workers", "--state", "sleeping\u{7}"]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains(Code::InvalidFilter.as_str()) && !stderr.contains('\u{7}'), "{stderr}");
}

#[when("that worker process is stopped")]
fn stop_worker(w: &mut RbeeWorld) {
    let found = listed(w, &[]);
    let pid = found[0]["pid"].as_u64().expect("pid") as i32;
    signal::send(pid as u32, Signal::Terminate);
}

#[then("rbee workers no longer lists it")]
async fn not_listed(w: &mut RbeeWorld) {
    eventually("the worker is gone from the registry", DEADLINE, || async {
        let found = listed(w, &[]);
        if found.is_empty() { Ok(()) } else { Err(found) }
    })
    .await;
}

#[then("the log records its state change to stopped and its exit with code 0")]
async fn exit_recorded(w: &mut RbeeWorld) {
    let exited = w.one_event("worker.exited", "worker", &w.worker_id).await;
    assert_eq!(exited["data"]["exit_code"], 0);
    let (c, id) = (w.cluster(), w.worker_id.clone());
    let stopped = c
        .events_of("worker.state_changed")
        .into_iter()
        .any(|e| e["data"]["worker"] == id.as_str() && e["data"]["state"] == "Stopped");
    assert!(stopped);
}

#[when("that worker process is paused so its heartbeats stop")]
fn pause_worker(w: &mut RbeeWorld) {
    let found = listed(w, &[]);
    let pid = found[0]["pid"].as_u64().expect("pid") as i32;
    signal::send(pid as u32, Signal::Stop);
    w.stop_at_end.push(pid);
}

/// An idle stale worker is removed at the reaper's next tick: rather than race that half second,
/// the registry is replayed to the moment the worker was marked stale.
#[then("the log marks it stale, and the registry replayed at that event shows it stale")]
async fn shown_stale(w: &mut RbeeWorld) {
    let seq = eventually("the worker is marked stale", DEADLINE, || async {
        let marked = w
            .cluster()
            .events_of("worker.state_changed")
            .into_iter()
            .find(|e| e["data"]["worker"] == w.worker_id.as_str() && e["data"]["state"] == "Stale");
        marked.and_then(|e| e["seq"].as_u64()).ok_or(())
    })
    .await;
    let out = w.cluster().rbee(&["replay", "--at", &seq.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    let worker = view["workers"].as_array().unwrap().iter().find(|x| x["id"] == w.worker_id.as_str()).cloned();
    assert_eq!(worker.as_ref().map(|x| x["state"].clone()), Some(Value::from("Stale")), "{view}");
}

#[then(expr = "a chat completion for its model is refused with HTTP {int} and code {string}")]
async fn refused_with(w: &mut RbeeWorld, status: u16, code: String) {
    w.ask("Hello", 5).await;
    assert_eq!(w.status, status, "{}", w.body);
    assert_eq!(w.body["error"]["code"], code.as_str());
}

#[then(expr = "the log records worker.removed for it with the reason {string}")]
fn removed_in_log(w: &mut RbeeWorld, reason: String) {
    let removed: Vec<Value> = w
        .cluster()
        .events_of("worker.removed")
        .into_iter()
        .filter(|e| e["data"]["worker"] == w.worker_id.as_str())
        .collect();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["data"]["reason"], reason.as_str());
    let stale = w
        .cluster()
        .events_of("worker.state_changed")
        .into_iter()
        .any(|e| e["data"]["worker"] == w.worker_id.as_str() && e["data"]["state"] == "Stale");
    assert!(stale, "it was marked stale first");
}

/// Starts an `rbee-worker` process for `w.worker_id` on the scenario's cluster (stopped with the world).
fn spawn_worker(w: &mut RbeeWorld, slots: u32, stderr: Stdio) {
    let c = w.cluster();
    let child = Command::new(rbee_features::bin("rbee-worker"))
        .env("RBEE_NATS_CREDS", c.worker_creds(&c.node, &w.worker_id))
        .args([
            "--nats-url",
            &c.nats_url,
            "--node",
            &c.node,
            "--worker-id",
            &w.worker_id,
            "--model",
            MODEL,
            "--slots",
            &slots.to_string(),
        ])
        .arg("--model-path")
        .arg(rbee_features::default_model_file())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("rbee-worker starts");
    w.children.push(child);
}

async fn wait_ready_with_slots(w: &RbeeWorld, slots: u64) {
    eventually("the worker is ready with its slots", DEADLINE, || async {
        let found = listed(w, &[]);
        if found.len() == 1 && found[0]["state"] == "Ready" && found[0]["slots"] == slots { Ok(()) } else { Err(found) }
    })
    .await;
}

#[given("a worker process registered under a new id with 1 slot")]
async fn worker_one_slot(w: &mut RbeeWorld) {
    w.worker_id = format!("cap-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    spawn_worker(w, 1, Stdio::null());
    wait_ready_with_slots(w, 1).await;
}

#[when("that worker stops and a worker registers again under the same id with 2 slots")]
async fn reregister(w: &mut RbeeWorld) {
    let mut first = w.children.pop().unwrap();
    signal::send(first.id(), Signal::Terminate);
    assert!(first.wait().unwrap().success(), "the first worker stops cleanly");
    spawn_worker(w, 2, Stdio::null());
}

#[then("rbee workers lists that id once, with 2 slots")]
async fn listed_with_two_slots(w: &mut RbeeWorld) {
    wait_ready_with_slots(w, 2).await;
}

#[then("the log holds two worker.registered events for that id, the second after the first one stopped")]
fn two_registrations(w: &mut RbeeWorld) {
    let events = w.worker_history();
    let kinds: Vec<(String, Value)> =
        events.iter().map(|e| (e["type"].as_str().unwrap().to_string(), e["data"]["state"].clone())).collect();
    let registrations: Vec<usize> =
        events.iter().enumerate().filter(|(_, e)| e["type"] == "worker.registered").map(|(i, _)| i).collect();
    assert_eq!(registrations.len(), 2, "{kinds:?}");
    let stopped = events
        .iter()
        .position(|e| e["type"] == "worker.state_changed" && e["data"]["state"] == "Stopped")
        .expect("stopped");
    assert!(registrations[0] < stopped && stopped < registrations[1], "{kinds:?}");
    assert_eq!(events[registrations[1]]["data"]["slots"], 2);
}

#[given(expr = "a cluster of my own serving the default model, with room for {int} worker")]
fn own_cluster_limited(w: &mut RbeeWorld, limit: u32) {
    let limit = limit.to_string();
    w.own = Some(rbee_features::cluster::Cluster::up(&["--max-workers", &limit]).expect("rbee up succeeds"));
}

#[when("I ask for one more worker with rbee workers start")]
fn one_more_worker(w: &mut RbeeWorld) {
    w.output = Some(w.cluster().rbee(&["workers", "start", "--timeout-secs", "60"]));
}

#[then(expr = "rbee exits with code 1 saying {string} and suggesting to remove stale workers")]
fn exits_registry_full(w: &mut RbeeWorld, code: String) {
    let out = w.output.as_ref().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("error[{code}]")) && stderr.contains("remove stale workers"), "{stderr}");
}

#[then(expr = "the log records worker.start_failed with code {string}")]
fn start_failed_logged(w: &mut RbeeWorld, code: String) {
    let failed = w.cluster().events_of("worker.start_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["data"]["code"], code.as_str());
}

#[then("rbee workers still lists exactly one worker")]
fn still_one(w: &mut RbeeWorld) {
    assert_eq!(w.cluster().workers().len(), 1);
}

#[given(expr = "a streaming request of {string} with max_tokens {int} is running on it")]
async fn background_stream(w: &mut RbeeWorld, prompt: String, max_tokens: u32) {
    // Returns once text flows, so the request is generating when the worker is paused.
    w.stream_in_background(&prompt, max_tokens).await;
}

#[then("after the grace period the log records worker.removed for it, saying its request was abandoned")]
async fn removed_after_grace(w: &mut RbeeWorld) {
    let removed = w.one_event("worker.removed", "worker", &w.worker_id).await;
    let reason = removed["data"]["reason"].as_str().unwrap();
    assert!(reason.contains("1 request(s) abandoned after the grace period"), "{reason}");
}

#[when("the paused worker process resumes")]
fn resume(w: &mut RbeeWorld) {
    for pid in &w.stop_at_end {
        signal::send(*pid as u32, Signal::Continue);
    }
}

/// The cluster gave the worker up: its client is told so, instead of waiting for tokens that
/// could come from a worker no longer in the cluster.
#[then(expr = "the running request's stream ended with an error event {string} and [DONE]")]
async fn background_lost(w: &mut RbeeWorld, code: String) {
    let handle = w.background.take().expect("a running request");
    let text = tokio::time::timeout(DEADLINE * 2, handle).await.expect("the stream ends").unwrap();
    assert!(text.contains(&format!("\"code\":\"{code}\"")), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[then("the resumed worker gives the abandoned request up and releases its slot, its end recorded once")]
async fn resumed_worker_stops(w: &mut RbeeWorld) {
    let accepted = w.cluster().events_of("request.accepted");
    let request = accepted.last().expect("the request")["data"]["request"].as_str().unwrap().to_string();
    let c = w.cluster();
    eventually("the resumed worker releases the request's slot", DEADLINE, || async {
        let released = c.events_of("slot.released");
        released.iter().find(|e| e["data"]["request"] == request.as_str()).cloned().ok_or(())
    })
    .await;
    // The worker records the end before the release: the queen's end is the only one.
    let finished: Vec<_> =
        c.events_of("request.finished").into_iter().filter(|e| e["data"]["request"] == request.as_str()).collect();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0]["data"]["error_code"], Code::WorkerLost.as_str(), "the queen recorded why: {finished:?}");
}

/// The log removed the worker while it was paused; alive again, it hears that and comes back.
#[then("the resumed worker registers again, ready, and a chat completion for its model is served by it")]
async fn registered_again(w: &mut RbeeWorld) {
    let pid = *w.stop_at_end.last().expect("the paused worker") as u64;
    let c = w.cluster();
    let id = eventually("the resumed worker is ready again", DEADLINE, || async {
        let workers = c.workers();
        let again = workers.iter().find(|x| x["pid"] == pid && x["state"] == "Ready");
        again.and_then(|x| x["id"].as_str().map(str::to_string)).ok_or(workers)
    })
    .await;
    let registrations =
        c.events_of("worker.registered").into_iter().filter(|e| e["data"]["worker"] == id.as_str()).count();
    assert_eq!(registrations, 2, "registered at start and once more after its removal");
    let response = w.post_chat("Say hello.", 4, false).await;
    assert_eq!(response.status().as_u16(), 200);
    let request = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let accepted = w.one_event("request.accepted", "request", &request).await;
    assert_eq!(accepted["data"]["worker"], id.as_str());
}

#[when("meanwhile another worker is started with rbee workers start")]
async fn another_worker(w: &mut RbeeWorld) {
    let data_dir = w.cluster().data_dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        rbee_features::cluster::rbee(&data_dir, &["workers", "start", "--timeout-secs", "60"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let started = stdout.lines().find_map(|l| l.strip_prefix("starting worker ")).expect("a worker was started");
    w.second_worker = started.split_whitespace().next().unwrap().to_string();
}

#[then("rbee workers lists only the new worker, ready")]
async fn only_new_worker(w: &mut RbeeWorld) {
    let c = w.cluster();
    let new = w.second_worker.clone();
    let pid = eventually("only the new worker is listed", DEADLINE, || async {
        let workers = c.workers();
        let ids: Vec<(String, String)> = workers
            .iter()
            .map(|x| (x["id"].as_str().unwrap().to_string(), x["state"].as_str().unwrap().to_string()))
            .collect();
        if ids == [(new.clone(), "Ready".to_string())] {
            Ok(workers[0]["pid"].as_i64().unwrap() as i32)
        } else {
            Err(ids)
        }
    })
    .await;
    w.stop_at_end.push(pid);
}

#[then("the log records the paused worker's removal and the new worker's registration")]
fn removal_and_registration(w: &mut RbeeWorld) {
    let events = w.cluster().events(false);
    let removed =
        events.iter().filter(|e| e["type"] == "worker.removed" && e["data"]["worker"] == w.worker_id.as_str()).count();
    let registered = events
        .iter()
        .filter(|e| e["type"] == "worker.registered" && e["data"]["worker"] == w.second_worker.as_str())
        .count();
    assert_eq!((removed, registered), (1, 1));
}

#[when("that worker is drained with rbee workers drain")]
fn drain_worker(w: &mut RbeeWorld) {
    let pid = listed(w, &[])[0]["pid"].as_i64().unwrap() as i32;
    w.stop_at_end.push(pid);
    let out = w.cluster().rbee(&["workers", "drain", &w.worker_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is draining"));
}

#[then("rbee workers keeps showing it draining while its heartbeats keep arriving")]
async fn draining_with_heartbeats(w: &mut RbeeWorld) {
    let first = listed(w, &["--state", "draining"]);
    assert_eq!(first.len(), 1, "{:?}", listed(w, &[]));
    let first_beat = first[0]["last_heartbeat_ms"].as_u64().unwrap();
    let w2 = &*w;
    eventually("a newer heartbeat, the state still draining", DEADLINE, || async {
        let now = listed(w2, &[]);
        let beat = now[0]["last_heartbeat_ms"].as_u64().unwrap();
        if now[0]["state"] == "Draining" && beat > first_beat { Ok(()) } else { Err(now) }
    })
    .await;
}
