//! Parsing an OpenAI chat completion body into a [`ValidatedChat`]: every field checked once at the
//! edge, errors naming the field, the rule and the value.

use rbee_bus::frames::{ChatMessage, Sampling};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// The subset of the OpenAI request rbee acts on; unknown fields are ignored, as OpenAI does.
#[derive(Debug, Deserialize)]
struct RawChat {
    model: Option<Value>,
    messages: Option<Value>,
    max_tokens: Option<Value>,
    max_completion_tokens: Option<Value>,
    temperature: Option<Value>,
    top_p: Option<Value>,
    top_k: Option<Value>,
    seed: Option<Value>,
    stream: Option<Value>,
    n: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedChat {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub sampling: Sampling,
    pub stream: bool,
    /// What the request carries that it probably should not (served anyway, flagged to the client
    /// in `x-rbee-warnings` and in the queen's log).
    pub warnings: Vec<String>,
}

/// A warning for every message other than the system's that carries chat-template control text.
fn smuggling_warnings(messages: &[ChatMessage]) -> Vec<String> {
    messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role != "system")
        .filter_map(|(i, m)| {
            let markers = rbee_bus::prompt::control_markers(&m.content);
            (!markers.is_empty()).then(|| {
                format!(
                    "message {i} ({}) carries chat-template control text {}: it may try to speak as the system",
                    m.role,
                    markers.join(" ")
                )
            })
        })
        .collect()
}

const MAX_MESSAGES: usize = 1024;

pub fn parse(body: &[u8]) -> Result<ValidatedChat, ApiError> {
    let raw: RawChat = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid("body", format!("request body is not a JSON object of the chat completions API: {e}"))
    })?;
    let model = match raw.model {
        Some(Value::String(m)) => m,
        Some(_) => return Err(ApiError::invalid("model", "model must be a string")),
        None => return Err(ApiError::invalid("model", "model is required")),
    };
    if let Err(e) = rbee_bus::subjects::validate_name("model", &model) {
        return Err(ApiError::invalid("model", e.to_string()));
    }
    let messages = parse_messages(raw.messages)?;
    let max_tokens = match (raw.max_completion_tokens, raw.max_tokens) {
        (Some(v), _) | (None, Some(v)) if !v.is_null() => Some(uint("max_tokens", &v, 1, u32::MAX as u64)? as u32),
        _ => None,
    };
    let temperature = opt_number("temperature", raw.temperature, 0.0, 2.0)?;
    let top_p = opt_number("top_p", raw.top_p, 0.0, 1.0)?;
    if top_p == Some(0.0) {
        return Err(ApiError::invalid("top_p", "top_p must be greater than 0 and at most 1, got 0"));
    }
    let top_k =
        raw.top_k.filter(|v| !v.is_null()).map(|v| uint("top_k", &v, 1, 1_000_000)).transpose()?.map(|k| k as u32);
    let seed = raw.seed.filter(|v| !v.is_null()).map(|v| uint("seed", &v, 0, u64::MAX)).transpose()?;
    let stream = match raw.stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(ApiError::invalid("stream", format!("stream must be true or false, got {}", short(&other))));
        }
    };
    if let Some(n) = raw.n.filter(|v| !v.is_null())
        && let n = uint("n", &n, 1, u64::from(u32::MAX))?
        && n > 1
    {
        return Err(ApiError::invalid(
            "n",
            format!(
                "n = {n}: a request returns one completion; split it into {n} requests, which the workers \
                 run side by side on their slots"
            ),
        ));
    }
    let warnings = smuggling_warnings(&messages);
    Ok(ValidatedChat {
        model,
        messages,
        max_tokens,
        sampling: Sampling { temperature, top_p, top_k, seed },
        stream,
        warnings,
    })
}

fn parse_messages(value: Option<Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(Value::Array(items)) = value else {
        return Err(ApiError::invalid("messages", "messages must be a non-empty array"));
    };
    if items.is_empty() || items.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(
            "messages",
            format!("messages must hold 1 to {MAX_MESSAGES} messages, got {}", items.len()),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let role = match item.get("role") {
                Some(Value::String(r)) if ["system", "user", "assistant", "developer"].contains(&r.as_str()) => {
                    if r == "developer" { "system".to_string() } else { r.clone() }
                }
                other => {
                    let got = other.map(short).unwrap_or_else(|| "nothing".into());
                    return Err(ApiError::invalid(
                        "messages",
                        format!("messages[{i}].role must be system, user or assistant, got {got}"),
                    ));
                }
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => s.clone(),
                // The array form: concatenate its text parts.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type"), p.get("text")) {
                        (Some(Value::String(t)), Some(Value::String(text))) if t == "text" => Ok(text.as_str()),
                        _ => Err(ApiError::invalid(
                            "messages",
                            format!("messages[{i}].content: only text parts are supported"),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                _ => return Err(ApiError::invalid("messages", format!("messages[{i}].content must be a string"))),
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

fn uint(field: &'static str, v: &Value, min: u64, max: u64) -> Result<u64, ApiError> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(field, format!("{field} must be an integer from {min} to {max}, got {}", short(v)))),
    }
}

fn opt_number(field: &'static str, v: Option<Value>, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                field,
                format!("{field} must be a number from {min} to {max}, got {}", short(&v)),
            )),
        },
    }
}

/// A value for an error message: short, and with control characters escaped by JSON.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 { format!("{}...", s.chars().take(60).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn a_plain_request_is_accepted() {
        let chat = parse(&body(serde_json::json!({
            "model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 5, "stream": true, "temperature": 0.7, "seed": 7, "user": "ignored"
        })))
        .unwrap();
        assert_eq!(chat.max_tokens, Some(5));
        assert!(chat.stream);
        assert_eq!(chat.sampling.seed, Some(7));
        assert_eq!(chat.messages[0].content, "Hi");
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (serde_json::json!({"messages": [{"role": "user", "content": "x"}]}), "model"),
            (serde_json::json!({"model": "../etc", "messages": [{"role": "user", "content": "x"}]}), "model"),
            (serde_json::json!({"model": "m", "messages": []}), "messages"),
            (serde_json::json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}), "messages"),
            (
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                "max_tokens",
            ),
            (
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}),
                "max_tokens",
            ),
            (
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 9}),
                "temperature",
            ),
            (
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
                "stream",
            ),
            (serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}), "n"),
        ];
        for (v, field) in cases {
            let err = parse(&body(v.clone())).unwrap_err();
            assert_eq!(err.param, Some(field), "{v}");
            assert_eq!(err.status().as_u16(), 400);
        }
    }

    #[test]
    fn garbage_bodies_are_400_not_panics() {
        for raw in [&b""[..], b"{", b"[]", b"null", b"\xff\xfe", b"{\"model\": {\"a\": 1}}"] {
            assert_eq!(parse(raw).unwrap_err().status().as_u16(), 400);
        }
    }
}
