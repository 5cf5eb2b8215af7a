//! Steps of queens.feature: a second queen process on the same cluster.

use std::collections::BTreeMap;

use cucumber::{given, then, when};
use rbee_features::poll::eventually;
use serde_json::{Value, json};

use super::{DEADLINE, MODEL, RbeeWorld};

#[given("a second queen serving the same cluster")]
async fn second_queen(w: &mut RbeeWorld) {
    w.second_queen = w.start_queen(false).await;
}

/// Seconds requests waited for a slot at the queen at `url`, summed (its slot-wait histogram).
async fn slot_wait_seconds(url: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    let series = format!("rbee_queen_slot_wait_seconds_sum{{model=\"{MODEL}\"}}");
    text.lines().find_map(|l| l.strip_prefix(&series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[when(expr = "{int} chat completions arrive at once, split between the two queens")]
async fn concurrent_requests(w: &mut RbeeWorld, n: usize) {
    let urls = [w.cluster().queen_url.clone(), w.second_queen.clone()];
    w.slot_waits_before = slot_wait_seconds(&urls[0]).await + slot_wait_seconds(&urls[1]).await;
    let client = w.cluster().http();
    let requests = (0..n).map(|i| {
        let url = format!("{}/v1/chat/completions", urls[i % 2]);
        let client = client.clone();
        async move {
            let body = json!({"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": format!("Say {i}.")}]});
            let response = client.post(url).json(&body).send().await.expect("a queen answers");
            let status = response.status().as_u16();
            let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            (status, id, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    });
    w.batch = futures::future::join_all(requests).await;
}

/// The race happened: both queens were granted the one slot in turn, and requests waited for it
/// while the other queen's request held it.
#[then(expr = "every request completed, or was refused with HTTP {int} and code {string}")]
async fn all_completed_or_busy(w: &mut RbeeWorld, status: u16, code: String) {
    let done = |(s, _, b): &&(u16, String, Value)| *s == 200 && b["choices"][0]["finish_reason"].is_string();
    let refused = w.batch.iter().filter(|(s, _, b)| *s == status && b["error"]["code"] == code.as_str()).count();
    let completed = w.batch.iter().filter(done).count();
    assert_eq!(completed + refused, w.batch.len(), "{:?}", w.batch);
    // Requests alternate between the queens: even indices went to the first, odd to the second.
    for queen in 0..2 {
        let served = w.batch.iter().skip(queen).step_by(2).filter(done).count();
        assert!(served >= 1, "queen {queen} was never granted the slot: {:?}", w.batch);
    }
    let waited = slot_wait_seconds(&w.cluster().queen_url).await + slot_wait_seconds(&w.second_queen).await;
    assert!(waited > w.slot_waits_before, "no request waited for the slot: no contention happened");
}

/// Slot events of the cluster's workers in log order: (worker, slot) -> holder.
fn slot_history(w: &RbeeWorld) -> Vec<Value> {
    w.cluster()
        .events(false)
        .into_iter()
        .filter(|e| e["type"] == "slot.claimed" || e["type"] == "slot.released")
        .collect()
}

#[then("in the log no slot was ever claimed while it was still held")]
fn never_double_granted(w: &mut RbeeWorld) {
    let mut holders: BTreeMap<(String, u64), String> = BTreeMap::new();
    for e in slot_history(w) {
        let key = (e["data"]["worker"].as_str().unwrap().to_string(), e["data"]["slot"].as_u64().unwrap());
        let request = e["data"]["request"].as_str().unwrap().to_string();
        if e["type"] == "slot.claimed" {
            if let Some(holder) = holders.get(&key) {
                panic!("slot {key:?} claimed by {request} while held by {holder}");
            }
            holders.insert(key, request);
        } else if holders.get(&key) == Some(&request) {
            holders.remove(&key);
        }
    }
}

#[then("every claimed slot was released")]
async fn all_released(w: &mut RbeeWorld) {
    eventually("no slot is held", DEADLINE, || async {
        let mut held: BTreeMap<(String, u64), String> = BTreeMap::new();
        for e in slot_history(w) {
            let key = (e["data"]["worker"].as_str().unwrap().to_string(), e["data"]["slot"].as_u64().unwrap());
            if e["type"] == "slot.claimed" {
                held.insert(key, e["data"]["request"].as_str().unwrap().to_string());
            } else {
                held.remove(&key);
            }
        }
        if held.is_empty() { Ok(()) } else { Err(held) }
    })
    .await;
}

#[when("the second queen is killed with SIGKILL and started again")]
async fn kill_and_restart(w: &mut RbeeWorld) {
    w.kill_second_queen();
    w.second_queen = w.start_queen(false).await;
}

/// The restarted queen's registry and catalog are the log's: its digest is a replay's, which
/// covers every worker with its id and state.
#[then("the restarted queen lists the same ready worker as the log")]
async fn restarted_lists_worker(w: &mut RbeeWorld) {
    let ready = w.cluster().workers().into_iter().filter(|x| x["state"] == "Ready").count();
    assert_eq!(ready, 1, "the log holds one ready worker");
    let out = w.cluster().rbee(&["replay", "--digest"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let health_url = format!("{}/health", w.second_queen);
    eventually("the restarted queen's view is the log's", DEADLINE, || async {
        let health: Value = reqwest::get(&health_url).await.unwrap().json().await.unwrap();
        if health["digest"] == replayed.as_str() && health["ready_workers"] == 1 { Ok(()) } else { Err(health) }
    })
    .await;
    let models: Value =
        w.cluster().http().get(format!("{}/v1/models", w.second_queen)).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
}

#[then(expr = "asking the restarted queen {string} gets an answer naming {string}")]
async fn restarted_answers(w: &mut RbeeWorld, prompt: String, expected: String) {
    let body = json!({"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]});
    let response =
        w.cluster().http().post(format!("{}/v1/chat/completions", w.second_queen)).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(content.contains(&expected), "{content}");
}

#[when("two work items for the worker's only slot reach it at the same moment")]
async fn two_work_items(w: &mut RbeeWorld) {
    use rbee_bus::frames::{self, ChatMessage, Sampling, WorkAccepted, WorkItem};
    let workers = w.cluster().workers();
    let (worker, node) =
        (workers[0]["id"].as_str().unwrap().to_string(), workers[0]["node"].as_str().unwrap().to_string());
    let client = w.cluster().admin_client().await;
    let sends = (0..2).map(|i| {
        let (client, worker, node) = (client.clone(), worker.clone(), node.clone());
        async move {
            let item = WorkItem {
                request: format!("race-{i}-{}", uuid::Uuid::now_v7().simple()),
                slot: 0,
                messages: vec![ChatMessage { role: "user".into(), content: "Say hi.".into() }],
                max_tokens: Some(3),
                sampling: Sampling::default(),
                traceparent: None,
                resume: Vec::new(),
            };
            let reply =
                client.request(rbee_bus::subjects::work(&node, &worker), frames::encode(&item).into()).await.unwrap();
            (item.request, frames::decode::<WorkAccepted>(&reply.payload).unwrap())
        }
    });
    let answers = futures::future::join_all(sends).await;
    w.batch = answers
        .into_iter()
        .map(|(request, answer)| match answer {
            WorkAccepted::Accepted => (200, request, Value::Null),
            WorkAccepted::Refused { code, .. } => (503, request, Value::String(code.as_str().into())),
        })
        .collect();
}

#[then(expr = "the worker accepts exactly one and refuses the other with {string}")]
fn one_accepted(w: &mut RbeeWorld, code: String) {
    let accepted = w.batch.iter().filter(|(s, _, _)| *s == 200).count();
    let refused: Vec<&Value> = w.batch.iter().filter(|(s, _, _)| *s == 503).map(|(_, _, c)| c).collect();
    assert_eq!(accepted, 1, "{:?}", w.batch);
    assert_eq!(refused, [&Value::String(code)]);
}

#[then("once the accepted one has finished, the worker's slot is free and it serves the queen again")]
async fn serves_again(w: &mut RbeeWorld) {
    let winner = w.batch.iter().find(|(s, _, _)| *s == 200).unwrap().1.clone();
    let c = w.cluster();
    eventually("the accepted request finished", DEADLINE, || async {
        let done = c.events_of("request.finished").into_iter().any(|e| e["data"]["request"] == winner.as_str());
        if done { Ok(()) } else { Err(()) }
    })
    .await;
    let response = w.post_chat("Say hello.", 3, false).await;
    assert_eq!(response.status().as_u16(), 200);
}
