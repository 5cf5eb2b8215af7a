//! Steps of faults.feature: the chaos test (every kind of process killed or frozen at random under
//! load, then the invariants) and the soak (load for a long time, then what must not have grown).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cucumber::{then, when};
use rbee_features::load::{Load, Outcome, tally};
use rbee_features::poll::eventually;
use rbee_features::signal::{self, Signal};
use serde_json::Value;

use super::RbeeWorld;
use super::reliability::greedy_body;

/// The deadline each request of the load carries.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the cluster may take to be whole again, and its outboxes and archive to catch up.
const SETTLE: Duration = Duration::from_secs(120);

/// Seconds from the environment variable `name`, else `default`.
fn seconds_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small seeded generator (splitmix64): the same seed replays the same faults.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

const TARGETS: [&str; 5] = ["worker", "hive", "queen", "nats-server", "postgres"];

impl RbeeWorld {
    /// The pid of `target` now: a worker the hive records as running, or a process of cluster.json.
    fn pid_of(&self, target: &str, dice: &mut Dice) -> Option<u32> {
        let file = self.cluster().file();
        let key = match target {
            "worker" => {
                let records = rbee_runtime::worker_records(&self.cluster().data_dir);
                let pids: Vec<u32> = std::fs::read_dir(records)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
                    .filter_map(|r| r["pid"].as_u64().map(|p| p as u32))
                    .filter(|p| rbee_runtime::alive(*p))
                    .collect();
                return (!pids.is_empty()).then(|| pids[dice.next() as usize % pids.len()]);
            }
            "hive" => "hive_pid",
            "queen" => "queen_pid",
            "nats-server" => "nats_pid",
            _ => "postgres_pid",
        };
        file[key].as_u64().map(|p| p as u32).filter(|p| rbee_runtime::alive(*p))
    }

    /// `rbee up` again on the cluster's data directory: it starts what died on its recorded ports.
    async fn up_again(&self) -> Result<(), String> {
        let c = self.cluster();
        let command = c.rbee_command_for(&["up", "--port", "0", "--node", &c.node, "--timeout-secs", "60"]);
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(120), command.output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("rbee up took over 120 s".into()),
        }
    }

    /// Kills or freezes a random process every 3 to 9 s until `until`; returns what it did.
    async fn strike_until(&self, until: Instant, dice: &mut Dice) -> Vec<String> {
        let started = Instant::now();
        let mut faults = Vec::new();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(dice.between(3, 9))).await;
            let target = TARGETS[dice.next() as usize % TARGETS.len()];
            let Some(pid) = self.pid_of(target, dice) else { continue };
            let at = started.elapsed().as_secs();
            if dice.next().is_multiple_of(2) {
                let frozen = Duration::from_secs(dice.between(1, 6));
                signal::send(pid, Signal::Stop);
                tokio::time::sleep(frozen).await;
                signal::send(pid, Signal::Continue);
                faults.push(format!("{at}s: froze {target} {pid} for {}s", frozen.as_secs()));
            } else {
                signal::send(pid, Signal::Kill);
                let dead = Instant::now();
                while rbee_runtime::alive(pid) && dead.elapsed() < Duration::from_secs(5) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let up = self.up_again().await;
                faults.push(format!(
                    "{at}s: killed {target} {pid}; rbee up: {}",
                    up.err().unwrap_or_else(|| "ok".into())
                ));
            }
        }
        faults
    }

    /// The clients' load: the noted greedy request, streamed.
    pub(super) fn noted_load(&self) -> Load {
        Load {
            client: self.cluster().http(),
            url: format!("{}/v1/chat/completions", self.cluster().queen_url),
            body: greedy_body(&self.prompt, self.noted_seq as u32, true),
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

#[when(
    expr = "{int} clients stream it while a worker, the hive, the queen, nats-server and Postgres are killed or frozen at random"
)]
async fn chaos(w: &mut RbeeWorld, clients: usize) {
    let secs = seconds_from_env("RBEE_CHAOS_SECS", 300);
    let seed = seconds_from_env("RBEE_CHAOS_SEED", rbee_bus::envelope::now_ms());
    let until = Instant::now() + Duration::from_secs(secs);
    let load = w.noted_load();
    let mut dice = Dice(seed);
    let (answers, faults) = tokio::join!(load.run(clients, until), w.strike_until(until, &mut dice));
    let expected = (w.noted_text.clone(), w.noted_tokens);
    println!(
        "chaos: {secs} s, seed {seed} (RBEE_CHAOS_SEED replays it), {} faults, {} requests: {:?}",
        faults.len(),
        answers.len(),
        tally(&answers, &expected)
    );
    for fault in &faults {
        println!("  {fault}");
    }
    w.answers = answers;
}

