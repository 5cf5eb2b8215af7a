//! Steps of cancellation.feature: client disconnect and Ctrl+C.

use std::io::Read;
use std::process::Stdio;

use cucumber::{then, when};
use futures::StreamExt;
use rbee_features::poll::eventually;

use super::{RbeeWorld, DEADLINE};

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
            .filter(|e| e["data"]["request"] == request.as_str() && e["type"] != "request.accepted" && e["type"] != "slot.claimed")
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
    let mut child = rbee_features::cluster::rbee_command(&w.cluster().data_dir, &["infer", &prompt, "--max-tokens", "400"])
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
    // SAFETY: the pid of the child this step started, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
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
