//! `rbee infer "prompt"`: streams a chat completion to the terminal. Ctrl+C cancels the request
//! on the cluster (`DELETE /v1/requests/{id}`) and exits 130.

use rbee_bus::Code;
use std::io::Write;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::error::{CliError, CliResult};

#[derive(Debug, Clone, clap::Args)]
pub struct InferArgs {
    /// What to ask.
    pub prompt: String,
    /// Model name.
    #[arg(long, env = "RBEE_MODEL_NAME", default_value = rbee_local::model::DEFAULT_MODEL)]
    pub model: String,
    /// System prompt (default: the model's own).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long)]
    pub max_tokens: Option<u32>,
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Send a prompt that carries chat-template control text (`<|im_start|>`, `[INST]`, ...)
    /// without asking; otherwise the CLI asks on a terminal and refuses elsewhere.
    #[arg(long, env = "RBEE_ALLOW_CONTROL_TEXT")]
    pub allow_control_text: bool,
    /// The API key (default: the one `rbee up` made, in <data-dir>/api-key).
    #[arg(long, env = "RBEE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// A prompt that carries chat-template control text may be trying to speak as the system: sent
/// only when allowed, or confirmed on a terminal.
fn confirm_control_text(args: &InferArgs) -> CliResult<()> {
    use std::io::{BufRead, IsTerminal};
    let markers = rbee_bus::prompt::control_markers(&args.prompt);
    if markers.is_empty() || args.allow_control_text {
        return Ok(());
    }
    let what = format!("the prompt carries chat-template control text ({})", markers.join(" "));
    if !std::io::stdin().is_terminal() {
        return Err(CliError::new(
            Code::InvalidArgument,
            format!("{what}, which may try to speak as the system; pass --allow-control-text to send it"),
        ));
    }
    eprint!("{what}, which may try to speak as the system. Send it anyway? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if answer.trim().eq_ignore_ascii_case("y") { Ok(()) } else { Err(CliError::new(Code::InvalidArgument, "not sent")) }
}

pub async fn infer(args: InferArgs, queen_url: &str, data_dir: &std::path::Path) -> CliResult<()> {
    confirm_control_text(&args)?;
    let key = args
        .api_key
        .clone()
        .or_else(|| std::fs::read_to_string(crate::keys::local_key_file(data_dir)).ok().map(|k| k.trim().to_string()));
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": args.prompt}));
    let mut body = json!({"model": args.model, "messages": messages, "stream": true});
    for (key, value) in [
        ("max_tokens", args.max_tokens.map(Value::from)),
        ("temperature", args.temperature.map(Value::from)),
        ("seed", args.seed.map(Value::from)),
    ] {
        if let Some(v) = value {
            body[key] = v;
        }
    }
    rbee_runtime::use_ring_for_tls();
    let client = reqwest::Client::new();
    let bearer = |r: reqwest::RequestBuilder| match &key {
        Some(k) => r.bearer_auth(k),
        None => r,
    };
    let response =
        bearer(client.post(format!("{queen_url}/v1/chat/completions"))).json(&body).send().await.map_err(|e| {
            CliError::new(
                Code::QueenUnreachable,
                format!("cannot reach the queen at {queen_url}: {e}; is the cluster up (rbee up)?"),
            )
        })?;
    let request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    if !response.status().is_success() {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        return Err(api_error(status.as_u16(), &body));
    }
    let streamed = print_stream(response);
    tokio::select! {
        result = streamed => result,
        _ = tokio::signal::ctrl_c() => {
            if let Some(id) = request_id {
                let _ = bearer(client.delete(format!("{queen_url}/v1/requests/{id}"))).send().await;
                eprintln!("\ncancelled request {id}");
            }
            Err(CliError::interrupted())
        }
    }
}

fn api_error(status: u16, body: &Value) -> CliError {
    // A queen of another version may answer with a code this CLI does not know: HTTP_ERROR then.
    let code = body["error"]["code"].as_str().and_then(Code::parse).unwrap_or(Code::HttpError);
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("the queen answered HTTP {status}"));
    CliError::new(code, message)
}

/// Prints SSE deltas as they arrive; ends at `data: [DONE]`.
async fn print_stream(response: reqwest::Response) -> CliResult<()> {
    let mut bytes = response.bytes_stream();
    // Bytes, not text: a chunk boundary may fall inside a UTF-8 character.
    let mut buffer: Vec<u8> = Vec::new();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.map_err(|e| CliError::new(Code::StreamBroken, format!("the stream broke: {e}")))?;
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = buffer.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&raw);
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    println!();
                    return Ok(());
                }
                let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                if value.get("error").is_some() {
                    println!();
                    return Err(api_error(200, &value));
                }
                if let Some(text) = value["choices"][0]["delta"]["content"].as_str() {
                    print!("{text}");
                    let _ = stdout.flush();
                }
            }
        }
    }
    Err(CliError::new(Code::StreamBroken, "the stream ended before [DONE]"))
}
