//! `POST /v1/chat/completions`: claim a slot, dispatch the request's text to the worker over core
//! NATS, and relay its token frames to the client as OpenAI JSON or SSE chunks. If the client goes
//! away before the end, dropping the response appends `request.cancelled`, and the worker stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rbee_bus::frames::{self, TokenFrame, WorkAccepted, WorkItem};
use rbee_bus::{
    Code, Event, EventLog, Expected, FinishReason, Meta, RequestAccepted, RequestFinished, WorkerState, subjects,
};
use serde_json::json;
use tracing::Instrument;

use crate::AppState;
use crate::auth::Caller;
use crate::cancel::cancel;
use crate::chat_request::{self, ValidatedChat};
use crate::error::ApiError;
use crate::scheduler::{Claim, claim_slot, release_slot};

const DISPATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stream whose worker was lost waits for a slot on another one.
const FAILOVER_WAIT: Duration = Duration::from_secs(1);
/// How many times one stream is moved to another worker before the client is told.
const MAX_FAILOVERS: u32 = 3;
/// Workers a request is handed to in turn when one does not answer.
const MAX_UNANSWERED: usize = 2;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let parent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let meta = Meta { correlation: Some(request.clone()), traceparent: Some(rbee_bus::trace::child_of(parent)) };
    let span = tracing::info_span!("queen.chat_completions", request = %request, traceparent = meta.traceparent.as_deref().unwrap_or(""));
    let mut response = handle(state, caller, &headers, body, request.clone(), meta).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&request) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Whether the body is declared JSON. Anything else is refused: a web page can send text/plain or
/// a form to any address without asking the browser first, but not application/json.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

async fn handle(
    state: Arc<AppState>,
    caller: Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request: String,
    meta: Meta,
) -> Response {
    if !is_json(headers) {
        return ApiError::new(Code::UnsupportedMediaType, "send the body as JSON, with Content-Type: application/json")
            .into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = state.config.get().max_body_bytes;
            return ApiError::new(Code::RequestTooLarge, format!("request body is over the {limit}-byte limit"))
                .into_response();
        }
        Err(rejection) => return ApiError::invalid("body", rejection.body_text()).into_response(),
    };
    let started = std::time::Instant::now();
    let chat = match chat_request::parse(&body) {
        Ok(c) => c,
        Err(e) => {
            state.metrics.request_done("-", e.code.as_str(), started.elapsed().as_secs_f64());
            return e.into_response();
        }
    };
    for warning in &chat.warnings {
        tracing::warn!(%warning, "suspicious prompt served");
    }
    let deadline = match deadline(&state, headers) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let warnings = chat.warnings.join("; ");
    let mut response = match start(&state, &caller, &chat, &request, &meta, deadline).await {
        Err(e) => {
            tracing::info!(code = %e.code, message = %e.message, "request refused");
            // Refused before any worker: an unknown model must not become a label.
            state.metrics.request_done("-", e.code.as_str(), started.elapsed().as_secs_f64());
            e.into_response()
        }
        Ok(running) => {
            let position = HeaderValue::from(running.queue_position);
            let mut response =
                if chat.stream { stream_response(running).into_response() } else { json_response(running).await };
            response.headers_mut().insert("x-queue-position", position);
            response
        }
    };
    if !warnings.is_empty()
        && let Ok(v) = HeaderValue::from_str(&warnings)
    {
        response.headers_mut().insert("x-rbee-warnings", v);
    }
    response
}

/// When the request must have ended: the queen's `--request-timeout-secs` from now, or sooner
/// when the client asks with `x-request-timeout: <seconds>`.
fn deadline(state: &AppState, headers: &HeaderMap) -> Result<tokio::time::Instant, ApiError> {
    let longest = state.config.get().request_timeout();
    let asked = match headers.get("x-request-timeout") {
        None => longest,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<f64>().ok()) {
            Some(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs.min(longest.as_secs_f64())),
            _ => {
                return Err(ApiError::invalid(
                    "x-request-timeout",
                    "x-request-timeout must be a positive number of seconds",
                ));
            }
        },
    };
    Ok(tokio::time::Instant::now() + asked)
}

