//! Steps of cancellation.feature: client disconnect and Ctrl+C.

use std::io::Read;
use std::process::Stdio;

use cucumber::{given, then, when};
use futures::StreamExt;
use rbee_features::poll::eventually;
use rbee_features::signal::{self, Signal};

use super::{DEADLINE, RbeeWorld};

#[when(expr = "I stream {string} with max_tokens {int} and disconnect after {int} chunks")]
async fn stream_and_disconnect(w: &mut RbeeWorld, prompt: String, max_tokens: u32, after: usize) {
    let response = w.post_chat(&prompt, max_tokens, true).await;
    assert_eq!(response.status().as_u16(), 200);
    w.request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut bytes = response.bytes_stream();
    let mut seen = 0;
    while seen < after + 1 {
        let chunk = bytes.next().await.expect("the stream goes on").expect("chunk");
        seen += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    // Dropping the stream closes the connection mid-generation.
}

#[then("the worker's slot is free again in rbee workers")]
async fn slot_free(w: &mut RbeeWorld) {
    let c = w.cluster();
    eventually("the worker shows 0 busy slots", DEADLINE, || async {
        let workers = c.workers();
        let busy: Vec<_> = workers.iter().filter(|x| x["busy"].as_object().is_none_or(|b| !b.is_empty())).collect();
        if workers.len() == 1 && busy.is_empty() { Ok(()) } else { Err(workers.clone()) }
    })
    .await;
}

#[then("the log shows request.cancelled, then request.finished as cancelled, then slot.released")]
async fn cancelled_in_log(w: &mut RbeeWorld) {
    let c = w.cluster();
    let request = w.request_id.clone();
    let events = eventually("the request's outcome is in the log", DEADLINE, || async {
        let events: Vec<_> = c
            .events(false)
            .into_iter()
            .filter(|e| {
                e["data"]["request"] == request.as_str()
                    && e["type"] != "request.accepted"
                    && e["type"] != "slot.claimed"
            })
            .collect();
        if events.len() >= 3 { Ok(events) } else { Err(events) }
    })
    .await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["request.cancelled", "request.finished", "slot.released"]);
    assert_eq!(events[1]["data"]["finish_reason"], "Cancelled");
}

#[then(expr = "the cancelled request generated fewer than {int} tokens")]
fn fewer_tokens(w: &mut RbeeWorld, limit: u64) {
    let finished = w.request_events("request.finished");
    let tokens = finished[0]["data"]["completion_tokens"].as_u64().unwrap();
    assert!(tokens < limit, "{tokens}");
}

#[when(expr = "I run rbee infer {string} and press Ctrl+C once text appears")]
async fn infer_then_ctrl_c(w: &mut RbeeWorld, prompt: String) {
    let before = w.cluster().events_of("request.accepted").len();
    let mut child =
        rbee_features::cluster::rbee_command(&w.cluster().data_dir, &["infer", &prompt, "--max-tokens", "400"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rbee infer starts");
    let mut stdout = child.stdout.take().unwrap();
    // Wait for the first bytes of the answer: the request is running and rbee infer listens for Ctrl+C.
    let first = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 16];
        let n = stdout.read(&mut buf).unwrap_or(0);
        (n, stdout)
    });
    let (n, _stdout) = tokio::time::timeout(DEADLINE, first).await.expect("text appears in time").unwrap();
    assert!(n > 0, "rbee infer printed text");
    signal::send(child.id(), Signal::Interrupt);
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().expect("rbee infer exits");
    w.output = Some(std::process::Output { status, stdout: Vec::new(), stderr: Vec::new() });
    let accepted = w.cluster().events_of("request.accepted");
    assert_eq!(accepted.len(), before + 1, "exactly one new request");
    w.request_id = accepted.last().unwrap()["data"]["request"].as_str().unwrap().to_string();
}

#[then(expr = "rbee infer exits with code {int}")]
fn infer_exit_code(w: &mut RbeeWorld, code: i32) {
    assert_eq!(w.output.as_ref().unwrap().status.code(), Some(code));
}

