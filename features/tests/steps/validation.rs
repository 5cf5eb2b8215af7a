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
    let response = w
        .cluster()
        .http()
        .post(format!("{}/v1/chat/completions", w.cluster().queen_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    w.status = response.status().as_u16();
    w.body = response.json().await.unwrap_or(Value::Null);
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
    let response = w
        .cluster()
        .http()
        .post(format!("{}/v1/chat/completions", w.cluster().queen_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    w.status = response.status().as_u16();
    w.body = response.json().await.unwrap_or(Value::Null);
}
