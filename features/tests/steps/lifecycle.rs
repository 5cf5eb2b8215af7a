//! A worker's life under a hive of the scenario's own: preflight refusals, loading timeout, crash and
//! restart, idle stop, drain, hang, adoption, parallel shutdown, pinning, the binary per backend.
//! Every `then` reads processes (/proc), the `rbee` CLI, the hive's log, or the event log.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cucumber::{given, then, when};
use rbee_features::poll::eventually;
use rbee_features::signal::{self, Signal};
use serde_json::Value;

use super::{DEADLINE, RbeeWorld};

fn alive(pid: i32) -> bool {
    rbee_runtime::alive(pid as u32)
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn start_args(node: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> =
        ["workers", "start", "--node", node, "--timeout-secs", "90"].iter().map(|s| s.to_string()).collect();
    args.extend_from_slice(extra);
    args
}

async fn start_worker(w: &mut RbeeWorld, extra: &[String]) {
    let (data_dir, args) = (w.cluster().data_dir.clone(), start_args(&w.dl.node, extra));
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rbee_features::cluster::rbee(&data_dir, &args)
    })
    .await
    .unwrap();
    w.worker_id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("starting worker ").and_then(|r| r.split_whitespace().next()).map(str::to_string))
        .unwrap_or_default();
    w.output = Some(out);
}

/// The pid the log records for the scenario's worker (its latest registration).
fn worker_pid(w: &RbeeWorld) -> i32 {
    let registered = w.cluster().events_of("worker.registered");
    let pid = registered
        .iter()
        .rev()
        .find(|e| e["data"]["worker"] == w.worker_id.as_str())
        .and_then(|e| e["data"]["pid"].as_i64());
    pid.expect("the worker registered") as i32
}

/// Every pid the log ties to the scenario's worker or node.
fn worker_pids(w: &RbeeWorld) -> Vec<i32> {
    let node = w.dl.node.as_str();
    let mut pids = Vec::new();
    for kind in ["worker.registered", "worker.signalled"] {
        for e in w.cluster().events_of(kind) {
            let ours =
                e["data"]["node"] == node || (!w.worker_id.is_empty() && e["data"]["worker"] == w.worker_id.as_str());
            if ours {
                pids.extend(e["data"]["pid"].as_i64().map(|p| p as i32));
            }
        }
    }
    pids
}

fn worker_events(w: &RbeeWorld, kind: &str) -> Vec<Value> {
    w.cluster().events_of(kind).into_iter().filter(|e| e["data"]["worker"] == w.worker_id.as_str()).collect()
}

async fn stop_hive(w: &mut RbeeWorld) {
    let mut hive = w.dl.hive.take().expect("the scenario's hive");
    let started = Instant::now();
    signal::send(hive.id(), Signal::Terminate);
    let status = tokio::task::spawn_blocking(move || hive.wait().expect("reap the hive")).await.unwrap();
    w.dl.hive_exit = Some((status, started.elapsed()));
}

#[given(regex = r"^a hive of its own on a new node, with (\w+)=(\S+)$")]
async fn own_hive_with(w: &mut RbeeWorld, key: String, value: String) {
    let mut env: Vec<(String, String)> = crate::download_env().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    env.push((key, value));
    w.own_hive(env, None).await;
}

#[given("a copy of the worker binary in a directory of its own")]
#[given("a copy of the worker binary in a directory of its own, not executable")]
fn copy_worker_binary(w: &mut RbeeWorld, step: &cucumber::gherkin::Step) {
    use std::os::unix::fs::PermissionsExt;
    let dir = rbee_features::scratch_dir("worker-bin");
    w.dl.scratch.push(dir.clone());
    let copy = dir.join("rbee-worker");
    std::fs::copy(rbee_features::bin("rbee-worker"), &copy).expect("copy the worker binary");
    let mode = if step.value.ends_with("not executable") { 0o644 } else { 0o755 };
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
    w.dl.worker_bin = copy;
}

#[given("a hive of its own on a new node, whose cpu worker binary is that copy")]
async fn own_hive_with_binary(w: &mut RbeeWorld) {
    let bin = w.dl.worker_bin.display().to_string();
    w.own_hive(vec![("RBEE_WORKER_BIN".into(), bin)], None).await;
}

