//! Steps of validation.feature: malformed names and bodies, refused before they are used.

use cucumber::{then, when};
use serde_json::{Value, json};

use super::{MODEL, RbeeWorld};

/// `<BEL>`, `<TAB>` and `<ESC>` in a feature file become the control characters they name.
fn unescape(s: &str) -> String {
    s.replace("<BEL>", "\u{7}").replace("<TAB>", "\t").replace("<ESC>", "\u{1b}")
}

#[when(expr = "I run rbee with {string} and the name {string}")]
fn run_with_name(w: &mut RbeeWorld, args: String, name: String) {
    let name = unescape(&name);
    let mut all: Vec<String> = args.split_whitespace().map(String::from).collect();
    all.push(name);
    if all[0] == "workers" {
        all.extend(["--timeout-secs".into(), "5".into()]);
    }
    let out = w.cluster().rbee(&all.iter().map(String::as_str).collect::<Vec<_>>());
    w.output = Some(out);
}

#[then(expr = "it exits with code {int} and {string}, naming the field {string} and the rule")]
fn exits_naming(w: &mut RbeeWorld, code: i32, error: String, field: String) {
    let out = w.output.as_ref().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(&format!("error[{error}]")), "{stderr}");
    assert!(stderr.contains(&format!("invalid {field}")), "names the field: {stderr}");
    assert!(stderr.contains("must be"), "says the rule: {stderr}");
}

#[then("the output holds no raw control character")]
fn no_control_characters(w: &mut RbeeWorld) {
    let out = w.output.as_ref().unwrap();
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
    }
}

#[then("the log holds no more events than noted")]
fn log_unchanged(w: &mut RbeeWorld) {
    assert_eq!(w.cluster().events(false).len(), w.attempt.events_before);
}

#[when(expr = "I ask for the model {string} with the cluster's key")]
async fn ask_bad_model(w: &mut RbeeWorld, model: String) {
    let body = json!({"model": unescape(&model), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let response = w.post_chat_body(&body).await;
    w.record(response).await;
}

#[then(expr = "the response is HTTP {int} with code {string} for the parameter {string}, echoing no control character")]
fn bad_request(w: &mut RbeeWorld, status: u16, code: String, param: String) {
    assert_eq!(w.status, status, "{}", w.body);
    assert_eq!(w.body["error"]["code"], code.as_str());
    assert_eq!(w.body["error"]["param"], param.as_str());
    let message = w.body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.chars().any(char::is_control), "{message:?}");
}

#[when(expr = "I send a chat request of {int} MiB with the cluster's key")]
async fn huge_request(w: &mut RbeeWorld, mib: usize) {
    w.counts_before = w.count_events(&["slot.claimed"]);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(mib << 20)}]});
    let response = w.post_chat_body(&body).await;
    w.record(response).await;
}

#[when(expr = "I ask for {int} completions of the default model in one request with the cluster's key")]
async fn ask_several(w: &mut RbeeWorld, n: u32) {
    w.counts_before = w.count_events(&["slot.claimed"]);
    let body = json!({"model": MODEL, "n": n, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]});
    let response = w.post_chat_body(&body).await;
    w.record(response).await;
}

#[then(expr = "the error names the parameter {string} and suggests splitting it into {int} requests")]
fn suggests_split(w: &mut RbeeWorld, param: String, n: u32) {
    assert_eq!(w.body["error"]["param"], param.as_str(), "{}", w.body);
    let message = w.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("split it into {n} requests")), "{message}");
}

