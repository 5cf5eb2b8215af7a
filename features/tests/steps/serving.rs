//! Steps of serving.feature: cold and warm start, streaming, stop reasons, context limit.

use cucumber::{given, then, when};
use futures::StreamExt;
use rbee_features::cluster::Cluster;
use serde_json::Value;

use super::{MODEL, RbeeWorld};

#[given("a fresh data directory")]
fn fresh_data_directory(w: &mut RbeeWorld) {
    let dir = rbee_features::scratch_dir("cluster");
    let entries: Vec<_> = std::fs::read_dir(&dir).expect("the directory exists").collect();
    assert!(entries.is_empty(), "{} already holds {entries:?}", dir.display());
    w.fresh_dir = Some(dir);
}

#[given("a running cluster")]
fn running_cluster(w: &mut RbeeWorld) {
    w.shared = Some(crate::serving());
}

#[when("I run rbee up")]
fn run_rbee_up(w: &mut RbeeWorld) {
    let dir = w.fresh_dir.take().unwrap_or_else(|| rbee_features::scratch_dir("cluster"));
    let cluster = Cluster::up_in(dir, &[], &[]).expect("rbee up succeeds");
    assert!(cluster.up_output.contains("rbee is up: http://127.0.0.1:"), "{}", cluster.up_output);
    w.own = Some(cluster);
}

#[then("the log shows the model provisioned onto the node and registered in the catalog")]
fn model_provisioned(w: &mut RbeeWorld) {
    let c = w.cluster();
    let registered = c.events_of("model.registered");
    assert_eq!(registered.len(), 1, "{registered:?}");
    let data = &registered[0]["data"];
    assert_eq!(data["model"], MODEL);
    assert_eq!(data["node"], c.node.as_str());
    let path = data["path"].as_str().expect("path");
    assert!(path.starts_with(&c.data_dir.display().to_string()), "stored in the node's data dir: {path}");
    let size = std::fs::metadata(path).expect("the stored model exists").len();
    assert_eq!(data["size_bytes"], size);
    assert_eq!(data["sha256"], rbee_local::model::DEFAULT_SHA256);
}

#[then("the log shows a worker registered and then ready")]
fn worker_registered_then_ready(w: &mut RbeeWorld) {
    let events = w.cluster().events(false);
    let registered = events.iter().position(|e| e["type"] == "worker.registered").expect("worker.registered");
    let worker = events[registered]["data"]["worker"].clone();
    let ready = events
        .iter()
        .position(|e| {
            e["type"] == "worker.state_changed" && e["data"]["worker"] == worker && e["data"]["state"] == "Ready"
        })
        .expect("the worker became ready");
    assert!(registered < ready);
    let requested = events.iter().position(|e| e["type"] == "worker.start_requested").expect("the start was requested");
    assert!(requested < registered);
}

#[then(expr = "asking {string} gets an answer naming {string}")]
async fn answer_names(w: &mut RbeeWorld, prompt: String, expected: String) {
    w.ask(&prompt, 64).await;
    assert_eq!(w.status, 200, "{}", w.body);
    let content = w.body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(content.contains(&expected), "answer {content:?} does not name {expected}");
    assert_eq!(w.body["object"], "chat.completion");
    assert_eq!(w.body["id"], w.request_id.as_str());
}

#[when("I run rbee up on it again")]
fn rbee_up_again(w: &mut RbeeWorld) {
    w.counts_before = w.count_events(&["worker.start_requested", "worker.registered"]);
    let c = w.cluster();
    let ready_before: Vec<String> =
        c.workers().iter().filter(|x| x["state"] == "Ready").map(|x| x["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ready_before.len(), 1, "one ready worker before the second up");
    let output = c.rbee(&["up", "--port", "0", "--node", &c.node]);
    (w.ready_before, w.output) = (ready_before, Some(output));
}

#[then("rbee up says it reuses the running cluster and the ready worker")]
fn up_reused(w: &mut RbeeWorld) {
    let out = w.output.as_ref().expect("rbee up ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("reusing the running cluster"), "{stdout}");
    assert!(stdout.contains(&format!("reusing ready worker {}", w.ready_before[0])), "{stdout}");
}

#[then("no further worker was requested or registered")]
fn no_new_worker(w: &mut RbeeWorld) {
    let now = w.count_events(&["worker.start_requested", "worker.registered"]);
    assert_eq!(now, w.counts_before);
}

#[then("that request was served by the worker that was already ready")]
fn served_by_ready_worker(w: &mut RbeeWorld) {
    let accepted = w.request_events("request.accepted");
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0]["data"]["worker"], w.ready_before[0].as_str());
}

#[when(expr = "I stream a chat completion of {string} with max_tokens {int}")]
async fn stream_completion(w: &mut RbeeWorld, prompt: String, max_tokens: u32) {
    w.metrics_before = queen_metrics(w).await;
    let response = w.post_chat(&prompt, max_tokens, true).await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    w.request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut bytes = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = bytes.next().await {
        buffer.extend_from_slice(&chunk.expect("stream chunk"));
    }
    let text = String::from_utf8(buffer).expect("UTF-8 stream");
    w.stream = text
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect();
}

fn chunks(w: &RbeeWorld) -> Vec<Value> {
    let (_, body) = w.stream.split_last().expect("a non-empty stream");
    body.iter().map(|d| serde_json::from_str(d).expect("each chunk is JSON")).collect()
}

#[then("every event before the last is a chat.completion.chunk with the request's id")]
fn all_chunks(w: &mut RbeeWorld) {
    let chunks = chunks(w);
    assert!(chunks.len() >= 3, "role chunk, at least one delta, final chunk: {chunks:?}");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], w.request_id.as_str());
        assert_eq!(c["model"], MODEL);
    }
}