#[given("a worker is started on that node")]
async fn worker_started(w: &mut RbeeWorld) {
    start_worker(w, &[]).await;
    let out = w.output.as_ref().unwrap();
    assert!(out.status.success(), "the worker did not start: {}", text(out));
    // Stopped at the end whatever happens, so a failing scenario leaves no worker behind.
    let pid = worker_pid(w);
    w.stop_at_end.push(pid);
}

#[when("a worker is started on that node")]
async fn start(w: &mut RbeeWorld) {
    start_worker(w, &[]).await;
}

#[when(regex = r"^a worker is started on that node with (.+)$")]
async fn start_with(w: &mut RbeeWorld, extra: String) {
    let extra: Vec<String> = extra.split_whitespace().map(str::to_string).collect();
    start_worker(w, &extra).await;
}

#[given(expr = "{int} workers are started on that node")]
async fn many_started(w: &mut RbeeWorld, n: usize) {
    let starts = (0..n).map(|_| {
        let (data_dir, args) = (w.cluster().data_dir.clone(), start_args(&w.dl.node, &[]));
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            rbee_features::cluster::rbee(&data_dir, &args)
        })
    });
    for out in futures::future::join_all(starts).await {
        let out = out.unwrap();
        assert!(out.status.success(), "a worker did not start: {}", text(&out));
    }
    let pids = worker_pids(w);
    w.stop_at_end.extend(pids);
}

#[then("the start printed the worker registered and loading, then ready")]
fn printed_loading_then_ready(w: &mut RbeeWorld) {
    let printed = text(w.output.as_ref().unwrap());
    let loading = printed.find("registered; loading the model").expect("loading shown");
    let ready = printed.find(" ready (context ").expect("ready shown");
    assert!(loading < ready, "{printed}");
}

#[then("the log holds worker.registered, then worker.state_changed to ready, for it")]
fn registered_then_ready(w: &mut RbeeWorld) {
    let events = w.worker_history();
    let registered = events.iter().position(|e| e["type"] == "worker.registered").expect("registered");
    let ready = events
        .iter()
        .position(|e| e["type"] == "worker.state_changed" && e["data"]["state"] == "Ready")
        .expect("ready");
    assert!(registered < ready);
}

#[then("the hive logged that preflight passed with the RAM it found")]
fn preflight_logged(w: &mut RbeeWorld) {
    let log =
        std::fs::read_to_string(w.dl.hive_dir.join("logs").join(format!("hive-{}.log", w.dl.node))).unwrap_or_default();
    let line =
        log.lines().find(|l| l.contains("preflight passed")).unwrap_or_else(|| panic!("no preflight line in:\n{log}"));
    assert!(line.contains("available RAM") && line.contains("cpu"), "{line}");
}

#[then(expr = "the start fails with exit code {int} and {string}")]
fn start_failed(w: &mut RbeeWorld, code: i32, error: String) {
    let out = w.output.as_ref().expect("a start ran");
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("error[{error}]")), "{}", text(out));
}

#[then(expr = "the start's error mentions {string}")]
fn start_error_mentions(w: &mut RbeeWorld, needle: String) {
    let stderr = String::from_utf8_lossy(&w.output.as_ref().unwrap().stderr).into_owned();
    assert!(stderr.contains(&needle), "{stderr}");
}

#[then(expr = "the log records the worker signalled {int} for {string}")]
async fn signalled(w: &mut RbeeWorld, signal: i64, reason: String) {
    eventually(&format!("worker.signalled {signal} for {reason}"), DEADLINE, || async {
        let found = worker_events(w, "worker.signalled");
        if found.iter().any(|e| e["data"]["signal"] == signal && e["data"]["reason"] == reason.as_str()) {
            Ok(())
        } else {
            Err(found)
        }
    })
    .await;
}