fn deadline_passed() -> ApiError {
    ApiError::new(Code::RequestTimeout, "the request's deadline passed before it ended")
}

/// A request running on a worker.
struct Running {
    tokens: async_nats::Subscriber,
    /// The worker serving it.
    worker: String,
    /// What was asked, and by which key: what another worker needs to take the request over.
    chat: ValidatedChat,
    key: Option<String>,
    /// The ids of the tokens the client has received.
    streamed: Vec<u32>,
    /// Times the stream was moved to another worker.
    failovers: u32,
    /// Its place in its model's queue when it came (1: nobody was ahead).
    queue_position: usize,
    /// When it must have ended.
    deadline: tokio::time::Instant,
    /// Named to the worker as long as this runs.
    _streaming: crate::streaming::StreamingRequest,
    guard: RequestGuard,
    request: String,
    created: u64,
    token_timeout: Duration,
    state: Arc<AppState>,
    started: std::time::Instant,
    first_token_seen: bool,
    /// How it ended (`ok` or an error code); none when the client went away first.
    /// The metrics label of how the request ended: `ok` or its code.
    outcome: Option<&'static str>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let code = self.outcome.unwrap_or(Code::Cancelled.as_str());
        self.state.metrics.request_done(&self.chat.model, code, self.started.elapsed().as_secs_f64());
    }
}

impl Running {
    /// The next frame, with its metrics and outcome recorded. A stream whose worker is lost (it
    /// exited, went silent, or gave the request up because no queen seemed to read it) moves to
    /// another worker first, which goes on from the tokens already streamed.
    async fn next_frame(&mut self) -> Result<TokenFrame, ApiError> {
        let mut frame = self.receive().await;
        while is_lost_worker(&frame) && self.fail_over().await {
            frame = self.receive().await;
        }
        if let Some(lost) = self.tokens_lost(&frame) {
            frame = Err(lost);
        }
        match &frame {
            Ok(TokenFrame::Delta { tokens, .. }) => {
                self.streamed.extend_from_slice(tokens);
                if !self.first_token_seen {
                    self.first_token_seen = true;
                    self.state.metrics.first_token(&self.chat.model, self.started.elapsed().as_secs_f64());
                }
            }
            Ok(TokenFrame::Done { completion_tokens, .. }) => {
                self.state.metrics.tokens(&self.chat.model, *completion_tokens);
                self.outcome = Some("ok");
            }
            Ok(TokenFrame::Error { code, .. }) => self.outcome = Some(code.as_str()),
            Err(e) => {
                self.outcome = Some(e.code.as_str());
                match e.code {
                    Code::WorkerLost => self.record_lost(),
                    Code::RequestTimeout => self.cancel_run("deadline"),
                    _ => {}
                }
            }
        }
        frame
    }

    /// Moves the stream to a worker of its model with a free slot (waiting up to
    /// [`FAILOVER_WAIT`]), handing it the tokens streamed so far. False when none takes it.
    async fn fail_over(&mut self) -> bool {
        if self.failovers >= MAX_FAILOVERS || tokio::time::Instant::now() >= self.deadline {
            return false;
        }
        self.failovers += 1;
        let (state, meta) = (self.state.clone(), self.guard.meta.clone());
        let left = self.deadline.saturating_duration_since(tokio::time::Instant::now());
        let chat = &self.chat;
        let claimed = claim_slot(
            &state.view,
            &state.log,
            &chat.model,
            &self.request,
            chat.max_tokens,
            FAILOVER_WAIT.min(left),
            // Not avoiding the lost worker: one that exited or went stale is not chosen anyway,
            // and one that only gave the request up (its queen seemed gone) may take it back.
            &[],
            &meta,
        )
        .await;
        let claim = match claimed {
            Ok(claim) => claim,
            Err(e) => {
                tracing::warn!(lost = %self.worker, code = %e.code, "no worker to move the stream to");
                state.metrics.failover(&chat.model, false);
                return false;
            }
        };
        let tokens = match dispatch(&state, chat, &self.request, &claim, &self.streamed, &meta).await {
            Ok(tokens) => tokens,
            Err(e) => {
                tracing::warn!(to = %claim.worker, code = %e.code, "the worker did not take the moved stream");
                release_slot(&state.log, &claim, &self.request, &meta).await;
                state.metrics.failover(&chat.model, false);
                return false;
            }
        };
        record_accepted(&state, chat, &self.request, &claim, self.key.clone(), &meta).await;
        tracing::info!(from = %self.worker, to = %claim.worker, streamed = self.streamed.len(), "stream moved to another worker");
        state.metrics.failover(&chat.model, true);
        self.tokens = tokens;
        self._streaming = state.streaming.start(&claim.node, &claim.worker, &self.request);
        self.worker = claim.worker;
        true
    }

