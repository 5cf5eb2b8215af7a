//! Steps of keys.feature: API keys made and revoked with `rbee keys`, used against the queens.

use std::process::{Command, Stdio};
use std::time::Duration;

use cucumber::{given, then, when};
use rbee_features::poll::eventually;
use serde_json::{Value, json};

use super::{DEADLINE, MODEL, RbeeWorld};

/// A chat completion with `key` (None: no Authorization header) to the queen at `url`.
async fn chat(url: &str, key: Option<&str>, prompt: &str, max_tokens: u32, stream: bool) -> reqwest::Response {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": stream});
    let request = rbee_features::http().post(format!("{url}/v1/chat/completions")).json(&body);
    let request = match key {
        Some(k) => request.bearer_auth(k),
        None => request,
    };
    request.send().await.expect("the queen answers")
}

/// Waits until the queen at `url` has read the creation of `key` from the log.
async fn until_known(url: &str, key: &str) {
    eventually("the queen knows the key", DEADLINE, || async {
        let s = rbee_features::http().get(format!("{url}/v1/models")).bearer_auth(key).send().await.unwrap().status();
        if s.as_u16() == 200 { Ok(()) } else { Err(s) }
    })
    .await;
}

impl RbeeWorld {
    fn key(&self, name: &str) -> String {
        self.api_keys.iter().find(|(n, _)| n == name).map(|(_, k)| k.clone()).expect("a key made by the scenario")
    }

    /// Keeps an HTTP answer's status, body and the headers scenarios look at.
    pub(super) async fn record(&mut self, response: reqwest::Response) {
        self.status = response.status().as_u16();
        self.www_authenticate =
            response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().into();
        self.retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
        self.body = response.json().await.unwrap_or(Value::Null);
    }

    fn make_key(&mut self, name: &str, extra: &[&str]) {
        let mut args = vec!["keys", "create", "--name", name];
        args.extend_from_slice(extra);
        let out = self.cluster().rbee(&args);
        assert!(out.status.success(), "rbee keys create: {}", String::from_utf8_lossy(&out.stderr));
        let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(secret.starts_with("rbee-") && secret.len() > 40, "one secret on stdout: {secret}");
        self.api_keys.push((name.into(), secret));
    }

    fn both_queens(&self) -> [String; 2] {
        [self.cluster().queen_url.clone(), self.second_queen.clone()]
    }
}

#[when(expr = "I ask {string} without an API key")]
async fn ask_without_key(w: &mut RbeeWorld, prompt: String) {
    let response = chat(&w.cluster().queen_url, None, &prompt, 4, false).await;
    w.record(response).await;
}

#[when(expr = "I ask {string} with the API key {string}")]
async fn ask_with_key(w: &mut RbeeWorld, prompt: String, key: String) {
    let response = chat(&w.cluster().queen_url, Some(&key), &prompt, 4, false).await;
    w.record(response).await;
}

#[when("I list the models without an API key")]
async fn models_without_key(w: &mut RbeeWorld) {
    let response = rbee_features::http().get(format!("{}/v1/models", w.cluster().queen_url)).send().await.unwrap();
    w.record(response).await;
}

