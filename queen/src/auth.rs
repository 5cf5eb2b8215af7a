//! Who is calling: every `/v1` route needs `Authorization: Bearer <key>`, a key of the keys
//! projection that is not revoked. The key's id travels with the request (it is recorded in
//! `request.accepted`); its limits are checked against what the log says the key used lately,
//! which counts the requests of every queen.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rbee_bus::Code;
use rbee_projections::keys::WINDOW_MS;

use crate::AppState;
use crate::error::ApiError;

/// The caller of a request: the id of its API key (None when the queen runs with `--no-auth`).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub key: Option<String>,
}

/// Middleware on `/v1`: turns the bearer token into a [`Caller`], or answers 401.
pub async fn require_key(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    if state.config.get().no_auth {
        request.extensions_mut().insert(Caller::default());
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refused = |code, message: &str| {
        let mut response = ApiError::new(code, message).into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return refused(Code::MissingApiKey, "send the API key as `Authorization: Bearer <key>`");
    };
    let Some(key) = state.view.read(|v| v.keys.authenticate(token).map(|k| k.id.clone())) else {
        return refused(Code::InvalidApiKey, "the API key is unknown or revoked");
    };
    request.extensions_mut().insert(Caller { key: Some(key) });
    next.run(request).await
}

/// Whether the caller's key may start one more request now. Counts come from the log, so they
/// cover every queen; two queens admitting at the same instant may each let one request past a
/// limit (the tolerance is the requests admitted elsewhere within the time a queen takes to read
/// the other's `request.accepted`, milliseconds on one NATS server).
pub fn admit(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let Some(id) = &caller.key else { return Ok(()) };
    let now = rbee_bus::envelope::now_ms();
    let since = now.saturating_sub(WINDOW_MS);
    let (limits, usage) = state.view.read(|v| (v.keys.keys.get(id).map(|k| k.limits.clone()), v.keys.usage(id)));
    let Some(limits) = limits else { return Ok(()) };
    let over = |what: &str, used: u64, limit: u32, retry_after: u64| {
        Err(ApiError::new(Code::RateLimited, format!("this key used {used} of its {limit} {what}"))
            .retry_after(retry_after.max(1)))
    };
    // Seconds until the oldest use in the window leaves it.
    let until_window_frees =
        |oldest: Option<u64>| oldest.map_or(1, |at| (at + WINDOW_MS).saturating_sub(now) / 1000 + 1);
    if let Some(limit) = limits.concurrent_requests
        && usage.in_flight.len() as u64 >= u64::from(limit)
    {
        return over("concurrent requests", usage.in_flight.len() as u64, limit, 1);
    }
    if let Some(limit) = limits.requests_per_minute {
        let used = usage.requests_since(since) as u64;
        if used >= u64::from(limit) {
            let oldest = usage.accepted_at_ms.iter().copied().find(|at| *at > since);
            return over("requests per minute", used, limit, until_window_frees(oldest));
        }
    }
    if let Some(limit) = limits.tokens_per_minute {
        let used = usage.tokens_since(since);
        if used >= u64::from(limit) {
            let oldest = usage.tokens.iter().map(|(at, _)| *at).find(|at| *at > since);
            return over("tokens per minute", used, limit, until_window_frees(oldest));
        }
    }
    Ok(())
}
