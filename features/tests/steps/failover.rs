//! Steps of the failover scenarios: a stream whose worker is lost mid-way moves to another worker
//! (or back to the same one, when it only gave the request up) and goes on with identical text.

use std::time::Duration;

use cucumber::{then, when};
use futures::StreamExt;
use rbee_bus::Code;
use rbee_features::signal::{self, Signal};
use serde_json::Value;

use super::RbeeWorld;
use super::reliability::greedy_body;
use super::serving::{queen_metrics, sample};

/// How long a moved stream may take to its end.
const STREAM_DEADLINE: Duration = Duration::from_secs(120);

impl RbeeWorld {
    /// Streams the noted greedy request; once three `data:` events arrived, runs `fault` with the
    /// request's id, then reads the stream to its end into `stream_texts`.
    async fn stream_noted_with_fault(&mut self, fault: impl AsyncFnOnce(&mut RbeeWorld, &str)) {
        self.metrics_before = queen_metrics(self).await;
        let response = self.post_chat_body(&greedy_body(&self.prompt, self.noted_seq as u32, true)).await;
        let status = response.status().as_u16();
        assert_eq!(status, 200);
        self.request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
        let mut bytes = response.bytes_stream();
        let mut seen = Vec::new();
        while String::from_utf8_lossy(&seen).matches("data: ").count() < 3 {
            seen.extend_from_slice(&bytes.next().await.expect("the stream goes on").expect("a chunk"));
        }
        let request = self.request_id.clone();
        fault(self, &request).await;
        let rest = tokio::time::timeout(STREAM_DEADLINE, async {
            while let Some(Ok(chunk)) = bytes.next().await {
                seen.extend_from_slice(&chunk);
            }
        })
        .await;
        assert!(rest.is_ok(), "the stream did not end within {STREAM_DEADLINE:?}");
        self.stream_texts = vec![(status, String::from_utf8_lossy(&seen).into_owned())];
    }

    /// The request's `request.accepted` and `request.finished` events, in log order.
    fn acceptances_and_ends(&self) -> (Vec<Value>, Vec<Value>) {
        (self.request_events("request.accepted"), self.request_events("request.finished"))
    }
}

#[when("it is streamed again and the worker serving it is killed with SIGKILL after its first tokens")]
async fn kill_its_worker(w: &mut RbeeWorld) {
    w.stream_noted_with_fault(async |w, _| {
        let accepted = w.request_events("request.accepted");
        let worker = accepted[0]["data"]["worker"].as_str().expect("the worker that took it").to_string();
        let pid = w.cluster().workers().iter().find(|x| x["id"] == worker.as_str()).and_then(|x| x["pid"].as_u64());
        signal::send(pid.expect("the worker's pid") as u32, Signal::Kill);
        w.noted_workers = vec![worker];
    })
    .await;
}

#[when(expr = "it is streamed again and the queen is paused for {int} seconds after its first tokens")]
async fn pause_the_queen(w: &mut RbeeWorld, seconds: u64) {
    w.stream_noted_with_fault(async |w, _| {
        let pid = w.cluster().file()["queen_pid"].as_u64().expect("cluster.json records the queen") as u32;
        signal::send(pid, Signal::Stop);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        signal::send(pid, Signal::Continue);
    })
    .await;
}

#[then("the stream completes with exactly the noted text and token count, ending with [DONE]")]
fn exactly_the_noted_stream(w: &mut RbeeWorld) {
    let (_, sse) = &w.stream_texts[0];
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    let mut text = String::new();
    let mut usage = None;
    for data in sse.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
        let chunk: Value = serde_json::from_str(data).expect("a JSON chunk");
        assert!(chunk.get("error").is_none(), "the stream carried an error: {chunk}");
        text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
        if chunk["usage"].is_object() {
            usage = chunk["usage"]["completion_tokens"].as_u64();
        }
    }
    assert_eq!(text, w.noted_text, "the moved stream's text differs from the uninterrupted one");
    assert_eq!(usage, Some(w.noted_tokens), "{sse}");
}

#[then("the log shows the request accepted by the killed worker, then by the other one, which finished it")]
async fn moved_to_the_other(w: &mut RbeeWorld) {
    let killed = w.noted_workers[0].clone();
    let (accepted, finished) = rbee_features::poll::eventually("the moved request's end", super::DEADLINE, || async {
        match w.acceptances_and_ends() {
            (a, f) if !f.is_empty() => Ok((a, f)),
            other => Err(other),
        }
    })
    .await;
    let workers: Vec<&str> = accepted.iter().filter_map(|e| e["data"]["worker"].as_str()).collect();
    assert_eq!(workers.len(), 2, "{accepted:?}");
    assert_eq!(workers[0], killed);
    assert_ne!(workers[1], killed, "moved to another worker");
    assert_eq!(finished.len(), 1, "one end, from the worker that finished it: {finished:?}");
    assert_eq!(finished[0]["data"]["worker"], workers[1]);
    assert!(finished[0]["data"]["error_code"].is_null(), "{finished:?}");
}

#[then("the log shows the worker gave the request up, then took it again and finished it")]
async fn given_up_and_taken_again(w: &mut RbeeWorld) {
    let (accepted, finished) = rbee_features::poll::eventually("the request's second end", super::DEADLINE, || async {
        match w.acceptances_and_ends() {
            (a, f) if f.len() >= 2 => Ok((a, f)),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(accepted.len(), 2, "accepted again after it was given up: {accepted:?}");
    assert_eq!(finished.len(), 2, "{finished:?}");
    let given_up = finished.iter().filter(|f| f["data"]["error_code"] == Code::StreamAbandoned.as_str()).count();
    let completed = finished.iter().filter(|f| f["data"]["error_code"].is_null()).count();
    assert_eq!((given_up, completed), (1, 1), "one end given up, one complete: {finished:?}");
}

#[then(expr = "the queen's \\/metrics counts {int} moved stream")]
async fn failovers_counted(w: &mut RbeeWorld, n: u32) {
    let text = queen_metrics(w).await;
    let series = format!("rbee_queen_failovers_total{{model=\"{}\",outcome=\"moved\"}}", super::MODEL);
    let gained = sample(&text, &series) - sample(&w.metrics_before, &series);
    assert_eq!(gained, f64::from(n), "{text}");
}

#[when(
    "it is streamed again and, after its first tokens, the log records that the request was given up by another worker and by an earlier run on this one"
)]
async fn late_ends_recorded(w: &mut RbeeWorld) {
    w.stream_noted_with_fault(async |w, request| {
        let serving = w.request_events("request.accepted")[0]["data"]["worker"].as_str().unwrap().to_string();
        let log = rbee_bus::EventLog::connect(&w.cluster().admin).await.expect("admin connects");
        for worker in ["a-worker-that-gave-it-up".to_string(), serving] {
            let given_up = rbee_bus::Event::RequestFinished(rbee_bus::RequestFinished {
                request: request.to_string(),
                worker,
                finish_reason: rbee_bus::FinishReason::Cancelled,
                prompt_tokens: 0,
                completion_tokens: 3,
                time_to_first_token_ms: 0,
                duration_ms: 0,
                error_code: Some(Code::StreamAbandoned),
            });
            log.append(given_up, rbee_bus::Expected::Any, &rbee_bus::Meta::default()).await.expect("appended");
        }
    })
    .await;
}
