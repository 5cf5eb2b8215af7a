//! Steps of the worker's time limit on one generation (INF-5).

use cucumber::{given, then, when};
use rbee_features::load::{Outcome, read_stream};

use super::RbeeWorld;

#[given(expr = "a cluster of my own whose workers stop a generation after {int} seconds")]
async fn cluster_with_time_limit(w: &mut RbeeWorld, seconds: u64) {
    let env = [("RBEE_GENERATION_TIMEOUT_SECS", seconds.to_string())];
    let cluster = tokio::task::spawn_blocking(move || rbee_features::cluster::Cluster::up_with_env(&[], &env));
    w.own = Some(cluster.await.unwrap().expect("rbee up"));
}

#[when(expr = "I stream {string} with max_tokens {int} to its end")]
async fn stream_to_end(w: &mut RbeeWorld, prompt: String, max_tokens: u32) {
    let response = w.post_chat(&prompt, max_tokens, true).await;
    assert_eq!(response.status().as_u16(), 200);
    w.request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    w.stream_texts = vec![(200, response.text().await.expect("the stream ends"))];
}

#[then(expr = "the stream carried text, then an error event {string}, then [DONE]")]
fn text_then_error(w: &mut RbeeWorld, code: String) {
    let sse = &w.stream_texts[0].1;
    assert_eq!(read_stream(sse), Outcome::ErrorEvent(code), "{sse}");
    let before_error = sse.split("\"error\"").next().unwrap_or_default();
    assert!(before_error.contains("\"content\":\""), "no text before the error: {sse}");
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
}

#[then(expr = "the answer is HTTP {int} with code {string} and the text made so far as error.partial_content")]
fn partial_content(w: &mut RbeeWorld, status: u16, code: String) {
    assert_eq!(w.status, status, "{}", w.body);
    assert_eq!(w.body["error"]["code"], code.as_str(), "{}", w.body);
    let partial = w.body["error"]["partial_content"].as_str().unwrap_or_default();
    assert!(partial.len() > 20, "no partial text: {}", w.body);
}

#[then(expr = "the log records the request finished with code {string} and the tokens it made")]
async fn finished_with_code(w: &mut RbeeWorld, code: String) {
    let finished = rbee_features::poll::eventually("the request's end is in the log", super::DEADLINE, || async {
        match w.request_events("request.finished").pop() {
            Some(f) => Ok(f),
            None => Err(()),
        }
    })
    .await;
    assert_eq!(finished["data"]["error_code"], code.as_str(), "{finished}");
    assert!(finished["data"]["completion_tokens"].as_u64() > Some(0), "{finished}");
}

#[given("a cluster of my own without workers")]
async fn own_cluster_without_workers(w: &mut RbeeWorld) {
    let cluster = tokio::task::spawn_blocking(|| rbee_features::cluster::Cluster::up(&["--no-worker"]));
    w.own = Some(cluster.await.unwrap().expect("rbee up"));
}

/// The worker is frozen the moment the log holds its registration, so it is loading for as long as
/// the step needs; a request for its model waits for it, and its client gives up meanwhile.
#[when("a worker is started and, while it loads, a request for its model is abandoned by its client")]
async fn abandoned_while_loading(w: &mut RbeeWorld) {
    use futures::StreamExt;
    use rbee_bus::read::{self, StartAt};
    let c = w.cluster();
    let log = rbee_bus::EventLog::connect(&c.admin).await.expect("admin connects");
    let end = read::last_sequence(&log, rbee_bus::subjects::EVENTS_STREAM).await.expect("the log's end");
    let mut events =
        read::follow(&log, rbee_bus::subjects::EVENTS_STREAM, StartAt::Seq(end + 1)).await.expect("follow");
    let (data_dir, node) = (c.data_dir.clone(), c.node.clone());
    let start = tokio::task::spawn_blocking(move || {
        rbee_features::cluster::rbee(&data_dir, &["workers", "start", "--node", &node, "--timeout-secs", "120"])
    });
    let pid = tokio::time::timeout(super::DEADLINE, async {
        while let Some(delivered) = events.next().await {
            if let Ok(rbee_bus::Event::WorkerRegistered(r)) = delivered.map(|d| d.recorded.envelope.event) {
                return r.pid;
            }
        }
        panic!("the log ended")
    })
    .await
    .expect("the worker registers");
    rbee_features::signal::send(pid, rbee_features::signal::Signal::Stop);
    let body = serde_json::json!({"model": super::MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]});
    let request = c.http().post(format!("{}/v1/chat/completions", c.queen_url)).json(&body).send();
    let abandoned = tokio::time::timeout(std::time::Duration::from_secs(2), request).await;
    rbee_features::signal::send(pid, rbee_features::signal::Signal::Continue);
    assert!(abandoned.is_err(), "answered while its worker was loading: {abandoned:?}");
    let started = start.await.unwrap();
    assert!(started.status.success(), "the worker came up: {}", String::from_utf8_lossy(&started.stderr));
}

#[then("the log holds no slot claimed and no request accepted")]
async fn nothing_claimed(w: &mut RbeeWorld) {
    // Long enough for a request still waiting to have been admitted by now.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let c = w.cluster();
    let (claimed, accepted) = (c.events_of("slot.claimed"), c.events_of("request.accepted"));
    assert!(claimed.is_empty() && accepted.is_empty(), "{claimed:?} {accepted:?}");
}
