//! Steps of compose.feature: the cluster of docker-compose.yml, its machines lost one at a time
//! under load.

use std::time::{Duration, Instant};

use cucumber::{given, then, when};
use rbee_bus::{Event, EventLog, Expected, Meta, ModelRegistered};
use rbee_features::load::{Outcome, tally};
use rbee_features::poll::eventually;
use serde_json::Value;

use super::{MODEL, RbeeWorld};

#[given("the compose cluster is up")]
fn compose_up(w: &mut RbeeWorld) {
    w.shared = Some(&crate::compose().cluster);
}

#[then("a chat request through the balancer is answered")]
async fn answered_through_balancer(w: &mut RbeeWorld) {
    let response = w.post_chat("What is the capital of France? Answer in one sentence.", 24, false).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(text.contains("Paris"), "{body}");
}

#[then(expr = "the registry shows a ready worker of the default model on {word} and on {word}")]
fn ready_on_both(w: &mut RbeeWorld, first: String, second: String) {
    let workers = w.cluster().workers();
    for node in [first, second] {
        assert!(
            workers.iter().any(|x| x["node"] == node.as_str() && x["model"] == MODEL && x["state"] == "Ready"),
            "no ready worker of {MODEL} on {node}: {workers:#?}"
        );
    }
}

#[then(expr = "the log holds the registration of {word} and of {word}")]
fn nodes_registered(w: &mut RbeeWorld, first: String, second: String) {
    let registered: Vec<String> = w
        .cluster()
        .events_of("node.registered")
        .iter()
        .filter_map(|e| e["data"]["node"].as_str().map(str::to_string))
        .collect();
    for node in [first, second] {
        assert!(registered.contains(&node), "{node} never registered: {registered:?}");
    }
}

/// The event log's stream as JetStream's cluster describes it: (replicas configured, leader,
/// the other replicas with whether each is current).
async fn log_replicas(w: &RbeeWorld) -> Result<(usize, String, Vec<(String, bool)>), String> {
    let log = EventLog::connect(&w.cluster().admin).await.map_err(|e| e.to_string())?;
    let mut stream = log.jetstream().get_stream(rbee_bus::subjects::EVENTS_STREAM).await.map_err(|e| e.to_string())?;
    let info = stream.info().await.map_err(|e| e.to_string())?;
    let cluster = info.cluster.clone().ok_or("the stream has no cluster information")?;
    let peers = cluster.replicas.iter().map(|p| (p.name.clone(), p.current && !p.offline)).collect();
    Ok((info.config.num_replicas, cluster.leader.unwrap_or_default(), peers))
}

#[then(expr = "the event log has {int} replicas, all current")]
async fn replicas_current(w: &mut RbeeWorld, replicas: usize) {
    let (configured, leader, peers) =
        eventually("every replica of the log is current", Duration::from_secs(60), || async {
            let (configured, leader, peers) = log_replicas(w).await?;
            let behind: Vec<&String> = peers.iter().filter(|(_, current)| !current).map(|(n, _)| n).collect();
            if leader.is_empty() || !behind.is_empty() {
                return Err(format!("leader {leader:?}, behind: {behind:?}"));
            }
            Ok((configured, leader, peers))
        })
        .await;
    assert_eq!(configured, replicas, "replicas configured");
    assert_eq!(peers.len() + 1, replicas, "the leader {leader} and its followers {peers:?}");
}

#[then("no process of the cluster runs as root")]
fn no_root(w: &mut RbeeWorld) {
    let _ = w;
    let uids = crate::compose().process_uids();
    assert!(uids.len() >= 9, "every long-running service has a container with processes: {uids:?}");
    for (service, ids) in &uids {
        assert!(!ids.is_empty(), "{service} runs no process");
        assert!(ids.iter().all(|uid| uid != "0"), "{service} runs a process as root: {ids:?}");
    }
}

/// What the load of a fault scenario went through.
#[derive(Debug, Default)]
pub struct Outage {
    /// The service lost, and when (from the start of the load).
    pub service: String,
    pub lost_at: Duration,
    pub back_at: Duration,
    /// The same two moments as the log's clock says (ms since the epoch).
    pub lost_ms: u64,
    pub back_ms: u64,
    /// Model names of the probe events whose append was acknowledged, and when.
    pub acked: Vec<(String, Duration)>,
    pub refused_appends: usize,
    /// When each completed stream ended, from the start of the load.
    pub completed_at: Vec<Duration>,
}