#[given(expr = "a cluster of my own whose worker has {int} slots")]
async fn own_cluster_with_slots(w: &mut RbeeWorld, slots: u32) {
    let cluster =
        tokio::task::spawn_blocking(move || rbee_features::cluster::Cluster::up(&["--slots", &slots.to_string()]))
            .await
            .unwrap();
    w.own = Some(cluster.expect("rbee up succeeds"));
    let workers = w.cluster().workers();
    assert_eq!((workers.len(), workers[0]["slots"].as_u64()), (1, Some(slots as u64)), "{workers:?}");
}

#[when(expr = "{int} streaming requests of {string} with max_tokens {int} run at once")]
async fn streams_at_once(w: &mut RbeeWorld, n: usize, prompt: String, max_tokens: u32) {
    let responses = futures::future::join_all((0..n).map(|_| w.post_chat(&prompt, max_tokens, true))).await;
    for response in responses {
        assert_eq!(response.status().as_u16(), 200);
        w.streams.push(super::follow_stream(response));
    }
}

/// Chunks carrying generated text so far.
fn text_chunks(received: &str) -> usize {
    received.matches("\"content\":\"").count()
}

#[then(expr = "all {int} stream text at the same time, from the one worker")]
async fn streaming_together(w: &mut RbeeWorld, n: usize) {
    assert_eq!(w.streams.len(), n);
    let streams = w.streams.clone();
    // Every stream has produced several pieces of text while none has ended: they run side by side
    // (one at a time, the others would wait without a token).
    eventually("every stream has text", DEADLINE, || async {
        let counts: Vec<usize> = streams.iter().map(|(_, r)| text_chunks(&r.lock().unwrap().0)).collect();
        if counts.iter().all(|&c| c >= 3) { Ok(()) } else { Err(counts) }
    })
    .await;
    for (id, received) in &streams {
        assert!(!received.lock().unwrap().1, "request {id} ended before the others streamed");
    }
    let workers = w.cluster().workers();
    let busy = workers[0]["busy"].as_object().map_or(0, |b| b.len());
    assert_eq!((workers.len(), busy), (1, n), "one worker, all its slots busy: {workers:?}");
    let worker = workers[0]["id"].as_str().unwrap().to_string();
    for (id, _) in &streams {
        let claimed = w
            .cluster()
            .events_of("slot.claimed")
            .into_iter()
            .find(|e| e["data"]["request"] == id.as_str())
            .expect("claimed");
        assert_eq!(claimed["data"]["worker"], worker.as_str());
    }
}

#[when(expr = "all {int} are cancelled with DELETE \\/v1\\/requests\\/\\{id\\}")]
async fn cancel_all(w: &mut RbeeWorld, n: usize) {
    assert_eq!(w.streams.len(), n);
    let queen = w.cluster().queen_url.clone();
    let deletes = w.streams.iter().map(|(id, _)| w.cluster().http().delete(format!("{queen}/v1/requests/{id}")).send());
    for answer in futures::future::join_all(deletes).await {
        assert_eq!(answer.expect("the queen answers").status().as_u16(), 204);
    }
}

#[then("each of them ends with request.cancelled, then request.finished as cancelled, then slot.released")]
async fn each_cancelled(w: &mut RbeeWorld) {
    for (id, received) in w.streams.clone() {
        w.request_id = id;
        cancelled_in_log(w).await;
        eventually("the stream ended", DEADLINE, || async {
            if received.lock().unwrap().1 { Ok(()) } else { Err(()) }
        })
        .await;
    }
}

#[then(expr = "the worker's {int} slots are free again in rbee workers")]
async fn all_slots_free(w: &mut RbeeWorld, slots: u64) {
    let c = w.cluster();
    eventually("the worker shows all its slots free", DEADLINE, || async {
        let workers = c.workers();
        let free = workers.len() == 1
            && workers[0]["slots"] == slots
            && workers[0]["busy"].as_object().is_some_and(|b| b.is_empty());
        if free { Ok(()) } else { Err(workers.clone()) }
    })
    .await;
}

#[then(expr = "a new request is answered with finish_reason {string}")]
async fn new_request_answered(w: &mut RbeeWorld, reason: String) {
    w.ask("Say hello.", 3).await;
    assert_eq!(w.status, 200, "{}", w.body);
    assert_eq!(w.body["choices"][0]["finish_reason"], reason.as_str(), "{}", w.body);
}