#[then(expr = "the response is HTTP {int} with code {string} and the header WWW-Authenticate {string}")]
fn refused_with_challenge(w: &mut RbeeWorld, status: u16, code: String, challenge: String) {
    assert_eq!(w.status, status, "{}", w.body);
    assert_eq!(w.body["error"]["code"], code.as_str(), "{}", w.body);
    assert_eq!(w.body["error"]["type"], "authentication_error");
    assert!(w.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(w.www_authenticate, challenge);
}

#[then("/health and /metrics answer without a key")]
async fn open_endpoints(w: &mut RbeeWorld) {
    for path in ["/health", "/metrics"] {
        let response = rbee_features::http().get(format!("{}{path}", w.cluster().queen_url)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
}

#[when(regex = r"^a queen is started with --no-auth on (\S+)$")]
async fn queen_no_auth(w: &mut RbeeWorld, host: String) {
    let port = rbee_local::process::free_port().unwrap();
    let dir = rbee_features::scratch_dir("queen");
    w.dl.scratch.push(dir.clone());
    let log = dir.join("queen.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(rbee_features::bin("rbee-queen"))
        .args(["--no-auth", "--bind", &format!("{host}:{port}")])
        .envs(w.cluster().queen_env())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("rbee-queen starts");
    w.second_queen = format!("http://127.0.0.1:{port}");
    w.queen_log = log;
    w.children.push(child);
}

#[then(expr = "it exits with code {int} naming {string} and {string}")]
async fn queen_exits(w: &mut RbeeWorld, code: i32, first: String, second: String) {
    let child = w.children.last_mut().expect("a queen");
    let status = eventually("the queen exits", DEADLINE, || {
        let exited = child.try_wait().ok().flatten();
        async move { exited.ok_or(()) }
    })
    .await;
    assert_eq!(status.code(), Some(code));
    let log = std::fs::read_to_string(&w.queen_log).unwrap();
    assert!(log.contains(&first) && log.contains(&second), "{log}");
}

#[then("it answers a chat completion without a key and its log says it runs without API keys")]
async fn no_auth_queen_serves(w: &mut RbeeWorld) {
    let url = w.second_queen.clone();
    let health = format!("{url}/health");
    eventually("the queen answers", DEADLINE, || async { reqwest::get(&health).await.map(|_| ()) }).await;
    let response = chat(&url, None, "Say hi.", 3, false).await;
    assert_eq!(response.status().as_u16(), 200);
    let log = std::fs::read_to_string(&w.queen_log).unwrap();
    assert!(log.contains("--no-auth"), "{log}");
}

#[given(expr = "I made an API key {string} with rbee keys create")]
#[when(expr = "I create an API key named {string} with rbee keys create")]
fn made_key(w: &mut RbeeWorld, name: String) {
    w.make_key(&name, &[]);
}

#[given(expr = "I made an API key {string} allowing {int} requests per minute")]
fn made_limited_key(w: &mut RbeeWorld, name: String, rpm: u32) {
    w.make_key(&name, &["--requests-per-minute", &rpm.to_string()]);
}

#[given(expr = "both queens answer a chat completion with the key {string}")]
#[then(expr = "both queens answer a chat completion with the key {string}")]
async fn both_answer(w: &mut RbeeWorld, name: String) {
    let key = w.key(&name);
    for url in w.both_queens() {
        // The queen learns of a new key from the log; it may take a moment to read it.
        eventually("the queen accepts the key", DEADLINE, || {
            let (url, key) = (url.clone(), key.clone());
            async move {
                let status = chat(&url, Some(&key), "Say hi.", 2, false).await.status().as_u16();
                if status == 200 { Ok(()) } else { Err(status) }
            }
        })
        .await;
    }
}

#[when(expr = "I make an API key {string} and revoke the key {string} with rbee keys")]
fn rotate(w: &mut RbeeWorld, new: String, old: String) {
    w.make_key(&new, &[]);
    let out = w.cluster().rbee(&["keys", "list", "--json"]);
    let keys: Value = serde_json::from_slice(&out.stdout).expect("keys JSON");
    let id = keys.as_array().unwrap().iter().find(|k| k["name"] == old.as_str()).expect("the old key")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = w.cluster().rbee(&["keys", "revoke", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    w.revoked_at = Some(std::time::Instant::now());
}

#[then(expr = "within {int} second both queens refuse the key {string} with code {string}")]
async fn refused_within(w: &mut RbeeWorld, secs: u64, name: String, code: String) {
    let key = w.key(&name);
    let deadline = w.revoked_at.expect("a revocation") + Duration::from_secs(secs);
    for url in w.both_queens() {
        let refused = loop {
            let response = chat(&url, Some(&key), "Say hi.", 2, false).await;
            if response.status().as_u16() == 401 {
                break response.json::<Value>().await.unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "{url} still accepts the revoked key after {secs} s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(refused["error"]["code"], code.as_str());
    }
}

#[then(expr = "rbee keys list shows {string} revoked and {string} active, with fingerprints and no secret")]
fn keys_listed(w: &mut RbeeWorld, revoked: String, active: String) {
    let out = w.cluster().rbee(&["keys", "list", "--json"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for (_, secret) in &w.api_keys {
        assert!(!text.contains(secret.as_str()), "no secret is listed");
    }
    let keys: Value = serde_json::from_str(&text).unwrap();
    let find = |name: &str| keys.as_array().unwrap().iter().find(|k| k["name"] == name).cloned().unwrap();
    assert_eq!(find(&revoked)["revoked"], true);
    assert_eq!(find(&active)["revoked"], false);
    assert_eq!(find(&active)["fingerprint"].as_str().map(str::len), Some(12));
}

#[when(expr = "I ask {int} times with the key {string}")]
async fn ask_n_times(w: &mut RbeeWorld, n: usize, name: String) {
    let key = w.key(&name);
    let url = w.cluster().queen_url.clone();
    // The queen folds the key's creation before it can judge it.
    until_known(&url, &key).await;
    w.batch.clear();
    for _ in 0..n {
        let response = chat(&url, Some(&key), "Say hi.", 2, false).await;
        let status = response.status().as_u16();
        let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        w.batch.push((status, retry, response.json().await.unwrap_or(Value::Null)));
        // The next request is judged on a log that holds this one's acceptance.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[then(expr = "the first {int} are answered and the third is HTTP {int} with code {string} and a Retry-After")]
fn third_limited(w: &mut RbeeWorld, answered: usize, status: u16, code: String) {
    for (s, _, body) in &w.batch[..answered] {
        assert_eq!(*s, 200, "{body}");
    }
    let (s, retry, body) = &w.batch[answered];
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["error"]["code"], code.as_str());
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let secs: u64 = retry.parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
}

#[then(expr = "a chat completion with the key {string} is answered")]
async fn other_key_answered(w: &mut RbeeWorld, name: String) {
    let key = w.key(&name);
    let url = w.cluster().queen_url.clone();
    eventually("the other key is served", DEADLINE, || async {
        let s = chat(&url, Some(&key), "Say hi.", 2, false).await.status().as_u16();
        if s == 200 { Ok(()) } else { Err(s) }
    })
    .await;
}

#[when(expr = "the key {string} streams {string} with max_tokens {int}")]
async fn key_streams(w: &mut RbeeWorld, name: String, prompt: String, max_tokens: u32) {
    let key = w.key(&name);
    let url = w.cluster().queen_url.clone();
    until_known(&url, &key).await;
    let response = chat(&url, Some(&key), &prompt, max_tokens, true).await;
    assert_eq!(response.status().as_u16(), 200);
    let (id, received) = super::follow_stream(response);
    w.request_id = id.clone();
    w.streams.push((id, received));
}

#[when(expr = "the key {string} sends DELETE for that request")]
async fn key_deletes(w: &mut RbeeWorld, name: String) {
    let key = w.key(&name);
    let url = format!("{}/v1/requests/{}", w.cluster().queen_url, w.request_id);
    // Once the request is recorded as accepted, so the answer is about ownership, not existence.
    let id = w.request_id.clone();
    w.one_event("request.accepted", "request", &id).await;
    let response = rbee_features::http().delete(url).bearer_auth(&key).send().await.unwrap();
    w.record(response).await;
}

#[then(expr = "mallory gets HTTP {int} with code {string}")]
fn mallory_refused(w: &mut RbeeWorld, status: u16, code: String) {
    assert_eq!(w.status, status, "{}", w.body);
    assert_eq!(w.body["error"]["code"], code.as_str());
}

#[then("the request's stream runs to its end, not cancelled")]
async fn stream_ends(w: &mut RbeeWorld) {
    let (_, received) = w.streams.last().cloned().expect("a stream");
    let text = eventually("the stream ends", Duration::from_secs(120), || {
        let (text, done) = received.lock().unwrap().clone();
        async move { if done { Ok(text) } else { Err(()) } }
    })
    .await;
    let ended = ["stop", "length"].iter().any(|r| text.contains(&format!("\"finish_reason\":\"{r}\"")));
    assert!(ended && text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[then(expr = "the log records that request as made by the key {string} and never cancelled")]
fn recorded_owner(w: &mut RbeeWorld, name: String) {
    let out = w.cluster().rbee(&["keys", "list", "--json"]);
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = keys.as_array().unwrap().iter().find(|k| k["name"] == name.as_str()).unwrap()["id"].clone();
    let events = w.cluster().events(false);
    let mine: Vec<&Value> = events.iter().filter(|e| e["data"]["request"] == w.request_id.as_str()).collect();
    let accepted = mine.iter().find(|e| e["type"] == "request.accepted").expect("request.accepted");
    assert_eq!(accepted["data"]["key"], id);
    assert!(mine.iter().all(|e| e["type"] != "request.cancelled"), "{mine:?}");
}

#[when(expr = "I post a chat completion with the cluster's key as {string}")]
async fn post_as(w: &mut RbeeWorld, content_type: String) {
    w.counts_before = w.count_events(&["slot.claimed"]);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2});
    let response = w
        .cluster()
        .http()
        .post(format!("{}/v1/chat/completions", w.cluster().queen_url))
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    w.record(response).await;
}

#[then(expr = "the response is HTTP {int} with code {string} and no slot was claimed for it")]
fn refused_media_type(w: &mut RbeeWorld, status: u16, code: String) {
    assert_eq!(w.status, status, "{}", w.body);
    assert_eq!(w.body["error"]["code"], code.as_str());
    assert_eq!(w.count_events(&["slot.claimed"]), w.counts_before, "nothing ran");
}

#[given(expr = "a second queen on it with RBEE_HEADER_TIMEOUT_SECS={int} and RBEE_MAX_CONNECTIONS_PER_CLIENT={int}")]
async fn queen_with_limits(w: &mut RbeeWorld, timeout: u64, max: usize) {
    let env = [
        ("RBEE_HEADER_TIMEOUT_SECS".to_string(), timeout.to_string()),
        ("RBEE_MAX_CONNECTIONS_PER_CLIENT".to_string(), max.to_string()),
    ];
    w.second_queen = w.start_queen_with(false, &env).await;
}

fn queen_address(w: &RbeeWorld) -> String {
    w.second_queen.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes; the bytes it sent and how long it took (None: still open at `limit`).
async fn until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Some(started.elapsed())),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (received, None),
        }
    }
}

#[when("a client sends that queen half of a request's headers and waits")]
async fn trickle_headers(w: &mut RbeeWorld) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(queen_address(w)).await.unwrap();
    stream.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty").await.unwrap();
    let (received, closed_after) = until_closed(&mut stream, Duration::from_secs(3)).await;
    w.slow_client = Some((received, closed_after));
}

#[then("that queen closes the connection within 3 seconds, having answered nothing")]
fn slow_client_cut(w: &mut RbeeWorld) {
    let (received, closed_after) = w.slow_client.take().expect("a slow client");
    assert!(closed_after.is_some(), "the connection is still open after 3 s");
    let text = String::from_utf8_lossy(&received);
    assert!(!text.contains("200 OK"), "{text}");
}

#[when(expr = "a client opens {int} connections to that queen and then a fourth")]
async fn hoard_connections(w: &mut RbeeWorld, n: usize) {
    let address = queen_address(w);
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    // The queen counts a connection once it accepts it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (_, closed_after) = until_closed(&mut fourth, Duration::from_millis(500)).await;
    let mut first_open = true;
    for stream in &mut held {
        let (_, closed) = until_closed(stream, Duration::from_millis(50)).await;
        first_open &= closed.is_none();
    }
    w.hoarded = Some((closed_after, first_open));
}

#[then(expr = "the fourth is closed at once while the first {int} stay open")]
fn fourth_refused(w: &mut RbeeWorld, _n: usize) {
    let (closed_after, first_open) = w.hoarded.take().expect("connections were opened");
    assert!(closed_after.is_some(), "the fourth connection was kept");
    assert!(first_open, "the first connections were closed too early");
}

#[then("once they are gone that queen answers a chat completion")]
async fn limited_queen_serves(w: &mut RbeeWorld) {
    let url = w.second_queen.clone();
    let key = w.cluster().api_key.clone();
    eventually("the queen serves again", DEADLINE, || async {
        let s = chat(&url, Some(&key), "Say hi.", 2, false).await.status().as_u16();
        if s == 200 { Ok(()) } else { Err(s) }
    })
    .await;
}

#[given(expr = "a second queen on it with RBEE_CORS_ORIGINS={word}")]
async fn queen_with_cors(w: &mut RbeeWorld, origins: String) {
    w.second_queen = w.start_queen_with(false, &[("RBEE_CORS_ORIGINS".to_string(), origins)]).await;
}

async fn preflight(url: &str, origin: &str) -> reqwest::Response {
    rbee_features::http()
        .request(reqwest::Method::OPTIONS, format!("{url}/v1/chat/completions"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap()
}

#[then(expr = "a browser's preflight from {string} is allowed by neither queen")]
async fn preflight_refused(w: &mut RbeeWorld, origin: String) {
    for url in [w.cluster().queen_url.clone(), w.second_queen.clone()] {
        let response = preflight(&url, &origin).await;
        assert!(response.headers().get("access-control-allow-origin").is_none(), "{url}: {:?}", response.headers());
    }
}

#[then(
    expr = "a browser's preflight from {string} is allowed by the second queen for POST with authorization and content-type"
)]
async fn preflight_allowed(w: &mut RbeeWorld, origin: String) {
    let response = preflight(&w.second_queen, &origin).await;
    let h = response.headers();
    assert_eq!(h.get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some(origin.as_str()));
    let methods = h.get("access-control-allow-methods").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let headers = h.get("access-control-allow-headers").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(methods.contains("POST") && headers.contains("authorization") && headers.contains("content-type"));
}

#[then(
    expr = "a chat completion from {string} with the cluster's key is answered with Access-Control-Allow-Origin {string}"
)]
async fn cors_answer(w: &mut RbeeWorld, origin: String, expected: String) {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2});
    let response = w
        .cluster()
        .http()
        .post(format!("{}/v1/chat/completions", w.second_queen))
        .header("origin", &origin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some(expected.as_str())
    );
}
