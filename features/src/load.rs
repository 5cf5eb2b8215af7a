//! Load for the fault and soak scenarios: clients that stream the same request over and over until
//! told to stop, and say of every answer how it ended.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

/// How one streamed request ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `[DONE]` after a last chunk with usage: the text and the completion tokens.
    Completed { text: String, tokens: u64 },
    /// The stream carried an error event with this code.
    ErrorEvent(String),
    /// Refused before any chunk: HTTP status and code.
    Refused(u16, String),
    /// No answer, or the connection was cut before `[DONE]` (the queen died).
    Unreachable(String),
    /// Not ended within the client's deadline.
    Hung,
}

/// One request: its id (when the queen gave one) and how it ended.
#[derive(Debug, Clone)]
pub struct Answer {
    pub request: Option<String>,
    pub outcome: Outcome,
    /// When it ended.
    pub ended: Instant,
}

/// What the clients send, where, and the deadline each request carries (`x-request-timeout`);
/// a request not ended 30 s after it counts as hung.
#[derive(Clone)]
pub struct Load {
    pub client: reqwest::Client,
    pub url: String,
    pub body: Value,
    pub request_timeout: Duration,
}

/// How long past its deadline a request may still be ending before it counts as hung.
pub const HUNG_PAST_DEADLINE: Duration = Duration::from_secs(30);

impl Load {
    /// Streams the request once.
    pub async fn once(&self) -> Answer {
        let mut request = None;
        let hung = self.request_timeout + HUNG_PAST_DEADLINE;
        let outcome = tokio::time::timeout(hung, self.stream(&mut request)).await.unwrap_or(Outcome::Hung);
        Answer { request, outcome, ended: Instant::now() }
    }

    async fn stream(&self, request: &mut Option<String>) -> Outcome {
        let timeout = self.request_timeout.as_secs().to_string();
        let response =
            match self.client.post(&self.url).header("x-request-timeout", timeout).json(&self.body).send().await {
                Ok(r) => r,
                Err(e) => return Outcome::Unreachable(e.to_string()),
            };
        *request = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let status = response.status().as_u16();
        if status != 200 {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            return Outcome::Refused(status, body["error"]["code"].as_str().unwrap_or("-").to_string());
        }
        let mut sse = Vec::new();
        let mut bytes = response.bytes_stream();
        while let Some(chunk) = bytes.next().await {
            match chunk {
                Ok(chunk) => sse.extend_from_slice(&chunk),
                Err(e) => return Outcome::Unreachable(format!("cut mid-stream: {e}")),
            }
        }
        read_stream(&String::from_utf8_lossy(&sse))
    }

    /// `clients` clients, each streaming the request again as soon as the last one ended, until
    /// `until`; a client whose request failed waits a moment first. Every answer, in no order.
    pub async fn run(&self, clients: usize, until: Instant) -> Vec<Answer> {
        let each = (0..clients).map(|_| async move {
            let mut answers = Vec::new();
            while Instant::now() < until {
                let answer = self.once().await;
                let failed = !matches!(answer.outcome, Outcome::Completed { .. });
                answers.push(answer);
                if failed {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            answers
        });
        futures::future::join_all(each).await.into_iter().flatten().collect()
    }
}

/// How an SSE body ended: its text and usage, or its error event, or cut short.
pub fn read_stream(sse: &str) -> Outcome {
    let mut text = String::new();
    let mut tokens = None;
    let mut done = false;
    for data in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return Outcome::Unreachable(format!("an unreadable chunk: {data}"));
        };
        if let Some(code) = chunk["error"]["code"].as_str() {
            return Outcome::ErrorEvent(code.to_string());
        }
        text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = Some(n);
        }
    }
    match tokens {
        Some(tokens) if done => Outcome::Completed { text, tokens },
        _ => Outcome::Unreachable("the stream ended before [DONE]".into()),
    }
}

/// Answers counted by how they ended: `completed`, `completed (different text)`, `error CODE`,
/// `refused STATUS CODE`, `unreachable`, `hung`; completions compared with `expected`.
pub fn tally(answers: &[Answer], expected: &(String, u64)) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        let class = match &answer.outcome {
            Outcome::Completed { text, tokens } if (text, *tokens) == (&expected.0, expected.1) => "completed".into(),
            Outcome::Completed { .. } => "completed (different text)".into(),
            Outcome::ErrorEvent(code) => format!("error {code}"),
            Outcome::Refused(status, code) => format!("refused {status} {code}"),
            Outcome::Unreachable(_) => "unreachable".into(),
            Outcome::Hung => "hung".into(),
        };
        *counts.entry(class).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_complete_only_with_usage_and_done() {
        let chunk = |text: &str| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n");
        let usage = "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"completion_tokens\":2}}\n\n";
        let whole = format!("{}{}{usage}data: [DONE]\n\n", chunk("a"), chunk("b"));
        assert_eq!(read_stream(&whole), Outcome::Completed { text: "ab".into(), tokens: 2 });
        assert!(matches!(read_stream(&format!("{}{usage}", chunk("a"))), Outcome::Unreachable(_)));
        let lost = rbee_bus::Code::WorkerLost.as_str();
        let error = format!("{}data: {{\"error\":{{\"code\":\"{lost}\"}}}}\n\ndata: [DONE]\n\n", chunk("a"));
        assert_eq!(read_stream(&error), Outcome::ErrorEvent(lost.into()));
    }
}