/// Appends probe events (catalog entries of a node that does not exist) one after another until
/// `until`; the names of those acknowledged and when, and how many were refused.
async fn append_probes(w: &RbeeWorld, started: Instant, until: Instant) -> (Vec<(String, Duration)>, usize) {
    let log = EventLog::connect(&w.cluster().admin).await.expect("admin connects to the log");
    let prefix = format!("probe{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let (mut acked, mut refused) = (Vec::new(), 0);
    let mut i = 0;
    while Instant::now() < until {
        let model = format!("{prefix}-{i:05}");
        i += 1;
        let event = Event::ModelRegistered(ModelRegistered {
            model: model.clone(),
            node: format!("{prefix}-node"),
            path: format!("/probe/{model}.gguf"),
            size_bytes: 1,
            sha256: "00".repeat(32),
            memory_required_bytes: 1,
        });
        match log.append(event, Expected::NoStream, &Meta::default()).await {
            Ok(_) => acked.push((model, started.elapsed())),
            Err(_) => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (acked, refused)
}

#[when(
    expr = "{int} clients stream it while events are appended, and {word} is killed {int} s in and started again {int} s later"
)]
async fn lose_a_service(w: &mut RbeeWorld, clients: usize, service: String, kill_at: u64, back_after: u64) {
    outage(w, clients, &service, kill_at, back_after, (&["kill"], &["start"])).await;
}

#[when(
    expr = "{int} clients stream it while events are appended, and the server leading the log is killed {int} s in and started again {int} s later"
)]
async fn lose_the_leader(w: &mut RbeeWorld, clients: usize, kill_at: u64, back_after: u64) {
    let (_, leader, _) = log_replicas(w).await.expect("the log's cluster information");
    outage(w, clients, &leader, kill_at, back_after, (&["kill"], &["start"])).await;
}

#[when(expr = "{int} clients stream it while {word} is stopped {int} s in and started again {int} s later")]
async fn stop_a_service(w: &mut RbeeWorld, clients: usize, service: String, stop_at: u64, back_after: u64) {
    outage(w, clients, &service, stop_at, back_after, (&["stop", "--time", "0"], &["start"])).await;
}

#[when(
    expr = "{int} clients stream it while {word} is cut off from the network {int} s in and reconnected {int} s later"
)]
async fn cut_off(w: &mut RbeeWorld, clients: usize, service: String, cut_at: u64, back_after: u64) {
    let network = crate::compose().network();
    // Connected again under its service name, so the others find it by that name as before.
    let disconnect = ["network", "disconnect", network.as_str()];
    let connect = ["network", "connect", "--alias", service.as_str(), network.as_str()];
    outage(w, clients, &service, cut_at, back_after, (&disconnect, &connect)).await;
}

/// Load and probe appends for the whole outage and 20 s after it; `service` taken away with
/// `docker <lose> <container>` `lost_at` seconds in and brought back with `docker <restore>
/// <container>` `back_after` seconds later.
async fn outage(
    w: &mut RbeeWorld,
    clients: usize,
    service: &str,
    lost_at: u64,
    back_after: u64,
    (lose, restore): (&[&str], &[&str]),
) {
    let started = Instant::now();
    let until = started + Duration::from_secs(lost_at + back_after + 20);
    let load = w.noted_load();
    let fault = async {
        tokio::time::sleep(Duration::from_secs(lost_at)).await;
        let compose = crate::compose();
        compose.docker(lose, service);
        let lost = (started.elapsed(), rbee_bus::envelope::now_ms());
        tokio::time::sleep(Duration::from_secs(back_after)).await;
        compose.docker(restore, service);
        (lost, (started.elapsed(), rbee_bus::envelope::now_ms()))
    };
    let (answers, ((lost, lost_ms), (back, back_ms)), (acked, refused)) =
        tokio::join!(load.run(clients, until), fault, append_probes(w, started, until));
    let completed_at = answers
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Completed { .. }))
        .map(|a| a.ended.duration_since(started))
        .collect();
    println!(
        "{service} lost at {:.1} s, back at {:.1} s; {} requests: {:?}; {} probe appends acked, {refused} refused",
        lost.as_secs_f64(),
        back.as_secs_f64(),
        answers.len(),
        tally(&answers, &(w.noted_text.clone(), w.noted_tokens)),
        acked.len(),
    );
    w.answers = answers;
    w.outage = Outage {
        service: service.to_string(),
        lost_at: lost,
        back_at: back,
        lost_ms,
        back_ms,
        acked,
        refused_appends: refused,
        completed_at,
    };
}