#[then("the chunks carry the assistant role first and then text deltas")]
fn role_then_deltas(w: &mut RbeeWorld) {
    let chunks = chunks(w);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..chunks.len() - 1]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().expect("a text delta"))
        .collect();
    assert!(!text.trim().is_empty(), "the deltas carry text");
}

#[then("the final chunk has a finish_reason and usage that adds up")]
fn final_chunk(w: &mut RbeeWorld) {
    let chunks = chunks(w);
    let last = chunks.last().unwrap();
    let reason = last["choices"][0]["finish_reason"].as_str().expect("finish_reason");
    assert!(reason == "stop" || reason == "length", "{reason}");
    let usage = &last["usage"];
    let (p, c, t) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
        usage["total_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c > 0 && c <= 20 && t == p + c, "{usage}");
    let finished = w.request_events("request.finished");
    assert_eq!(finished[0]["data"]["completion_tokens"], c);
}

#[then(expr = "the stream ends with {string}")]
fn stream_ends_with(w: &mut RbeeWorld, last: String) {
    assert_eq!(format!("data: {}", w.stream.last().unwrap()), last);
}

#[when(expr = "I ask {string} with max_tokens {int}")]
async fn ask_with_max_tokens(w: &mut RbeeWorld, prompt: String, max_tokens: u32) {
    w.ask(&prompt, max_tokens).await;
}

#[then(expr = "the finish_reason is {string}")]
fn finish_reason(w: &mut RbeeWorld, reason: String) {
    assert_eq!(w.status, 200, "{}", w.body);
    assert_eq!(w.body["choices"][0]["finish_reason"], reason.as_str());
}

fn completion_tokens_match_the_log(w: &RbeeWorld) -> u64 {
    let tokens = w.body["usage"]["completion_tokens"].as_u64().expect("usage.completion_tokens");
    let finished = w.request_events("request.finished");
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0]["data"]["completion_tokens"], tokens, "the API and the log agree");
    tokens
}

#[then(expr = "completion_tokens is below {int} and equals the count in the request.finished event")]
fn tokens_below(w: &mut RbeeWorld, limit: u64) {
    let tokens = completion_tokens_match_the_log(w);
    assert!(tokens > 0 && tokens < limit, "{tokens}");
}

#[then(expr = "completion_tokens is {int} and equals the count in the request.finished event")]
fn tokens_exactly(w: &mut RbeeWorld, expected: u64) {
    assert_eq!(completion_tokens_match_the_log(w), expected);
}

#[then(expr = "the response is HTTP {int} with code {string} naming the limit {int}")]
fn http_error(w: &mut RbeeWorld, status: u16, code: String, limit: u32) {
    assert_eq!(w.status, status, "{}", w.body);
    assert_eq!(w.body["error"]["code"], code.as_str());
    assert_eq!(w.body["error"]["type"], "invalid_request_error");
    let message = w.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&limit.to_string()), "{message}");
}

#[then("no slot was claimed for that request")]
fn no_slot_claimed(w: &mut RbeeWorld) {
    assert!(!w.request_id.is_empty());
    let claims = w.request_events("slot.claimed");
    assert!(claims.is_empty(), "{claims:?}");
    assert!(w.request_events("request.accepted").is_empty());
}

/// The queen's `/metrics` text.
pub(super) async fn queen_metrics(w: &RbeeWorld) -> String {
    let response = reqwest::get(format!("{}/metrics", w.cluster().queen_url)).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.unwrap()
}

/// The value of one series in a metrics text; 0 when the series has no sample yet.
pub(super) fn sample(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Scenarios run one at a time: what the counters gained since the request started is this request.
#[then("the queen's /metrics counts it as ok with its time to first token, in valid text format")]
async fn metrics_count(w: &mut RbeeWorld) {
    let text = queen_metrics(w).await;
    let gained = |series: String| sample(&text, &series) - sample(&w.metrics_before, &series);
    let usage = chunks(w).last().expect("a final chunk")["usage"]["completion_tokens"].as_f64().expect("usage");
    assert_eq!(gained(format!("rbee_queen_requests_total{{code=\"ok\",model=\"{MODEL}\"}}")), 1.0, "{text}");
    assert_eq!(gained(format!("rbee_queen_time_to_first_token_seconds_count{{model=\"{MODEL}\"}}")), 1.0, "{text}");
    assert_eq!(gained(format!("rbee_queen_completion_tokens_total{{model=\"{MODEL}\"}}")), usage, "{text}");
    assert_eq!(sample(&text, "rbee_queen_workers{state=\"ready\"}"), 1.0, "{text}");
    // Every sample line is `name{labels} number`.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, number) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
        assert!(series.starts_with("rbee_queen_") && number.parse::<f64>().is_ok(), "bad line {line}");
    }
}