/// Request bodies to mutate: valid ones that ask for one token, so the mutations that stay
/// valid finish at once.
fn chat_corpus() -> Vec<Vec<u8>> {
    [
        json!({"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}),
        json!({"model": MODEL, "max_tokens": 1, "stream": true, "temperature": 0.5, "seed": 3,
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Où? 😀"}]}),
        json!({"model": MODEL, "max_tokens": 1, "top_p": 0.9, "top_k": 4, "messages": [{"role": "user", "content": ""}]}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

#[when(expr = "{int} mutated chat request bodies are posted to the queen with the cluster's key")]
async fn fuzz_queen(w: &mut RbeeWorld, n: usize) {
    let corpus = chat_corpus();
    let mut mutator = rbee_bus::fuzz::Mutator::new(0x5eed_0006);
    let client = w.cluster().http();
    let url = format!("{}/v1/chat/completions", w.cluster().queen_url);
    w.batch.clear();
    for _ in 0..n {
        let body = mutator.input(&corpus);
        let response =
            client.post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        w.batch.push((status, String::from_utf8_lossy(&body).into_owned(), Value::String(text)));
    }
}

#[then("each is answered with a 4xx OpenAI-shaped error or a completion, and the queen still reports healthy")]
async fn fuzz_answers(w: &mut RbeeWorld) {
    for (status, body, answer) in &w.batch {
        let text = answer.as_str().unwrap_or_default();
        match status {
            200 => assert!(text.contains("chat.completion"), "{body:?} -> {text}"),
            400..=499 => {
                let error: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("{body:?} -> {text}"));
                assert!(error["error"]["code"].is_string() && error["error"]["message"].is_string(), "{text}");
            }
            other => panic!("{body:?} -> {other} {text}"),
        }
    }
    let health: Value = reqwest::get(format!("{}/health", w.cluster().queen_url)).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
}

#[when(expr = "the admin publishes {int} mutated event bodies on a subject of their own")]
async fn fuzz_log(w: &mut RbeeWorld, n: usize) {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bus/tests/fixtures/schema5");
    let corpus: Vec<Vec<u8>> = std::fs::read_dir(fixtures)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    let mut mutator = rbee_bus::fuzz::Mutator::new(0x5eed_0007);
    let js = async_nats::jetstream::new(w.cluster().admin_client().await);
    for i in 0..n {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Rbee-Event", "fuzz");
        headers.insert("Rbee-Schema", "5");
        headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
        let body = mutator.input(&corpus);
        js.publish_with_headers(format!("rbee.ev.fuzz.f{i}"), headers, body.into()).await.unwrap().await.unwrap();
    }
}

#[then("the queen, the hive and rbee events tail report them as undecodable and go on")]
async fn fuzz_reported(w: &mut RbeeWorld) {
    let c = w.cluster();
    let tail = c.rbee(&["events", "tail", "--no-follow", "--no-heartbeats"]);
    assert!(tail.status.success());
    assert!(String::from_utf8_lossy(&tail.stderr).contains("undecodable event"));
    for log in ["queen.log", "hive.log"] {
        rbee_features::poll::eventually("the process reports skipped events", super::DEADLINE, || async {
            let text = c.log_file(log);
            if text.contains("cannot be decoded") || text.contains(rbee_bus::Code::ForgedEvent.as_str()) {
                Ok(())
            } else {
                Err(())
            }
        })
        .await;
    }
}

#[when(expr = "I ask the queen with the cluster's key, in a user message, {string}")]
async fn ask_smuggled(w: &mut RbeeWorld, prompt: String) {
    let prompt = prompt.replace("\\n", "\n");
    w.counts_before = w.count_events(&["request.accepted"]);
    let body = json!({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": prompt.clone()}]});
    let response = w.post_chat_body(&body).await;
    w.status = response.status().as_u16();
    w.warnings_header =
        response.headers().get("x-rbee-warnings").and_then(|v| v.to_str().ok()).unwrap_or_default().into();
    w.body = response.json().await.unwrap_or(Value::Null);
    w.prompt = prompt;
}

#[then(expr = "it is answered, with the header x-rbee-warnings naming {string} and {string}")]
fn flagged(w: &mut RbeeWorld, first: String, second: String) {
    assert_eq!(w.status, 200, "{}", w.body);
    let header = &w.warnings_header;
    assert!(header.contains(&first) && header.contains(&second) && header.contains("message 0 (user)"), "{header}");
}

#[then("the queen's log warns of the suspicious prompt")]
async fn queen_warns(w: &mut RbeeWorld) {
    let c = w.cluster();
    rbee_features::poll::eventually("the queen logs the warning", super::DEADLINE, || async {
        if c.log_file("queen.log").contains("suspicious prompt served") { Ok(()) } else { Err(()) }
    })
    .await;
}

#[when("I run rbee infer with that prompt, without a terminal")]
fn infer_without_tty(w: &mut RbeeWorld) {
    w.counts_before = w.count_events(&["request.accepted"]);
    let prompt = w.prompt.clone();
    let out = w.cluster().rbee_command_for(&["infer", &prompt]).stdin(std::process::Stdio::null()).output().unwrap();
    w.output = Some(out);
}

#[then(expr = "it exits with code 1 naming {string}, and nothing was asked of the queen")]
fn infer_refused(w: &mut RbeeWorld, flag: String) {
    let out = w.output.as_ref().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&flag) && stderr.contains("<|im_start|>"), "{stderr}");
    assert_eq!(w.count_events(&["request.accepted"]), w.counts_before, "no request was made");
}

#[when("I run rbee infer with that prompt and --allow-control-text")]
fn infer_allowed(w: &mut RbeeWorld) {
    let prompt = w.prompt.clone();
    let args = ["infer", "--allow-control-text", "--max-tokens", "4", prompt.as_str()];
    let out = w.cluster().rbee_command_for(&args).stdin(std::process::Stdio::null()).output().unwrap();
    w.output = Some(out);
}

#[then("it exits with code 0 and prints an answer")]
fn infer_answered(w: &mut RbeeWorld) {
    let out = w.output.as_ref().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
}
