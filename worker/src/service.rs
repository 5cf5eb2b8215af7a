//! The worker process: registration, heartbeats, taking work, generation on its own thread,
//! and the events that record each request's outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use futures::StreamExt;
use rbee_bus::frames::{self, TokenFrame, WorkAccepted, WorkItem};
use rbee_bus::outbox::{self, Outbox};
use rbee_bus::{
    Code, Event, EventLog, FinishReason, Meta, RequestFinished, SlotReleased, WorkerHeartbeat, WorkerRegistered,
    WorkerState, WorkerStateChanged, subjects,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::engine::{Engine, EngineError, Generation, Output, Prepared, Prompter, SequenceId};
use crate::registration::Outcome;
use crate::{Config, WorkerError};

/// One request handed to the generation thread.
struct Job {
    prepared: Prepared,
    sampling: frames::Sampling,
    cancel: Arc<AtomicBool>,
    frames: mpsc::UnboundedSender<TokenFrame>,
    done: oneshot::Sender<Result<Generation, EngineError>>,
}

/// What the request handlers share.
struct Shared {
    config: Config,
    log: EventLog,
    prompter: Arc<Prompter>,
    jobs: std::sync::mpsc::Sender<Job>,
    busy: AtomicU32,
    /// Each accepted request's tail: recording its outcome and publishing its last frames. A
    /// draining worker waits for these, not just for its slots, so no stream loses its end.
    streams: TaskTracker,
    /// The running requests a queen still reads.
    requesters: Arc<crate::requesters::Requesters>,
    /// Facts on their way to the log (states, outcomes, released slots).
    outbox: Arc<Outbox>,
    /// The requests queens handed this worker lately: a claim whose request never came is released.
    given: Arc<crate::claims::Given>,
}

/// Runs the worker until `shutdown`. Registration comes first, so a duplicate id fails fast.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    for (field, value) in [("node", &config.node), ("worker id", &config.worker_id), ("model", &config.model)] {
        rbee_bus::subjects::validate_name(field, value)?;
    }
    let log = EventLog::connect(&config.nats.access()).await?;
    log.ensure_streams(&rbee_bus::StreamSettings::from_env()?).await?;
    let meta = Meta { correlation: Some(config.worker_id.clone()), traceparent: None };
    // What an earlier incarnation of this id could not send goes first, before it registers again.
    let outbox =
        Outbox::open(&config.outbox_dir(), outbox::CAPACITY).map_err(|e| WorkerError::Internal(e.to_string()))?;
    let stop_outbox = CancellationToken::new();
    tokio::spawn(outbox.clone().drain(log.clone(), stop_outbox.clone()));
    if !outbox.flushed(outbox::FLUSH_DEADLINE).await {
        return Err(WorkerError::Bus(format!("{} events of an earlier run could not be sent", outbox.pending())));
    }
    let registered = WorkerRegistered {
        worker: config.worker_id.clone(),
        node: config.node.clone(),
        model: config.model.clone(),
        slots: config.slots,
        pid: std::process::id(),
        backend: "cpu".into(),
    };
    match crate::registration::register(&log, &registered, &meta).await? {
        Outcome::Registered => tracing::info!(worker = %config.worker_id, "registered; loading model"),
        Outcome::AlreadyRegistered | Outcome::Moved => return Err(WorkerError::AlreadyRegistered(config.worker_id)),
    }

    let (path, threads) = (config.model_path.clone(), config.inference_threads());
    let loaded =
        tokio::task::spawn_blocking(move || Engine::load_with(&path, crate::llama::Kernels::Quantized, threads))
            .await
            .map_err(|e| WorkerError::Internal(format!("model loader panicked: {e}")))?;
    let mut engine = match loaded {
        Ok(engine) => engine,
        Err(e) => {
            set_state(&outbox, &config, WorkerState::Stopped, 0, &meta);
            outbox.flush_before_exit().await;
            return Err(e.into());
        }
    };
    engine.limit_time(std::time::Duration::from_secs_f64(config.generation_timeout_secs.clamp(0.001, 1e9)));
    let prompter = engine.prompter();
    let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("generation".into())
        .spawn(move || generation_thread(engine, job_rx))
        .map_err(|e| WorkerError::Internal(format!("cannot start generation thread: {e}")))?;

    let mut work = log
        .client()
        .subscribe(subjects::work(&config.node, &config.worker_id))
        .await
        .map_err(|e| WorkerError::Bus(e.to_string()))?;
    let context_length = prompter.context_length() as u32;
    set_state(&outbox, &config, WorkerState::Ready, context_length, &meta);
    tracing::info!(worker = %config.worker_id, context_length, "ready");

    let still_wanted = log
        .client()
        .subscribe(subjects::still_wanted(&config.node, &config.worker_id))
        .await
        .map_err(|e| WorkerError::Bus(e.to_string()))?;
    let requesters = Arc::new(crate::requesters::Requesters::default());
    let watcher = tokio::spawn(crate::requesters::watch(requesters.clone(), still_wanted));
    let claims_on_me = log
        .client()
        .subscribe(subjects::worker(&config.node, &config.worker_id))
        .await
        .map_err(|e| WorkerError::Bus(e.to_string()))?;
    let given = Arc::new(crate::claims::Given::default());
    let me = (config.node.clone(), config.worker_id.clone());
    let removed = Arc::new(tokio::sync::Notify::new());
    let claims = tokio::spawn(crate::claims::watch(claims_on_me, given.clone(), outbox.clone(), me, removed.clone()));
    let stop_rejoining = CancellationToken::new();
    let rejoin =
        crate::rejoin::watch(log.clone(), outbox.clone(), registered, context_length, removed, stop_rejoining.clone());
    tokio::spawn(rejoin);
    let shared = Arc::new(Shared {
        config,
        log,
        prompter,
        jobs,
        busy: AtomicU32::new(0),
        streams: TaskTracker::new(),
        requesters,
        outbox,
        given,
    });
    let stop_status = CancellationToken::new();
    if let Some(addr) = shared.config.status_addr {
        let of = shared.clone();
        let measures = Arc::new(move || {
            let gauge = |name, help, value: usize| rbee_runtime::status::Gauge {
                name,
                help,
                labels: vec![("worker", of.config.worker_id.clone())],
                value: value as f64,
            };
            vec![
                gauge("rbee_worker_busy_slots", "Slots running a request.", of.busy.load(Ordering::Relaxed) as usize),
                gauge("rbee_worker_outbox_events", "Events waiting in the outbox for the log.", of.outbox.pending()),
            ]
        });
        let status = rbee_runtime::status::Status::new("worker", shared.log.clone(), measures);
        status
            .serve(addr, stop_status.clone())
            .await
            .map_err(|e| WorkerError::Internal(format!("status endpoints on {addr}: {e}")))?;
    }
    // Heartbeats go on while draining; they stop when the worker does.
    let heartbeats = tokio::spawn(heartbeat_loop(shared.clone(), CancellationToken::new()));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = work.next() => match msg {
                Some(msg) => accept(shared.clone(), msg).await,
                None => break,
            },
        }
    }
    // Draining: no new requests (the queen stops choosing a draining worker, and the work
    // subscription ends), the ones in flight finish; heartbeats go on meanwhile.
    drop(work);
    stop_rejoining.cancel();
    let in_flight = shared.busy.load(Ordering::SeqCst);
    if in_flight > 0 {
        tracing::info!(in_flight, "draining: finishing the requests in flight");
        set_state(&shared.outbox, &shared.config, WorkerState::Draining, 0, &meta);
    }
    // Every request's outcome recorded and its last frame sent, then flushed, before the exit.
    shared.streams.close();
    let drain = std::time::Duration::from_secs(shared.config.drain_secs);
    if tokio::time::timeout(drain, shared.streams.wait()).await.is_err() {
        tracing::warn!(in_flight = shared.busy.load(Ordering::SeqCst), "drain deadline passed; exiting");
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), shared.log.client().flush()).await;
    heartbeats.abort();
    watcher.abort();
    claims.abort();
    stop_status.cancel();
    // The stop and every outcome are on disk; they leave for the log before the exit, or with
    // the next incarnation of this id when the log stays away.
    set_state(&shared.outbox, &shared.config, WorkerState::Stopped, 0, &meta);
    shared.outbox.flush_before_exit().await;
    stop_outbox.cancel();
    // Nothing left for a later incarnation: the directory goes (it stays while it holds events).
    let _ = std::fs::remove_dir(shared.config.outbox_dir());
    tracing::info!("stopped");
    Ok(())
}

