//! The small endpoints: health, the model list, and request cancellation.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rbee_bus::{Code, Meta, subjects};
use serde_json::json;

use crate::AppState;
use crate::cancel::{Cancelled, cancel};
use crate::error::ApiError;

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let archive = state.archive.as_ref().map(|a| a.borrow().clone());
    let text = state.view.read(|v| state.metrics.render(v, archive.as_ref()));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Every model a worker serves or a node holds, in OpenAI's list shape.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut names: Vec<String> = state.view.read(|v| {
        v.registry
            .workers
            .values()
            .map(|w| w.model.clone())
            .chain(v.catalog.entries.keys().map(|(m, _)| m.clone()))
            .collect()
    });
    names.sort();
    names.dedup();
    let data: Vec<_> =
        names.iter().map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "rbee"})).collect();
    Json(json!({"object": "list", "data": data}))
}

/// Query of `GET /v1/catalog`.
#[derive(Debug, serde::Deserialize)]
pub struct CatalogQuery {
    node: Option<String>,
    /// The `next` token of the previous page: `<model>:<node>`.
    after: Option<String>,
    limit: Option<usize>,
}

const MAX_PAGE: usize = 1000;

/// `GET /v1/catalog`: catalog entries in (model, node) order, by node if asked, one page at a time.
pub async fn catalog(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<CatalogQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return ApiError::invalid("query", e.body_text()).into_response(),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return ApiError::invalid("limit", format!("limit must be from 1 to {MAX_PAGE}, got {limit}")).into_response();
    }
    if let Some(node) = &q.node
        && let Err(e) = subjects::validate_name("node", node)
    {
        return ApiError::invalid("node", e.to_string()).into_response();
    }
    let after = match q.after.as_deref().map(|a| a.split_once(':')) {
        None => None,
        Some(Some((model, node)))
            if subjects::validate_name("model", model).is_ok() && subjects::validate_name("node", node).is_ok() =>
        {
            Some((model.to_string(), node.to_string()))
        }
        Some(_) => {
            return ApiError::invalid("after", "after must be the next token of a previous page (<model>:<node>)")
                .into_response();
        }
    };
    let (data, next) = state.view.read(|v| {
        let page = v.catalog.page(q.node.as_deref(), after.as_ref(), limit);
        let next = (page.len() == limit).then(|| page.last().map(|e| format!("{}:{}", e.model, e.node))).flatten();
        (serde_json::to_value(&page).unwrap_or_default(), next)
    });
    Json(json!({"object": "list", "data": data, "next": next})).into_response()
}

/// `DELETE /v1/requests/{id}`: cancels a request. 204 also when it already ended or was cancelled.
/// A request made with another API key is not found (404), as if it did not exist.
pub async fn cancel_request(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = subjects::validate_name("request id", &id) {
        return ApiError::invalid("id", e.to_string()).into_response();
    }
    // Still waiting for a slot: it leaves the queue and never runs.
    if state.queues.cancel(&id, caller.key.as_deref()) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let meta = Meta { correlation: Some(id.clone()), traceparent: None };
    match cancel(&state.log, &id, "deleted", false, caller.key, &meta).await {
        Ok(Cancelled::Unknown) => ApiError::new(Code::RequestNotFound, format!("no request {id}")).into_response(),
        Ok(Cancelled::Now | Cancelled::AlreadyEnded) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError::log_unavailable(e).into_response(),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such endpoint; see /v1/chat/completions and /v1/models")
}
