//! Errors as OpenAI clients expect them: `{"error":{"message","type","param","code"}}` with the
//! matching HTTP status, and a stable code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rbee_bus::Code;
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub param: Option<&'static str>,
    /// Seconds, for 503/429.
    pub retry_after: Option<u64>,
    /// The text generated before the failure, when there is some (`GENERATION_TIMEOUT`).
    pub partial_content: Option<String>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), param: None, retry_after: None, partial_content: None }
    }

    /// The HTTP status, as the catalogue gives it for the code.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError { param: Some(param), ..Self::new(Code::InvalidRequest, message) }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            param: Some("model"),
            ..Self::new(
                Code::ModelNotFound,
                format!("model {model} is not served by this cluster; GET /v1/models lists the ones that are"),
            )
        }
    }

    pub fn log_unavailable(e: impl std::fmt::Display) -> Self {
        Self::new(Code::EventLogUnavailable, format!("the event log is unavailable: {e}")).retry_after(1)
    }

    /// A worker's refusal or failure as the client sees it: what the client can act on keeps its
    /// code, anything else is the worker's failure.
    pub fn from_worker(code: Code, message: String) -> Self {
        match code {
            Code::ContextLengthExceeded | Code::InvalidChat | Code::GenerationTimeout | Code::StreamAbandoned => {
                Self::new(code, message)
            }
            Code::WorkerAlreadyBusy => Self::new(code, message).retry_after(1),
            _ => Self::new(Code::InferenceFailed, message),
        }
    }

    fn kind(&self) -> &'static str {
        match self.code.http_status() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut body =
            json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}});
        if let Some(text) = &self.partial_content {
            body["error"]["partial_content"] = json!(text);
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