#[then("no stream hung, and every stream completed with exactly the noted text or ended with an error")]
fn no_hung_no_wrong(w: &mut RbeeWorld) {
    let counts = tally(&w.answers, &(w.noted_text.clone(), w.noted_tokens));
    assert_eq!(counts.get("hung"), None, "{counts:?}");
    let different: Vec<String> = w
        .answers
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::Completed { text, tokens } if (text, *tokens) != (&w.noted_text, w.noted_tokens) => {
                let events: Vec<String> = w
                    .cluster()
                    .events(false)
                    .into_iter()
                    .filter(|e| e["data"]["request"].as_str() == a.request.as_deref())
                    .map(|e| format!("{} {}", e["type"], e["data"]))
                    .collect();
                Some(format!("{:?}: {tokens} tokens {text:?}; its events: {events:#?}", a.request))
            }
            _ => None,
        })
        .collect();
    assert!(
        different.is_empty(),
        "completed with another text than {:?} ({} tokens): {different:#?}",
        w.noted_text,
        w.noted_tokens
    );
    assert!(counts.get("completed").copied().unwrap_or(0) > 0, "nothing completed: {counts:?}");
}

#[when("the cluster is whole again")]
async fn whole_again(w: &mut RbeeWorld) {
    let mut last = Err(String::new());
    for _ in 0..3 {
        last = w.up_again().await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(last.is_ok(), "rbee up did not make the cluster whole: {last:?}");
    let health = format!("{}/health", w.cluster().queen_url);
    eventually("the queen is healthy and the archive caught up", SETTLE, || async {
        let body: Value =
            reqwest::get(&health).await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
        let caught_up = body["archive"]["state"] == "archiving" && body["archive"]["lag_events"] == 0;
        if body["status"] == "ok" && caught_up { Ok(()) } else { Err(body.to_string()) }
    })
    .await;
}

/// Per request: the worker each acceptance named, in log order, and the workers that finished it
/// without an error code.
fn accepted_and_finished(events: &[Value]) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let mut requests: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for e in events {
        let (Some(request), Some(worker)) = (e["data"]["request"].as_str(), e["data"]["worker"].as_str()) else {
            continue;
        };
        let entry = requests.entry(request.to_string()).or_default();
        match e["type"].as_str() {
            Some("request.accepted") => entry.0.push(worker.to_string()),
            Some("request.finished") if e["data"]["error_code"].is_null() => entry.1.push(worker.to_string()),
            _ => {}
        }
    }
    requests
}

#[then("every completed request was accepted, and finished by the worker its last acceptance names, in the log")]
async fn completed_are_in_the_log(w: &mut RbeeWorld) {
    let completed: Vec<&str> = w
        .answers
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Completed { .. }))
        .filter_map(|a| a.request.as_deref())
        .collect();
    eventually("every completed request's acceptance and end are in the log", Duration::from_secs(30), || async {
        let log = accepted_and_finished(&w.cluster().events(false));
        let missing: Vec<String> = completed
            .iter()
            .filter(|r| match log.get(**r) {
                Some((accepted, finished)) => accepted.last().is_none_or(|last| !finished.contains(last)),
                None => true,
            })
            .map(|r| format!("{r}: {:?}", log.get(*r)))
            .collect();
        if missing.is_empty() { Ok(()) } else { Err(missing) }
    })
    .await;
}

/// Every event file waiting in an outbox under the cluster's data directory.
fn outbox_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(outbox_files(&path));
        } else if path.to_string_lossy().ends_with(".event.json") {
            files.push(path);
        }
    }
    files
}