fn set_state(outbox: &Outbox, config: &Config, state: WorkerState, context_length: u32, meta: &Meta) {
    let event = Event::WorkerStateChanged(WorkerStateChanged {
        worker: config.worker_id.clone(),
        node: config.node.clone(),
        state,
        context_length,
    });
    if let Err(e) = outbox.record(event, meta) {
        tracing::error!(error = %e, state = state.as_str(), "could not record state change");
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.heartbeat_interval());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let beat = Event::WorkerHeartbeat(WorkerHeartbeat {
            worker: shared.config.worker_id.clone(),
            node: shared.config.node.clone(),
            busy_slots: shared.busy.load(Ordering::Relaxed),
        });
        if let Err(e) = shared.log.heartbeat(beat, &Meta::default()).await {
            tracing::warn!(error = %e, "heartbeat not published");
        }
    }
}

fn refuse(code: Code, message: String) -> Vec<u8> {
    frames::encode(&WorkAccepted::Refused { code, message })
}

/// Decodes a work item and admits it in the request's span.
async fn accept(shared: Arc<Shared>, msg: async_nats::Message) {
    let Some(reply) = msg.reply.clone() else { return };
    let item: WorkItem = match frames::decode(&msg.payload) {
        Ok(item) => item,
        Err(e) => {
            let _ = shared.log.client().publish(reply, refuse(Code::InvalidWorkItem, e.to_string()).into()).await;
            return;
        }
    };
    shared.given.note(&item.request);
    let span = tracing::info_span!("worker.request", request = %item.request, traceparent = item.traceparent.as_deref().unwrap_or(""));
    admit(shared, reply, item).instrument(span).await
}