    async fn receive(&mut self) -> Result<TokenFrame, ApiError> {
        let worker = self.worker.clone();
        // The worker's exit (its hive records it at once) or its silence (stale: no heartbeat for
        // the heartbeat timeout) ends the stream here now, not at the token timeout.
        let lost = self.state.view.wait_until(self.token_timeout, |v| match v.registry.workers.get(&worker) {
            Some(w) if !matches!(w.state, WorkerState::Stopped | WorkerState::Stale) => None,
            _ => Some(()),
        });
        let log = self.state.log.clone();
        // Without NATS no token can arrive: say so at once, not at the token timeout.
        let cut_off = async move {
            while log.is_connected() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(self.deadline) => Err(deadline_passed()),
            () = cut_off => Err(ApiError::log_unavailable("the connection to NATS was lost mid-stream")),
            next = tokio::time::timeout(self.token_timeout, self.tokens.next()) => match next {
                Ok(Some(msg)) => frames::decode(&msg.payload)
                    .map_err(|e| ApiError::new(Code::InferenceFailed, format!("unreadable token frame: {e}"))),
                Ok(None) => Err(ApiError::new(Code::InferenceFailed, "token stream closed")),
                Err(_) => Err(ApiError::new(Code::GenerationStalled, "the worker sent no token in time")),
            },
            Some(()) = lost => Err(ApiError::new(
                Code::WorkerLost,
                format!("worker {} exited or went silent mid-stream; retry the request", self.worker),
            )
            .retry_after(1)),
        }
    }

    /// The request cannot go on (its deadline passed, its answer has a hole): the worker stops
    /// and frees the slot, as when a client goes away.
    fn cancel_run(&mut self, reason: &'static str) {
        self.guard.ended();
        let (log, meta, request) = (self.state.log.clone(), self.guard.meta.clone(), self.request.clone());
        tokio::spawn(async move {
            if let Err(e) = cancel(&log, &request, reason, false, None, &meta).await {
                tracing::error!(error = %e, reason, "cancellation not recorded");
            }
        });
    }

    /// Token frames travel at most once (core NATS): one routed through a server that died is
    /// gone. A delta that does not start where the last one ended, or an end whose count is more
    /// than the tokens received, means the answer has a hole; it ends with `TOKENS_LOST` rather
    /// than as a whole answer it is not.
    fn tokens_lost(&mut self, frame: &Result<TokenFrame, ApiError>) -> Option<ApiError> {
        let received = self.streamed.len();
        let expected = frame.as_ref().ok().and_then(|f| hole(received, f))?;
        tracing::warn!(request = %self.request, worker = %self.worker, received, expected, "token frames lost on the way");
        if matches!(frame, Ok(TokenFrame::Done { .. })) {
            self.guard.ended();
        } else {
            self.cancel_run("tokens_lost");
        }
        Some(
            ApiError::new(
                Code::TokensLost,
                format!(
                    "{} of the answer's tokens were lost on the way from the worker; retry the request",
                    expected.abs_diff(received)
                ),
            )
            .retry_after(1),
        )
    }