#[then("no outbox holds an event")]
async fn outboxes_empty(w: &mut RbeeWorld) {
    let dir = w.cluster().data_dir.join("outbox");
    eventually("every outbox is empty", Duration::from_secs(30), || async {
        let left = outbox_files(&dir);
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
}

#[then("no slot is held")]
async fn no_slot_held(w: &mut RbeeWorld) {
    eventually("no worker holds a slot", Duration::from_secs(30), || async {
        let held: Vec<Value> = w
            .cluster()
            .workers()
            .into_iter()
            .filter(|x| x["busy"].as_object().is_some_and(|b| !b.is_empty()))
            .map(|x| serde_json::json!({"id": x["id"], "state": x["state"], "busy": x["busy"]}))
            .collect();
        if held.is_empty() { Ok(()) } else { Err(held) }
    })
    .await;
}

#[then("the queen's view equals a fresh fold of the log")]
async fn view_is_the_fold(w: &mut RbeeWorld) {
    let health = format!("{}/health", w.cluster().queen_url);
    eventually("the queen's digest is a replay's at its sequence", Duration::from_secs(30), || async {
        let body: Value =
            reqwest::get(&health).await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
        let seq = body["last_seq"].as_u64().ok_or(body.to_string())?.to_string();
        let out = w.cluster().rbee(&["replay", "--at", &seq, "--digest"]);
        let replayed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && body["digest"] == replayed.as_str() {
            Ok(())
        } else {
            Err(format!(
                "queen {} at {seq}, replay {replayed:?} {}",
                body["digest"],
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
    .await;
}

/// Resident memory of `pid` in KiB, from /proc.
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The pids of the processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The fields after the command's closing parenthesis: state, then the parent's pid.
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// nats-server's subscriptions now, from its monitoring port.
async fn nats_subscriptions(w: &RbeeWorld) -> u64 {
    let monitor = w.cluster().file()["nats_monitor_url"].as_str().expect("the monitor's address").to_string();
    let subsz: Value = reqwest::get(format!("{monitor}/subsz")).await.unwrap().json().await.unwrap();
    subsz["num_subscriptions"].as_u64().expect("num_subscriptions")
}

/// The fewest subscriptions of three samples a second apart: a CLI or probe may hold some for a moment.
async fn settled_subscriptions(w: &RbeeWorld) -> u64 {
    let mut fewest = u64::MAX;
    for _ in 0..3 {
        fewest = fewest.min(nats_subscriptions(w).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    fewest
}

impl RbeeWorld {
    /// The processes the soak watches: the queen, the hive, its workers and nats-server.
    fn soaked_processes(&self) -> Vec<(String, u32)> {
        let file = self.cluster().file();
        let pid = |key: &str| file[key].as_u64().expect("cluster.json records it") as u32;
        let mut processes = vec![("queen".to_string(), pid("queen_pid")), ("hive".into(), pid("hive_pid"))];
        processes.push(("nats-server".into(), pid("nats_pid")));
        for worker in children_of(pid("hive_pid")) {
            processes.push((format!("worker {worker}"), worker));
        }
        processes
    }
}

#[when(expr = "{int} clients stream it for the soak's length while the processes' memory is sampled")]
async fn soak(w: &mut RbeeWorld, clients: usize) {
    let secs = seconds_from_env("RBEE_SOAK_SECS", 300);
    w.soak_subscriptions_at_rest = settled_subscriptions(w).await;
    let processes = w.soaked_processes();
    let until = Instant::now() + Duration::from_secs(secs);
    let load = w.noted_load();
    let sample = async {
        let mut samples: Vec<Vec<u64>> = vec![Vec::new(); processes.len()];
        while Instant::now() < until {
            for (i, (_, pid)) in processes.iter().enumerate() {
                samples[i].extend(resident_kib(*pid));
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        samples
    };
    let (answers, samples) = tokio::join!(load.run(clients, until), sample);
    let counts = tally(&answers, &(w.noted_text.clone(), w.noted_tokens));
    println!("soak: {secs} s, {clients} clients, {} requests: {counts:?}", answers.len());
    w.answers = answers;
    w.soak_memory = processes.into_iter().zip(samples).map(|((name, pid), s)| (name, pid, s)).collect();
}

#[then("every stream completed with exactly the noted text")]
fn all_exact(w: &mut RbeeWorld) {
    let counts = tally(&w.answers, &(w.noted_text.clone(), w.noted_tokens));
    assert_eq!(counts.keys().collect::<Vec<_>>(), vec!["completed"], "{counts:?}");
}

/// The median of `values` (sorted copy).
fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

#[then("the memory of the queen, the hive, the worker and nats-server stayed flat")]
fn memory_flat(w: &mut RbeeWorld) {
    for (name, pid, samples) in &w.soak_memory {
        assert!(samples.len() >= 5, "{name} ({pid}): too few samples: {samples:?}");
        let fifth = samples.len() / 5;
        let (first, last) = (median(&samples[..fifth]), median(&samples[samples.len() - fifth..]));
        println!("soak memory: {name}: {first} KiB at first, {last} KiB at last");
        let allowed = (first + first / 4).max(first + 16 * 1024);
        assert!(last <= allowed, "{name} ({pid}) grew from {first} KiB to {last} KiB: {samples:?}");
    }
}

#[then("the same processes run, and the hive has no other child")]
fn same_processes(w: &mut RbeeWorld) {
    let before: Vec<(String, u32)> = w.soak_memory.iter().map(|(n, p, _)| (n.clone(), *p)).collect();
    assert_eq!(w.soaked_processes(), before, "a process was replaced, or the hive has another child");
    for (name, pid) in &before {
        assert!(rbee_runtime::alive(*pid), "{name} ({pid}) is gone");
    }
}

#[then("nats-server holds no more subscriptions than at rest")]
async fn subscriptions_at_rest(w: &mut RbeeWorld) {
    let now = settled_subscriptions(w).await;
    assert!(now <= w.soak_subscriptions_at_rest, "{now} subscriptions now, {} at rest", w.soak_subscriptions_at_rest);
}

#[when("a slot of the worker is claimed, as a queen claims it, for a request that never reaches the worker")]
async fn orphaned_claim(w: &mut RbeeWorld) {
    let c = w.cluster();
    let worker = c.workers().into_iter().next().expect("a worker");
    let (id, node) = (worker["id"].as_str().unwrap().to_string(), worker["node"].as_str().unwrap().to_string());
    let queen = rbee_bus::NatsAccess::new(&c.nats_url, Some(c.creds(rbee_local::trust::Identity::Queen)))
        .with_tls(c.nats_ca.clone(), c.nats_cert.clone());
    let log = rbee_bus::EventLog::connect(&queen).await.expect("the queen's identity connects");
    w.request_id = format!("chatcmpl-orphan-{}", uuid::Uuid::now_v7().simple());
    let claimed = rbee_bus::Event::SlotClaimed(rbee_bus::SlotClaimed {
        worker: id.clone(),
        node,
        slot: 0,
        request: w.request_id.clone(),
    });
    log.append(claimed, rbee_bus::Expected::Any, &rbee_bus::Meta::default()).await.expect("the claim is appended");
    w.worker_id = id;
}

#[then("rbee workers shows that slot held for the request")]
async fn slot_held(w: &mut RbeeWorld) {
    let request = w.request_id.clone();
    eventually("the claim shows in the registry", super::DEADLINE, || async {
        let workers = w.cluster().workers();
        let held = workers.iter().any(|x| x["id"] == w.worker_id.as_str() && x["busy"]["0"] == request.as_str());
        if held { Ok(()) } else { Err(workers) }
    })
    .await;
}

#[then(
    expr = "within {int} seconds the worker records the slot released for that request, and rbee workers shows it free"
)]
async fn orphan_released(w: &mut RbeeWorld, seconds: u64) {
    let released = eventually("the worker releases the orphaned claim", Duration::from_secs(seconds), || async {
        match w.request_events("slot.released").pop() {
            Some(e) => Ok(e),
            None => Err(()),
        }
    })
    .await;
    assert_eq!(released["data"]["worker"], w.worker_id.as_str(), "{released}");
    no_slot_held(w).await;
}
