//! Errors as OpenAI clients expect them: `{"error":{"message","type","param","code"}}` with the
//! matching HTTP status, and a stable code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    /// Seconds, for 503/429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), param: None, retry_after: None }
    }

    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError { param: Some(param), ..Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message) }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            param: Some("model"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "MODEL_NOT_FOUND",
                format!("model {model} is not served by this cluster; GET /v1/models lists the ones that are"),
            )
        }
    }

    pub fn log_unavailable(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "EVENT_LOG_UNAVAILABLE",
            format!("the event log is unavailable: {e}"),
        )
        .retry_after(1)
    }

    /// The status a worker's refusal code maps to.
    pub fn from_worker(code: &str, message: String) -> Self {
        let (status, code): (StatusCode, &'static str) = match code {
            "CONTEXT_LENGTH_EXCEEDED" => (StatusCode::BAD_REQUEST, "CONTEXT_LENGTH_EXCEEDED"),
            "INVALID_CHAT" => (StatusCode::BAD_REQUEST, "INVALID_CHAT"),
            "WORKER_ALREADY_BUSY" => (StatusCode::SERVICE_UNAVAILABLE, "WORKER_ALREADY_BUSY"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "INFERENCE_FAILED"),
        };
        let e = Self::new(status, code, message);
        if status == StatusCode::SERVICE_UNAVAILABLE { e.retry_after(1) } else { e }
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