    /// The worker cannot record how the request ended: this queen does, for it.
    fn record_lost(&mut self) {
        self.guard.ended();
        let finished = Event::RequestFinished(RequestFinished {
            request: self.request.clone(),
            worker: self.worker.clone(),
            finish_reason: FinishReason::Error,
            prompt_tokens: 0,
            completion_tokens: 0,
            time_to_first_token_ms: 0,
            duration_ms: self.started.elapsed().as_millis() as u64,
            error_code: Some(Code::WorkerLost),
        });
        let (log, meta) = (self.state.log.clone(), self.guard.meta.clone());
        tokio::spawn(async move {
            if let Err(e) = log.append(finished, Expected::Any, &meta).await {
                tracing::error!(error = %e, "the lost worker's request outcome not recorded");
            }
        });
    }

    fn chunk(&self, delta: serde_json::Value, finish_reason: Option<FinishReason>) -> serde_json::Value {
        json!({
            "id": self.request, "object": "chat.completion.chunk", "created": self.created, "model": self.chat.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason.map(FinishReason::as_str)}],
        })
    }
}

/// Whether the stream's worker is gone or gave the request up: a reason to move the stream.
/// The tokens the worker says it had sent by `frame`, when that is not the `received` count.
fn hole(received: usize, frame: &TokenFrame) -> Option<usize> {
    let sent = match frame {
        TokenFrame::Delta { first, .. } => *first as usize,
        TokenFrame::Done { completion_tokens, .. } => *completion_tokens as usize,
        TokenFrame::Error { .. } => return None,
    };
    (sent != received).then_some(sent)
}

fn is_lost_worker(frame: &Result<TokenFrame, ApiError>) -> bool {
    match frame {
        Err(e) => e.code == Code::WorkerLost,
        Ok(TokenFrame::Error { code, .. }) => *code == Code::StreamAbandoned,
        Ok(_) => false,
    }
}

/// What must happen if the response is dropped now (the client went away): before the worker
/// took the request, give the slot back; while it runs, cancel it; after it ended, nothing.
enum Stage {
    Claimed(Claim),
    Running,
    Ended,
}

struct RequestGuard {
    log: EventLog,
    request: String,
    meta: Meta,
    stage: Stage,
}

impl RequestGuard {
    /// The request ended on its own: nothing to undo.
    fn ended(&mut self) {
        self.stage = Stage::Ended;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let (log, meta, request) = (self.log.clone(), self.meta.clone(), self.request.clone());
        match std::mem::replace(&mut self.stage, Stage::Ended) {
            Stage::Ended => {}
            Stage::Claimed(claim) => {
                // The worker may already have taken the request: cancel it too (a worker that never
                // got it just never hears of it), then give the slot back.
                tracing::info!(%request, "client went away during dispatch; cancelling and releasing the slot");
                tokio::spawn(async move {
                    if let Err(e) = cancel(&log, &request, "client_disconnected", true, None, &meta).await {
                        tracing::error!(error = %e, "cancellation not recorded");
                    }
                    release_slot(&log, &claim, &request, &meta).await;
                });
            }
            Stage::Running => {
                tracing::info!(%request, "client went away; cancelling");
                tokio::spawn(async move {
                    if let Err(e) = cancel(&log, &request, "client_disconnected", false, None, &meta).await {
                        tracing::error!(error = %e, "cancellation not recorded");
                    }
                });
            }
        }
    }
}