#[then(regex = r#"^the log records the worker signalled (\d+) for "(\w+)", then (\d+) for "(\w+)"$"#)]
fn signalled_twice(w: &mut RbeeWorld, first: i64, why_first: String, second: i64, why_second: String) {
    let found: Vec<(i64, String)> = worker_events(w, "worker.signalled")
        .iter()
        .map(|e| (e["data"]["signal"].as_i64().unwrap(), e["data"]["reason"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(found, vec![(first, why_first), (second, why_second)]);
}

#[then("when the hive is stopped no process of the worker is left")]
async fn stop_then_none_left(w: &mut RbeeWorld) {
    stop_hive(w).await;
    no_worker_left(w).await;
}

#[then("no process of the worker is left")]
async fn no_worker_left(w: &mut RbeeWorld) {
    all_gone("no worker process is left", &worker_pids(w)).await;
}

/// Waits until none of `pids` is alive.
async fn all_gone(what: &str, pids: &[i32]) {
    eventually(what, DEADLINE, || async {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
}

#[when("the worker process is killed with SIGKILL")]
fn kill_worker(w: &mut RbeeWorld) {
    let pid = worker_pid(w);
    w.dl.pid_before = pid;
    signal::send(pid as u32, Signal::Kill);
}

#[then(regex = r"^the log records its exit with (signal|code) (\d+)$")]
async fn exited_with(w: &mut RbeeWorld, what: String, n: i64) {
    let field = if what == "signal" { "signal" } else { "exit_code" };
    eventually(&format!("worker.exited with {field} {n}"), DEADLINE, || async {
        let found = worker_events(w, "worker.exited");
        if found.iter().any(|e| e["data"][field] == n) { Ok(()) } else { Err(found) }
    })
    .await;
}

#[then("the worker is registered again with a new pid and becomes ready")]
async fn restarted(w: &mut RbeeWorld) {
    let old = w.dl.pid_before;
    let id = w.worker_id.clone();
    let c = w.cluster();
    let pid = eventually("the worker is ready again under a new pid", DEADLINE * 2, || async {
        let found = c.workers().into_iter().find(|x| x["id"] == id.as_str());
        match found.as_ref().and_then(|x| Some((x["pid"].as_i64()?, x["state"].as_str()?.to_string()))) {
            Some((pid, state)) if pid as i32 != old && state == "Ready" => Ok(pid),
            _ => Err(found),
        }
    })
    .await;
    assert!(alive(pid as i32));
    w.stop_at_end.push(pid as i32);
}

#[when("the worker process is paused and the hive is stopped")]
async fn pause_and_stop(w: &mut RbeeWorld) {
    let pid = worker_pid(w);
    signal::send(pid as u32, Signal::Stop);
    stop_hive(w).await;
}

#[when("the hive is stopped")]
async fn hive_stopped(w: &mut RbeeWorld) {
    stop_hive(w).await;
}

#[then("the hive exits with code 0 and no process of the worker is left")]
async fn hive_exit_clean(w: &mut RbeeWorld) {
    let (status, _) = w.dl.hive_exit.expect("the hive was stopped");
    assert_eq!(status.code(), Some(0), "{status}");
    no_worker_left(w).await;
}

#[then(expr = "the hive exits with code 0 within {int} seconds and no worker process is left")]
async fn hive_exit_within(w: &mut RbeeWorld, secs: u64) {
    let (status, took) = w.dl.hive_exit.expect("the hive was stopped");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(took <= Duration::from_secs(secs), "the hive took {took:?} to stop");
    no_worker_left(w).await;
}

/// One after another, the first worker's exit would come before the second one's signal: several
/// signals before the first exit show they were stopped together. (Not all of them: the hive
/// records a signal after sending it, so a quick worker's exit may be recorded before the last
/// signal's record, as a run here showed: four signals within a millisecond, the fifth recorded
/// 27 ms later, after the first exit.)
#[then(expr = "the log records all {int} workers signalled with SIGTERM, several of them before any exited")]
fn signalled_together(w: &mut RbeeWorld, n: usize) {
    let on_node: Vec<Value> = w
        .cluster()
        .events(false)
        .into_iter()
        .filter(|e| e["data"]["node"] == w.dl.node.as_str())
        .filter(|e| e["type"] == "worker.exited" || (e["type"] == "worker.signalled" && e["data"]["signal"] == 15))
        .collect();
    let signalled = |events: &[Value]| -> std::collections::BTreeSet<String> {
        events
            .iter()
            .filter(|e| e["type"] == "worker.signalled")
            .filter_map(|e| e["data"]["worker"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(signalled(&on_node).len(), n, "every worker signalled: {on_node:?}");
    let first_exit = on_node.iter().position(|e| e["type"] == "worker.exited").expect("the workers exited");
    let before = signalled(&on_node[..first_exit]);
    assert!(before.len() >= 2, "only {before:?} signalled before the first exit: one after another; {on_node:?}");
}

#[then(expr = "the log records {int} worker exits with code 0")]
fn exits_on_node(w: &mut RbeeWorld, n: usize) {
    let exits = w
        .cluster()
        .events_of("worker.exited")
        .into_iter()
        .filter(|e| e["data"]["node"] == w.dl.node.as_str() && e["data"]["exit_code"] == 0)
        .count();
    assert_eq!(exits, n);
}

/// Continues a frozen process when dropped.
struct Thaw(u32);

impl Drop for Thaw {
    fn drop(&mut self) {
        signal::send(self.0, Signal::Continue);
    }
}

/// The drain lasts as long as the request in flight, a fraction of a second: the worker is frozen
/// the moment the log holds its draining (followed, not polled), a new request is sent, and the
/// worker is let go again to finish the one it has.
#[when(expr = "a streaming request with max_tokens {int} is running and the hive is stopped")]
async fn stream_then_stop(w: &mut RbeeWorld, max_tokens: u32) {
    use futures::StreamExt;
    w.stream_in_background("Tell me a long story about a bee.", max_tokens).await;
    // Heard from the log, not from the subject: a publish the stream refuses (another event of the
    // worker landed first, so its append is retried) still reaches plain subscribers.
    let log = rbee_bus::EventLog::connect(&w.cluster().admin).await.expect("admin connects");
    let end = rbee_bus::read::last_sequence(&log, rbee_bus::subjects::EVENTS_STREAM).await.expect("the log's end");
    let from = rbee_bus::read::StartAt::Seq(end + 1);
    let mut events = rbee_bus::read::follow(&log, rbee_bus::subjects::EVENTS_STREAM, from).await.expect("follow");
    let pid = worker_pid(w) as u32;
    let mut hive = w.dl.hive.take().expect("the scenario's hive");
    let started = Instant::now();
    signal::send(hive.id(), Signal::Terminate);
    let worker = w.worker_id.clone();
    let draining = tokio::time::timeout(DEADLINE, async {
        while let Some(delivered) = events.next().await {
            let event = delivered.map(|d| d.recorded.envelope.event);
            if matches!(event, Ok(rbee_bus::Event::WorkerStateChanged(s)) if s.state == rbee_bus::WorkerState::Draining && s.worker == worker)
            {
                return;
            }
        }
    });
    draining.await.expect("the worker reports draining");
    signal::send(pid, Signal::Stop);
    // Let go again however this step ends, so a failure here leaves no frozen worker behind.
    let thaw = Thaw(pid);
    // The queen folds the event a moment after it is published: ask once its view has it.
    let url = format!("{}/metrics", w.cluster().queen_url);
    eventually("the queen sees a worker draining", DEADLINE, || async {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let draining = text.lines().find_map(|l| l.strip_prefix("rbee_queen_workers{state=\"draining\"}"));
        if draining.and_then(|n| n.trim().parse::<u32>().ok()).unwrap_or(0) > 0 {
            Ok(())
        } else {
            Err(draining.map(str::to_string))
        }
    })
    .await;
    w.ask("Say hello.", 3).await;
    let drained_meanwhile = !rbee_runtime::alive(pid);
    drop(thaw);
    assert!(!drained_meanwhile, "the worker was gone before the new request: not sent during the drain");
    let status = tokio::task::spawn_blocking(move || hive.wait().expect("reap the hive")).await.unwrap();
    w.dl.hive_exit = Some((status, started.elapsed()));
}

#[then(
    expr = "a request sent while the worker drained was refused with HTTP {int} and code {string}, and no slot of the worker was claimed after it began draining"
)]
fn refused_while_draining(w: &mut RbeeWorld, status: u16, code: String) {
    assert_eq!(w.status, status, "{}", w.body);
    assert_eq!(w.body["error"]["code"], code.as_str(), "{}", w.body);
    let events = w.worker_history();
    let draining = events
        .iter()
        .position(|e| e["type"] == "worker.state_changed" && e["data"]["state"] == "Draining")
        .expect("draining recorded");
    let late: Vec<&Value> = events[draining..].iter().filter(|e| e["type"] == "slot.claimed").collect();
    assert!(late.is_empty(), "slots claimed after the drain began: {late:?}");
}

#[then(expr = "the request completes with finish_reason {string} and {int} tokens")]
async fn request_completed(w: &mut RbeeWorld, reason: String, tokens: u64) {
    let text = tokio::time::timeout(DEADLINE * 2, w.background.take().expect("a request"))
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(text.contains(&format!("\"finish_reason\":\"{reason}\"")), "{text}");
    assert!(text.contains(&format!("\"completion_tokens\":{tokens}")), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[then("the log records the worker draining, then its exit with code 0")]
fn drained_then_exited(w: &mut RbeeWorld) {
    let events = w.worker_history();
    let draining = events
        .iter()
        .position(|e| e["type"] == "worker.state_changed" && e["data"]["state"] == "Draining")
        .expect("draining recorded");
    let exited = events
        .iter()
        .position(|e| e["type"] == "worker.exited" && e["data"]["exit_code"] == 0)
        .expect("exit 0 recorded");
    assert!(draining < exited);
}

#[then("the hive is still running")]
fn hive_running(w: &mut RbeeWorld) {
    let hive = w.dl.hive.as_mut().expect("the scenario's hive");
    assert!(hive.try_wait().unwrap().is_none(), "the hive exited");
}

#[when("the hive is killed with SIGKILL and started again")]
async fn kill_and_restart_hive(w: &mut RbeeWorld) {
    w.dl.pid_before = worker_pid(w);
    let mut hive = w.dl.hive.take().expect("the scenario's hive");
    hive.kill().unwrap();
    hive.wait().unwrap();
    w.dl.hive = Some(w.cluster().spawn_hive(&w.dl.node, &w.dl.hive_dir, &w.dl.hive_env));
}

#[then("the restarted hive adopted the worker, which keeps its pid")]
async fn adopted(w: &mut RbeeWorld) {
    let log_path = w.dl.hive_dir.join("logs").join(format!("hive-{}.log", w.dl.node));
    let id = w.worker_id.clone();
    eventually("the hive logs the adoption", DEADLINE, || async {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.lines().any(|l| l.contains("adopted a running worker") && l.contains(&id)) { Ok(()) } else { Err(()) }
    })
    .await;
    assert_eq!(worker_pid(w), w.dl.pid_before, "the worker kept its pid");
    assert!(alive(worker_pid(w)));
}

#[then("the worker answers a chat completion, listed once in the registry")]
async fn answers_once(w: &mut RbeeWorld) {
    w.ask("Say hi.", 4).await;
    assert_eq!(w.status, 200, "{}", w.body);
    let listed = w.cluster().workers().into_iter().filter(|x| x["node"] == w.dl.node.as_str()).count();
    assert_eq!(listed, 1);
}

#[then("the worker process may run on core 0 only")]
fn pinned(w: &mut RbeeWorld) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", worker_pid(w))).unwrap();
    let cores = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    assert_eq!(cores, "0");
}

#[then("the worker process runs that copy")]
fn runs_copy(w: &mut RbeeWorld) {
    let out = w.output.as_ref().unwrap();
    assert!(out.status.success(), "{}", text(out));
    let exe = std::fs::read_link(format!("/proc/{}/exe", worker_pid(w))).unwrap();
    assert_eq!(exe, PathBuf::from(&w.dl.worker_bin));
}

#[then("no worker was spawned on that node")]
fn none_spawned(w: &mut RbeeWorld) {
    let registered = w
        .cluster()
        .events_of("worker.registered")
        .into_iter()
        .filter(|e| e["data"]["node"] == w.dl.node.as_str())
        .count();
    assert_eq!(registered, 0);
}

fn mem_available() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

#[given(expr = "a hive of its own on a new node whose RAM factor leaves {int} GiB of the RAM free now to spare")]
async fn hive_with_tight_ram(w: &mut RbeeWorld, spare_gib: u64) {
    let needed = rbee_bus::estimated_memory_bytes(rbee_features::default_model_size());
    let percent = (mem_available() - (spare_gib << 30)) * 100 / needed;
    let mut env: Vec<(String, String)> = crate::download_env().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    env.push(("RBEE_RAM_FACTOR_PERCENT".into(), percent.to_string()));
    // The hub's stall lasts while the test takes RAM: the hive must not reconnect around it meanwhile.
    env.push(("RBEE_DOWNLOAD_STALL_SECS".into(), "120".into()));
    w.own_hive(env, None).await;
}

#[when("a worker for the default model is started on that node from the hub, in the background")]
fn start_from_hub_in_background(w: &mut RbeeWorld) {
    let reference = format!("hf:{}:{}", w.dl.file.0, w.dl.file.1);
    let args = start_args(&w.dl.node, &["--model".into(), reference, "--model-name".into(), w.dl.model.clone()]);
    let mut cmd = rbee_features::cluster::rbee_command(
        &w.cluster().data_dir,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("rbee workers start");
    let started = Instant::now();
    w.dl.background.push(tokio::task::spawn_blocking(move || {
        (child.wait_with_output().expect("start output"), started.elapsed())
    }));
}

#[given(expr = "the hub stalls the default model at {int}% until released")]
fn hub_stalls_until_released(w: &mut RbeeWorld, percent: u64) {
    let offset = rbee_features::default_model_size() * percent / 100;
    w.dl.stall_at = offset;
    crate::hub().set_fault(&w.dl.file.0, &w.dl.file.1, rbee_features::hub::Fault::StallAt { offset, times: 1 });
}

#[when(expr = "{int} GiB of RAM are taken while the download stalls, and then the hub goes on")]
async fn take_ram_while_stalled(w: &mut RbeeWorld, gib: usize) {
    let offset = w.dl.stall_at;
    eventually("the hub stalls the transfer", Duration::from_secs(60), || async {
        let sent = w.hub_gets().iter().map(|s| s.sent()).max().unwrap_or(0);
        if sent >= offset { Ok(()) } else { Err(sent) }
    })
    .await;
    let mut hog = vec![0u8; gib << 30];
    // Touch every page, so the memory is really taken.
    for page in hog.chunks_mut(4096) {
        page[0] = 1;
    }
    w.dl.hog = hog;
    crate::hub().release_stalls();
}

#[then(expr = "the background start fails with exit code {int} and {string}")]
async fn background_start_failed(w: &mut RbeeWorld, code: i32, error: String) {
    w.output = w.background_pulls().await.pop();
    start_failed(w, code, error);
}

#[given(expr = "a cluster of my own serving the default model, with {int} more workers started")]
async fn own_cluster_with_workers(w: &mut RbeeWorld, n: usize) {
    w.own =
        Some(tokio::task::spawn_blocking(|| rbee_features::cluster::Cluster::up(&[])).await.unwrap().expect("rbee up"));
    w.dl.node = w.cluster().node.clone();
    many_started(w, n).await;
    assert_eq!(w.cluster().workers().len(), n + 1);
}

#[when("I run rbee down")]
fn run_down(w: &mut RbeeWorld) {
    let c = w.cluster();
    let file = c.file();
    let mut pids: Vec<i32> = ["nats_pid", "postgres_pid", "queen_pid", "hive_pid"]
        .iter()
        .filter_map(|k| file[k].as_i64())
        .map(|p| p as i32)
        .collect();
    pids.extend(c.workers().iter().filter_map(|x| x["pid"].as_i64()).map(|p| p as i32));
    let out = c.rbee(&["down"]);
    (w.stop_at_end, w.output) = (pids, Some(out));
}

#[then("rbee down exits 0 and no process the cluster started is left, workers included")]
async fn nothing_left(w: &mut RbeeWorld) {
    let out = w.output.as_ref().unwrap();
    assert!(out.status.success(), "{}", text(out));
    let pids = std::mem::take(&mut w.stop_at_end);
    assert!(pids.len() >= 7, "nats, postgres, queen, hive and 3 workers: {pids:?}");
    all_gone("every process of the cluster is gone", &pids).await;
}

#[then("the start showed the download's progress up to its verified end")]
fn start_showed_download(w: &mut RbeeWorld) {
    let printed = text(w.output.as_ref().expect("a start ran"));
    let (half, end) =
        (printed.find("50% (").expect("progress shown"), printed.find("verified").expect("the end shown"));
    assert!(half < end, "{printed}");
}

#[given("the disk holding its models is kept busy")]
fn keep_disk_busy(w: &mut RbeeWorld) {
    use std::os::unix::process::CommandExt;
    // Two writers bypassing the page cache, so the device is busy whatever else the machine does.
    let (a, b) = (w.dl.hive_dir.join("disk-load-a"), w.dl.hive_dir.join("disk-load-b"));
    let writer = |f: &std::path::Path| {
        format!(
            "while :; do dd if=/dev/zero of='{}' bs=4M count=64 oflag=direct conv=notrunc status=none; done",
            f.display()
        )
    };
    let script = format!("{} & {} & wait", writer(&a), writer(&b));
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &script]);
    // SAFETY: setsid is async-signal-safe; the loop gets a process group of its own to be killed by.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    w.dl.disk_load = Some(cmd.spawn().expect("start the disk load"));
    std::thread::sleep(Duration::from_millis(500));
}

#[then("the hive warned that the models' disk is busy before it spawned the worker")]
fn warned_disk_busy(w: &mut RbeeWorld) {
    let out = w.output.as_ref().unwrap();
    assert!(out.status.success(), "{}", text(out));
    let log =
        std::fs::read_to_string(w.dl.hive_dir.join("logs").join(format!("hive-{}.log", w.dl.node))).unwrap_or_default();
    let warned = log.find("the models' disk is busy").unwrap_or_else(|| panic!("no warning in:\n{log}"));
    let spawned = log.find("worker spawned").expect("the worker was spawned");
    assert!(warned < spawned, "{log}");
}

#[given("a hive of its own on a new node with these GPUs, and the CPU worker standing in for the cuda one:")]
async fn hive_with_gpus(w: &mut RbeeWorld, step: &cucumber::gherkin::Step) {
    let table = step.table.as_ref().expect("a table of GPUs");
    let gpus: Vec<Value> = table
        .rows
        .iter()
        .skip(1)
        .map(|row| {
            let n = |i: usize| row[i].trim().parse::<u64>().expect("a number");
            serde_json::json!({
                "index": n(0), "name": format!("stand-in GPU {}", n(0)),
                "vram_total_bytes": 24u64 << 30, "vram_free_bytes": n(1) << 20, "temperature_c": n(2),
            })
        })
        .collect();
    let dir = rbee_features::scratch_dir("gpus");
    w.dl.scratch.push(dir.clone());
    let file = dir.join("gpus.json");
    std::fs::write(&file, serde_json::to_string(&gpus).unwrap()).unwrap();
    let env = vec![
        ("RBEE_GPU_INVENTORY_FILE".to_string(), file.display().to_string()),
        ("RBEE_WORKER_BIN_CUDA".to_string(), rbee_features::bin("rbee-worker").display().to_string()),
    ];
    w.own_hive(env, None).await;
}

#[then(expr = "the worker process is given GPU {int} only")]
fn given_gpu(w: &mut RbeeWorld, gpu: u32) {
    let out = w.output.as_ref().unwrap();
    assert!(out.status.success(), "{}", text(out));
    let pid = worker_pid(w);
    w.stop_at_end.push(pid);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let wanted = format!("CUDA_VISIBLE_DEVICES={gpu}");
    assert!(environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes()), "{wanted} not in the worker's environment");
}

#[then(expr = "the hive logged that GPU {int} has the most free VRAM")]
fn logged_gpu_reason(w: &mut RbeeWorld, gpu: u32) {
    let log =
        std::fs::read_to_string(w.dl.hive_dir.join("logs").join(format!("hive-{}.log", w.dl.node))).unwrap_or_default();
    let wanted = format!("GPU {gpu} has the most free VRAM");
    assert!(log.lines().any(|l| l.contains("preflight passed") && l.contains(&wanted)), "{wanted} not in:\n{log}");
}