#[then("streams completed while it was gone and after it came back")]
fn completed_during_and_after(w: &mut RbeeWorld) {
    let o = &w.outage;
    let during = o.completed_at.iter().filter(|t| **t > o.lost_at + Duration::from_secs(2) && **t < o.back_at).count();
    let after = o.completed_at.iter().filter(|t| **t > o.back_at).count();
    assert!(
        during > 0 && after > 0,
        "{during} streams completed while {} was gone, {after} after it came back",
        o.service
    );
}

#[then("appends were acknowledged while it was gone")]
fn appended_during(w: &mut RbeeWorld) {
    let o = &w.outage;
    let during = o.acked.iter().filter(|(_, t)| *t > o.lost_at + Duration::from_secs(1) && *t < o.back_at).count();
    assert!(during > 0, "no append was acknowledged while {} was gone ({} refused)", o.service, o.refused_appends);
}

#[then("every append that was acknowledged is in the log")]
async fn acked_in_log(w: &mut RbeeWorld) {
    let acked: Vec<String> = w.outage.acked.iter().map(|(m, _)| m.clone()).collect();
    assert!(!acked.is_empty(), "no probe append was acknowledged");
    let logged: std::collections::BTreeSet<String> = w
        .cluster()
        .events_of("model.registered")
        .iter()
        .filter_map(|e| e["data"]["model"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|m| !logged.contains(*m)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged appends are not in the log: {lost:?}", lost.len(), acked.len());
}

#[then(expr = "at most {int} streams did not complete, and none with another text")]
fn at_most_failed(w: &mut RbeeWorld, most: usize) {
    let counts = tally(&w.answers, &(w.noted_text.clone(), w.noted_tokens));
    let failed: usize = counts.iter().filter(|(class, _)| class.as_str() != "completed").map(|(_, n)| n).sum();
    assert!(!counts.contains_key("completed (different text)"), "{counts:?}");
    assert!(failed <= most, "{failed} streams did not complete: {counts:?}");
}

#[when(expr = "{int} requests are sent one after another through the balancer")]
async fn one_after_another(w: &mut RbeeWorld, count: usize) {
    w.batch.clear();
    for _ in 0..count {
        let response = w.post_chat("Say hello.", 4, false).await;
        let status = response.status().as_u16();
        let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{body}");
        w.batch.push((status, id, body));
    }
}

#[then(expr = "the log shows the workers of {word} and of {word} each took at least {int} of them")]
fn spread_over(w: &mut RbeeWorld, first: String, second: String, least: usize) {
    let sent: std::collections::BTreeSet<&str> = w.batch.iter().map(|(_, id, _)| id.as_str()).collect();
    let mut by_node: std::collections::BTreeMap<String, usize> = Default::default();
    for e in w.cluster().events_of("request.accepted") {
        if sent.contains(e["data"]["request"].as_str().unwrap_or_default()) {
            let worker = e["data"]["worker"].as_str().unwrap_or_default();
            let node = [&first, &second].into_iter().find(|n| worker.starts_with(&format!("{n}-")));
            *by_node.entry(node.cloned().unwrap_or_else(|| worker.to_string())).or_default() += 1;
        }
    }
    assert_eq!(by_node.values().sum::<usize>(), sent.len(), "every request's acceptance is in the log: {by_node:?}");
    for node in [first, second] {
        let took = by_node.get(&node).copied().unwrap_or(0);
        assert!(took >= least, "{node}'s workers took {took} of {} requests: {by_node:?}", sent.len());
    }
}

#[when(expr = "a machine {word} joins with one command")]
fn machine_joins(w: &mut RbeeWorld, node: String) {
    let _ = w;
    let compose = crate::compose();
    let out = compose.script(&["join", &node]);
    assert!(
        out.status.success(),
        "scripts/cluster join ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let token = compose.dir.join("join").join(format!("{node}.token"));
    assert!(token.is_file(), "no join token at {}", token.display());
    // The new machine's one command; the container then stays up as the machine would.
    compose.start_machine(
        &node,
        &token,
        "rbee --data-dir /tmp/rbee up --join /run/rbee/join.token && exec sleep infinity",
    );
}

#[then(expr = "within {int} seconds the registry shows a ready worker of the default model on {word}")]
async fn ready_on(w: &mut RbeeWorld, secs: u64, node: String) {
    eventually(&format!("a ready worker on {node}"), Duration::from_secs(secs), || async {
        let workers = w.cluster().workers();
        if workers.iter().any(|x| x["node"] == node.as_str() && x["model"] == MODEL && x["state"] == "Ready") {
            Ok(())
        } else {
            Err(format!("{workers:?}"))
        }
    })
    .await;
}

#[then(expr = "one of {int} requests sent one after another through the balancer is served by the worker of {word}")]
async fn served_by(w: &mut RbeeWorld, most: usize, node: String) {
    let mut served_by = Vec::new();
    for _ in 0..most {
        let response = w.post_chat("Say hello.", 4, false).await;
        assert_eq!(response.status().as_u16(), 200);
        let id = response.headers()["x-request-id"].to_str().unwrap().to_string();
        let accepted = w.cluster().events_of("request.accepted");
        let worker = accepted
            .iter()
            .rev()
            .find(|e| e["data"]["request"] == id.as_str())
            .and_then(|e| e["data"]["worker"].as_str())
            .unwrap_or_default()
            .to_string();
        if worker.starts_with(&format!("{node}-")) {
            return;
        }
        served_by.push(worker);
    }
    panic!("no request went to {node}'s worker: {served_by:?}");
}

/// The ids of the ready workers on `node` now.
fn ready_workers_on(w: &RbeeWorld, node: &str) -> Vec<String> {
    w.cluster()
        .workers()
        .iter()
        .filter(|x| x["node"] == node && x["state"] == "Ready")
        .filter_map(|x| x["id"].as_str().map(str::to_string))
        .collect()
}

#[when(expr = "{int} clients stream it while queen-1, queen-2, hive-a and hive-b are restarted one at a time")]
async fn rolling_restart(w: &mut RbeeWorld, clients: usize) {
    let load = w.noted_load();
    let done = std::sync::atomic::AtomicBool::new(false);
    let restarts = async {
        let compose = crate::compose();
        let mut log = Vec::new();
        for service in ["queen-1", "queen-2", "hive-a", "hive-b"] {
            let before = ready_workers_on(w, service);
            let started = Instant::now();
            // A stop lets the service finish what it serves (its grace period), then it starts again.
            compose.docker(&["restart", "--time", "40"], service);
            if service.starts_with("queen") {
                // Back behind the balancer once its /readyz says 200 (checked every second).
                tokio::time::sleep(Duration::from_secs(15)).await;
            } else {
                eventually(&format!("a new ready worker on {service}"), Duration::from_secs(180), || async {
                    let now = ready_workers_on(w, service);
                    if now.iter().any(|id| !before.contains(id)) { Ok(()) } else { Err(format!("{now:?}")) }
                })
                .await;
            }
            log.push(format!("{service} restarted, serving again after {:.1} s", started.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        log
    };
    let clients_run = async {
        let mut answers = Vec::new();
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            answers.extend(load.run(clients, Instant::now() + Duration::from_secs(5)).await);
        }
        answers
    };
    let (answers, log) = tokio::join!(clients_run, restarts);
    println!(
        "rolling restart: {}; {} requests: {:?}",
        log.join("; "),
        answers.len(),
        tally(&answers, &(w.noted_text.clone(), w.noted_tokens))
    );
    w.answers = answers;
}

#[then(expr = "the log marked the worker of {word} stale while it was cut off")]
fn marked_stale(w: &mut RbeeWorld, node: String) {
    let o = &w.outage;
    let stale: Vec<Value> = w
        .cluster()
        .events_of("worker.state_changed")
        .into_iter()
        .filter(|e| e["data"]["node"] == node.as_str() && e["data"]["state"] == "Stale")
        .collect();
    let at = |e: &Value| e["at_ms"].as_u64().unwrap_or_default();
    assert!(
        stale.iter().any(|e| (o.lost_ms..o.back_ms).contains(&at(e))),
        "no worker of {node} marked stale between {} and {}: {stale:?}",
        o.lost_ms,
        o.back_ms
    );
}

#[then(expr = "within {int} seconds the registry holds one worker on {word} and one on {word}, no slot held")]
async fn one_worker_each(w: &mut RbeeWorld, secs: u64, a: String, b: String) {
    eventually("one worker per machine, every slot free", Duration::from_secs(secs), || async {
        let workers = w.cluster().workers();
        let on = |node: &str| workers.iter().filter(|x| x["node"] == node).count();
        let held = workers.iter().any(|x| x["busy"].as_object().is_some_and(|busy| !busy.is_empty()));
        if on(&a) == 1 && on(&b) == 1 && !held { Ok(()) } else { Err(format!("{workers:?}")) }
    })
    .await;
}