async fn start(
    state: &Arc<AppState>,
    caller: &Caller,
    chat: &ValidatedChat,
    request: &str,
    meta: &Meta,
    deadline: tokio::time::Instant,
) -> Result<Running, ApiError> {
    crate::auth::admit(state, caller)?;
    // Without NATS nothing can be claimed or dispatched: say so now, not after the slot wait.
    if !state.log.is_connected() {
        return Err(ApiError::log_unavailable("NATS is not connected"));
    }
    let started = std::time::Instant::now();
    // In line behind the requests that came first; only the head claims a slot.
    let place = state.queues.join(&chat.model, request, caller.key.clone())?;
    let queue_deadline = (tokio::time::Instant::now() + state.config.get().queue_timeout()).min(deadline);
    // The wait ends at the queue timeout, or at the request's own deadline if that comes first.
    let waited_too_long = |e: ApiError| if tokio::time::Instant::now() >= deadline { deadline_passed() } else { e };
    place.wait_turn(queue_deadline).await.map_err(waited_too_long)?;
    let left = queue_deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut claim =
        match claim_slot(&state.view, &state.log, &chat.model, request, chat.max_tokens, left, &[], meta).await {
            Err(e) if e.code == Code::AllSlotsBusy && tokio::time::Instant::now() >= queue_deadline => {
                return Err(waited_too_long(place.timed_out()));
            }
            claimed => claimed?,
        };
    let queue_position = place.position;
    place.granted();
    state.metrics.slot_waited(&chat.model, started.elapsed().as_secs_f64());
    let mut guard = RequestGuard {
        log: state.log.clone(),
        request: request.into(),
        meta: meta.clone(),
        stage: Stage::Claimed(claim.clone()),
    };
    // A worker that does not answer (its machine cut off and not yet judged stale) is given up
    // for another one, within the queue wait.
    let mut unanswered = Vec::new();
    let dispatched = loop {
        let e = match dispatch(state, chat, request, &claim, &[], meta).await {
            Ok(tokens) => break Ok(tokens),
            Err(e) if e.code != Code::WorkerUnreachable || unanswered.len() >= MAX_UNANSWERED => break Err(e),
            Err(e) => e,
        };
        tracing::warn!(worker = %claim.worker, error = %e.message, "the worker did not take the request; choosing another");
        guard.ended();
        release_slot(&state.log, &claim, request, meta).await;
        unanswered.push(claim.worker.clone());
        let left = queue_deadline.saturating_duration_since(tokio::time::Instant::now());
        match claim_slot(&state.view, &state.log, &chat.model, request, chat.max_tokens, left, &unanswered, meta).await
        {
            Ok(next) => claim = next,
            Err(_) => return Err(e),
        }
        guard.stage = Stage::Claimed(claim.clone());
    };
    match dispatched {
        Ok(tokens) => {
            record_accepted(state, chat, request, &claim, caller.key.clone(), meta).await;
            guard.stage = Stage::Running;
            Ok(Running {
                tokens,
                worker: claim.worker.clone(),
                chat: chat.clone(),
                key: caller.key.clone(),
                streamed: Vec::new(),
                failovers: 0,
                queue_position,
                deadline,
                _streaming: state.streaming.start(&claim.node, &claim.worker, request),
                guard,
                request: request.into(),
                created: rbee_bus::envelope::now_ms() / 1000,
                token_timeout: state.config.get().token_timeout(),
                state: state.clone(),
                started,
                first_token_seen: false,
                outcome: None,
            })
        }
        Err(e) => {
            guard.ended();
            release_slot(&state.log, &claim, request, meta).await;
            Err(e)
        }
    }
}

/// Records that `claim`'s worker took the request (again, when a stream moved to it).
async fn record_accepted(
    state: &AppState,
    chat: &ValidatedChat,
    request: &str,
    claim: &Claim,
    key: Option<String>,
    meta: &Meta,
) {
    let accepted = Event::RequestAccepted(RequestAccepted {
        request: request.into(),
        model: chat.model.clone(),
        worker: claim.worker.clone(),
        slot: claim.slot,
        max_tokens: chat.max_tokens,
        stream: chat.stream,
        key,
    });
    if let Err(e) = state.log.append(accepted, Expected::Any, meta).await {
        tracing::error!(error = %e, "request.accepted not recorded");
    }
}