/// Answers `Accepted` and queues the item if it can run here, else refuses it with a code.
async fn admit(shared: Arc<Shared>, reply: async_nats::Subject, item: WorkItem) {
    let client = shared.log.client().clone();
    if shared.busy.load(Ordering::SeqCst) >= shared.config.slots {
        let msg = format!("worker {} has no free slot", shared.config.worker_id);
        let _ = client.publish(reply, refuse(Code::WorkerAlreadyBusy, msg).into()).await;
        return;
    }
    let prepared = shared.prompter.prepare(&item.messages, item.max_tokens);
    let prepared =
        match prepared.and_then(|p| if item.resume.is_empty() { Ok(p) } else { p.resuming(item.resume.clone()) }) {
            Ok(p) => p,
            Err(e) => {
                let _ = client.publish(reply, refuse(e.code(), e.to_string()).into()).await;
                return;
            }
        };
    // Listen for the request's cancellation before saying yes, so none can be missed.
    let stop = crate::requesters::Stop::default();
    let cancel = stop.cancel.clone();
    let cancellations =
        match client.subscribe(subjects::aggregate(rbee_bus::AggregateKind::Request, &item.request)).await {
            Ok(sub) => sub,
            Err(e) => {
                let _ = client.publish(reply, refuse(Code::EventLogUnavailable, e.to_string()).into()).await;
                return;
            }
        };
    let _ = client.flush().await;
    shared.busy.fetch_add(1, Ordering::SeqCst);
    let (frames_tx, frames_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let job = Job {
        prepared,
        sampling: item.sampling.clone(),
        cancel: cancel.clone(),
        frames: frames_tx.clone(),
        done: done_tx,
    };
    if shared.jobs.send(job).is_err() {
        shared.busy.fetch_sub(1, Ordering::SeqCst);
        let _ = client.publish(reply, refuse(Code::InferenceFailed, "generation thread is gone".into()).into()).await;
        return;
    }
    shared.requesters.follow(&item.request, stop.clone());
    let _ = client.publish(reply, frames::encode(&WorkAccepted::Accepted).into()).await;
    let ended_elsewhere = Arc::new(AtomicBool::new(false));
    let me = shared.config.worker_id.clone();
    tokio::spawn(watch_cancellation(cancellations, me, cancel, ended_elsewhere.clone()));
    shared.streams.spawn(forward_frames(
        client,
        subjects::tokens(&shared.config.node, &shared.config.worker_id, &item.request),
        frames_rx,
    ));
    shared.streams.spawn(finish(shared.clone(), item, frames_tx, done_rx, ended_elsewhere, stop.abandoned));
}

/// Sets `cancel` when the request is cancelled or a queen that gave this worker up recorded its
/// end (`worker` names this one), and then `ended_elsewhere` too: its end is not recorded twice.
/// The end another worker recorded, or this one for an earlier run it gave up (the stream moved
/// here since), is no reason to stop.
async fn watch_cancellation(
    mut sub: async_nats::Subscriber,
    me: String,
    cancel: Arc<AtomicBool>,
    ended_elsewhere: Arc<AtomicBool>,
) {
    while let Some(msg) = sub.next().await {
        let Ok(env) = rbee_bus::Envelope::decode(msg.headers.as_ref(), &msg.payload) else { continue };
        match env.event {
            Event::RequestCancelled(_) => {}
            Event::RequestFinished(f) if f.worker == me && f.error_code != Some(Code::StreamAbandoned) => {
                ended_elsewhere.store(true, Ordering::SeqCst)
            }
            _ => continue,
        }
        cancel.store(true, Ordering::Relaxed);
        return;
    }
}

/// Publishes token frames in order until the job's senders are gone.
async fn forward_frames(client: async_nats::Client, subject: String, mut rx: mpsc::UnboundedReceiver<TokenFrame>) {
    while let Some(frame) = rx.recv().await {
        if client.publish(subject.clone(), frames::encode(&frame).into()).await.is_err() {
            tracing::warn!(%subject, "token frame not published");
        }
    }
}

/// Waits for the generation to end, records the outcome and frees the slot, then ends the stream.
async fn finish(
    shared: Arc<Shared>,
    item: WorkItem,
    frames: mpsc::UnboundedSender<TokenFrame>,
    done: oneshot::Receiver<Result<Generation, EngineError>>,
    ended_elsewhere: Arc<AtomicBool>,
    abandoned: Arc<AtomicBool>,
) {
    let started = Instant::now();
    let outcome = done.await.unwrap_or_else(|_| Err(EngineError::Inference("generation thread stopped".into())));
    shared.requesters.forget(&item.request);
    let worker = shared.config.worker_id.clone();
    let meta = Meta { correlation: Some(item.request.clone()), traceparent: item.traceparent.clone() };
    let (finished, last_frame) = match &outcome {
        Ok(g) => {
            let finished = RequestFinished {
                request: item.request.clone(),
                worker: worker.clone(),
                finish_reason: g.finish_reason,
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.completion_tokens,
                time_to_first_token_ms: g.time_to_first_token.as_millis() as u64,
                duration_ms: started.elapsed().as_millis() as u64,
                error_code: None,
            };
            if abandoned.load(Ordering::SeqCst) {
                // Stopped because no queen read it: cut short, which the stream says (a queen
                // only paused meanwhile must not take it for a complete answer).
                let message = format!("worker {worker} stopped the request: no queen read its stream");
                let code = Code::StreamAbandoned;
                (RequestFinished { error_code: Some(code), ..finished }, TokenFrame::Error { code, message })
            } else {
                let (finish_reason, prompt_tokens, completion_tokens) =
                    (g.finish_reason, g.prompt_tokens, g.completion_tokens);
                (finished, TokenFrame::Done { finish_reason, prompt_tokens, completion_tokens })
            }
        }
        Err(e) => (
            RequestFinished {
                request: item.request.clone(),
                worker: worker.clone(),
                finish_reason: FinishReason::Error,
                prompt_tokens: e.tokens_made().0,
                completion_tokens: e.tokens_made().1,
                time_to_first_token_ms: 0,
                duration_ms: started.elapsed().as_millis() as u64,
                error_code: Some(e.code()),
            },
            TokenFrame::Error { code: e.code(), message: e.to_string() },
        ),
    };
    // Free the slot here before the log says so: a queen may claim it the moment it reads `slot.released`.
    shared.busy.fetch_sub(1, Ordering::SeqCst);
    let released = Event::SlotReleased(SlotReleased {
        worker,
        node: shared.config.node.clone(),
        slot: item.slot,
        request: item.request.clone(),
    });
    let finished = (!ended_elsewhere.load(Ordering::SeqCst)).then_some(Event::RequestFinished(finished));
    for event in finished.into_iter().chain([released]) {
        if let Err(e) = shared.outbox.record(event, &meta) {
            tracing::error!(error = %e, request = %item.request, "outcome not recorded");
        }
    }
    let _ = frames.send(last_frame);
}

/// Where a running sequence's frames go and who hears how it ended.
struct Listeners {
    frames: mpsc::UnboundedSender<TokenFrame>,
    done: oneshot::Sender<Result<Generation, EngineError>>,
    /// Tokens whose text is not whole yet: they go with the next delta, or alone at the end.
    held: Vec<u32>,
    /// The place in the completion of the next token sent.
    next: u32,
}

impl Listeners {
    fn send(&mut self, text: String) {
        let tokens = std::mem::take(&mut self.held);
        let first = self.next;
        self.next += tokens.len() as u32;
        let _ = self.frames.send(TokenFrame::Delta { text, tokens, first });
    }
}

/// Runs the engine on a dedicated thread (the forward pass never blocks the runtime): jobs join
/// the batch as they arrive, every step advances all of them, each ends on its own.
fn generation_thread(mut engine: Engine, jobs: std::sync::mpsc::Receiver<Job>) {
    let mut running: HashMap<SequenceId, Listeners> = HashMap::new();
    loop {
        // Idle: wait for work. Busy: take whatever arrived since the last step, without waiting.
        let arrived = if engine.active() == 0 {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        } else {
            jobs.try_recv().ok()
        };
        for job in arrived.into_iter().chain(std::iter::from_fn(|| jobs.try_recv().ok())) {
            let next = job.prepared.resumed.len() as u32;
            let id = engine.admit(job.prepared, &job.sampling, job.cancel);
            running.insert(id, Listeners { frames: job.frames, done: job.done, held: Vec::new(), next });
        }
        for (id, output) in engine.step() {
            match output {
                Output::Token(token, text) => {
                    if let Some(listeners) = running.get_mut(&id) {
                        listeners.held.push(token);
                        if let Some(text) = text {
                            listeners.send(text);
                        }
                    }
                }
                Output::Done(outcome) => {
                    if let Some(mut listeners) = running.remove(&id) {
                        // Every token counted in the outcome reaches the queen in some frame.
                        if !listeners.held.is_empty() {
                            listeners.send(String::new());
                        }
                        let _ = listeners.done.send(outcome);
                    }
                }
            }
        }
    }
}