/// Hands the request to the worker, with the tokens another worker already streamed for it
/// (`resume`); returns the subscription its tokens will arrive on.
async fn dispatch(
    state: &AppState,
    chat: &ValidatedChat,
    request: &str,
    claim: &Claim,
    resume: &[u32],
    meta: &Meta,
) -> Result<async_nats::Subscriber, ApiError> {
    let client = state.log.client();
    // Subscribe before dispatching so the first token cannot be missed.
    let tokens = client
        .subscribe(subjects::tokens(&claim.node, &claim.worker, request))
        .await
        .map_err(ApiError::log_unavailable)?;
    let item = WorkItem {
        request: request.into(),
        slot: claim.slot,
        messages: chat.messages.clone(),
        max_tokens: chat.max_tokens,
        sampling: chat.sampling.clone(),
        traceparent: meta.traceparent.clone(),
        resume: resume.to_vec(),
    };
    let unreachable = |why: String| {
        ApiError::new(Code::WorkerUnreachable, format!("worker {} did not take the request: {why}", claim.worker))
            .retry_after(1)
    };
    let reply = tokio::time::timeout(
        DISPATCH_TIMEOUT,
        client.request(subjects::work(&claim.node, &claim.worker), frames::encode(&item).into()),
    )
    .await
    .map_err(|_| unreachable("no answer in time".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    match frames::decode::<WorkAccepted>(&reply.payload) {
        Ok(WorkAccepted::Accepted) => Ok(tokens),
        Ok(WorkAccepted::Refused { code, message }) => Err(ApiError::from_worker(code, message)),
        Err(e) => Err(unreachable(format!("unreadable answer: {e}"))),
    }
}

fn sse(value: serde_json::Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(value.to_string()))
}

fn stream_response(mut running: Running) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let events = async_stream::stream! {
        yield sse(running.chunk(json!({"role": "assistant", "content": ""}), None));
        loop {
            match running.next_frame().await {
                Ok(TokenFrame::Delta { text, .. }) if text.is_empty() => {}
                Ok(TokenFrame::Delta { text, .. }) => yield sse(running.chunk(json!({"content": text}), None)),
                Ok(TokenFrame::Done { finish_reason, prompt_tokens, completion_tokens }) => {
                    running.guard.ended();
                    let mut last = running.chunk(json!({}), Some(finish_reason));
                    last["usage"] = usage(prompt_tokens, completion_tokens);
                    yield sse(last);
                    break;
                }
                Ok(TokenFrame::Error { code, message }) => {
                    running.guard.ended();
                    yield sse(ApiError::from_worker(code, message).body());
                    break;
                }
                Err(e) => {
                    yield sse(e.body());
                    break;
                }
            }
        }
        yield Ok(SseEvent::default().data("[DONE]"));
    };
    Sse::new(events).keep_alive(KeepAlive::default())
}

async fn json_response(mut running: Running) -> Response {
    let mut content = String::new();
    loop {
        match running.next_frame().await {
            Ok(TokenFrame::Delta { text, .. }) => content.push_str(&text),
            Ok(TokenFrame::Done { finish_reason, prompt_tokens, completion_tokens }) => {
                running.guard.ended();
                return axum::Json(json!({
                    "id": running.request, "object": "chat.completion", "created": running.created, "model": running.chat.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason.as_str()}],
                    "usage": usage(prompt_tokens, completion_tokens),
                }))
                .into_response();
            }
            Ok(TokenFrame::Error { code, message }) => {
                running.guard.ended();
                let partial_content = (!content.is_empty()).then_some(content);
                return ApiError { partial_content, ..ApiError::from_worker(code, message) }.into_response();
            }
            Err(e) => return e.into_response(),
        }
    }
}

fn usage(prompt_tokens: u32, completion_tokens: u32) -> serde_json::Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens})
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::event::FinishReason;

    fn delta(first: u32, n: u32) -> TokenFrame {
        TokenFrame::Delta { text: "x".into(), tokens: (first..first + n).collect(), first }
    }

    fn done(completion_tokens: u32) -> TokenFrame {
        TokenFrame::Done { finish_reason: FinishReason::Stop, prompt_tokens: 3, completion_tokens }
    }

    #[test]
    fn a_frame_that_does_not_start_where_the_last_ended_is_a_hole() {
        assert_eq!(hole(0, &delta(0, 2)), None);
        assert_eq!(hole(2, &delta(2, 1)), None);
        assert_eq!(hole(2, &delta(3, 1)), Some(3), "the frame with token 2 was lost");
        assert_eq!(hole(5, &delta(5, 1)), None, "a resumed stream goes on from the tokens received");
    }

    #[test]
    fn an_end_counting_more_tokens_than_received_is_a_hole() {
        assert_eq!(hole(4, &done(4)), None);
        assert_eq!(hole(3, &done(4)), Some(4), "the last frame was lost");
        let error = TokenFrame::Error { code: Code::InferenceFailed, message: String::new() };
        assert_eq!(hole(1, &error), None);
    }
}
