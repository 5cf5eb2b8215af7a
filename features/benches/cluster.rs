//! Cluster baseline: time to first token through the queen vs straight from the worker, how fast a
//! cancellation frees a slot, and acked appends per second through rbee's `append` vs raw
//! JetStream publishes, in one run. Needs release binaries:
//! `cargo build --release --workspace --bins && cargo bench -p rbee-features --bench cluster`

use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::frames::{self, ChatMessage, Sampling, TokenFrame, WorkAccepted, WorkItem};
use rbee_bus::{Event, EventLog, Expected, Meta, SlotClaimed, WorkerRegistered, subjects};
use rbee_features::bench::{median, seconds_to_first_delta};
use rbee_features::cluster::Cluster;
use rbee_features::infra::Nats;
use serde_json::json;

const RUNS: usize = 9;
const PROMPT: &str = "What is the capital of France? Answer in one sentence.";

/// Seconds from sending the request to the first text delta, through the queen's HTTP API.
async fn ttft_queen(cluster: &Cluster) -> f64 {
    let body = json!({"model": "SmolLM2-135M-Instruct", "stream": true, "max_tokens": 2, "messages": [{"role": "user", "content": PROMPT}]});
    seconds_to_first_delta(cluster.http().post(format!("{}/v1/chat/completions", cluster.queen_url)).json(&body)).await
}

/// Seconds from dispatching a work item to the first token frame, straight over NATS.
async fn ttft_direct(log: &EventLog, node: &str, worker: &str, n: usize) -> f64 {
    let request = format!("bench-direct-{n}-{}", uuid::Uuid::now_v7().simple());
    let item = WorkItem {
        request: request.clone(),
        slot: 0,
        messages: vec![ChatMessage { role: "user".into(), content: PROMPT.into() }],
        max_tokens: Some(2),
        sampling: Sampling::default(),
        traceparent: None,
        resume: Vec::new(),
    };
    let mut tokens = log.client().subscribe(subjects::tokens(node, worker, &request)).await.unwrap();
    let t0 = Instant::now();
    let reply = log.client().request(subjects::work(node, worker), frames::encode(&item).into()).await.unwrap();
    assert_eq!(frames::decode::<WorkAccepted>(&reply.payload).unwrap(), WorkAccepted::Accepted);
    let mut first = None;
    while let Some(msg) = tokens.next().await {
        match frames::decode::<TokenFrame>(&msg.payload).unwrap() {
            TokenFrame::Delta { .. } if first.is_none() => first = Some(t0.elapsed().as_secs_f64()),
            TokenFrame::Done { .. } | TokenFrame::Error { .. } => break,
            _ => {}
        }
    }
    // Let the worker record the outcome and free its slot before the next run.
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.expect("a delta arrived")
}

/// Milliseconds from `request.cancelled` to `slot.released`, from the log's own timestamps.
async fn cancel_to_release_ms(cluster: &Cluster) -> f64 {
    let body = json!({"model": "SmolLM2-135M-Instruct", "stream": true, "max_tokens": 400, "messages": [{"role": "user", "content": "Write a long story about a bee."}]});
    let response =
        cluster.http().post(format!("{}/v1/chat/completions", cluster.queen_url)).json(&body).send().await.unwrap();
    let request = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut bytes = response.bytes_stream();
    let mut chunks = 0;
    while chunks < 4 {
        chunks += String::from_utf8_lossy(&bytes.next().await.unwrap().unwrap()).matches("data: ").count();
    }
    drop(bytes);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events: Vec<_> =
            cluster.events(false).into_iter().filter(|e| e["data"]["request"] == request.as_str()).collect();
        let at = |kind: &str| events.iter().find(|e| e["type"] == kind).and_then(|e| e["at_ms"].as_u64());
        if let (Some(c), Some(r)) = (at("request.cancelled"), at("slot.released")) {
            return (r - c) as f64;
        }
        assert!(Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Acked appends per second: sequential (one in flight), through rbee's `append` with an
/// expected version, and raw JetStream publishes to the same stream.
async fn appends_per_second(n: usize) -> (f64, f64, f64, f64, f64) {
    let nats = Nats::start().await;
    let log = EventLog::connect(&nats.admin).await.unwrap();
    log.ensure_streams(&Default::default()).await.unwrap();
    let claim = |i: usize, worker: &str| {
        Event::SlotClaimed(SlotClaimed { worker: worker.into(), node: "n".into(), slot: 0, request: format!("r{i}") })
    };
    let raw_payload = frames::encode(&claim(0, "raw"));

    // Sequential: each waits for its ack.
    let t0 = Instant::now();
    let mut at = log.append(register("seq"), Expected::NoStream, &Meta::default()).await.unwrap();
    for i in 0..n {
        at = log.append(claim(i, "seq"), Expected::At(at), &Meta::default()).await.unwrap();
    }
    let rbee_seq = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..n {
        log.jetstream().publish("rbee.ev.worker.raw", raw_payload.clone().into()).await.unwrap().await.unwrap();
    }
    let raw_seq = n as f64 / t0.elapsed().as_secs_f64();

    // Pipelined: 256 in flight, each on its own aggregate (first event, expected empty).
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let log = log.clone();
            async move { log.append(register(&format!("p{i}")), Expected::NoStream, &Meta::default()).await.unwrap() }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    let rbee_pipe = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (js, payload) = (log.jetstream().clone(), raw_payload.clone());
            async move { js.publish(format!("rbee.ev.worker.rawp{i}"), payload.into()).await.unwrap().await.unwrap() }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    let raw_pipe = n as f64 / t0.elapsed().as_secs_f64();

    // Raw publishes carrying the same two server-side features rbee relies on: dedup by
    // Nats-Msg-Id and the expected-last-subject-sequence check.
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (js, payload) = (log.jetstream().clone(), raw_payload.clone());
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
                headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
                js.publish_with_headers(format!("rbee.ev.worker.rawh{i}"), headers, payload.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    let raw_headers_pipe = n as f64 / t0.elapsed().as_secs_f64();
    (rbee_seq, raw_seq, rbee_pipe, raw_pipe, raw_headers_pipe)
}

fn register(worker: &str) -> Event {
    Event::WorkerRegistered(WorkerRegistered {
        worker: worker.into(),
        node: "n".into(),
        model: "m".into(),
        slots: 1,
        pid: 1,
        backend: "cpu".into(),
    })
}

#[tokio::main]
async fn main() {
    let cluster = Cluster::up(&[]).expect("cluster starts");
    let log = EventLog::connect(&cluster.admin).await.unwrap();
    let worker = cluster.workers()[0]["id"].as_str().unwrap().to_string();
    ttft_queen(&cluster).await; // warm-up
    let (mut via_queen, mut direct) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        via_queen.push(ttft_queen(&cluster).await);
        direct.push(ttft_direct(&log, &cluster.node, &worker, i).await);
    }
    let (q, d) = (median(via_queen) * 1000.0, median(direct) * 1000.0);
    let mut cancels = Vec::new();
    for _ in 0..5 {
        cancels.push(cancel_to_release_ms(&cluster).await);
    }
    let cancel = median(cancels);
    drop(cluster);
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(appends_per_second(2000).await);
    }
    let pick = |f: fn(&(f64, f64, f64, f64, f64)) -> f64| median(runs.iter().map(f).collect());
    let (rs, raws, rp, rawp, rawh) = (pick(|r| r.0), pick(|r| r.1), pick(|r| r.2), pick(|r| r.3), pick(|r| r.4));
    println!("cluster: release build, {RUNS} runs (appends: 3 runs of 2000), medians");
    println!("| measure | value | baseline | ratio |\n|---|---|---|---|");
    println!(
        "| time to first token, short prompt | {q:.0} ms through the queen (HTTP+SSE) | {d:.0} ms straight from the worker (NATS) | {:.2} |",
        q / d
    );
    println!("| client disconnect to slot released | {cancel:.0} ms (request.cancelled -> slot.released) | | |");
    println!(
        "| acked appends/s, one at a time | {rs:.0} rbee append with expected version | {raws:.0} raw JetStream publish | {:.2} |",
        rs / raws
    );
    println!(
        "| acked appends/s, 256 in flight | {rp:.0} rbee append (new aggregates) | {rawp:.0} raw JetStream publish | {:.2} |",
        rp / rawp
    );
    println!(
        "| acked appends/s, 256 in flight | {rp:.0} rbee append (new aggregates) | {rawh:.0} raw publish with Msg-Id + expected-sequence headers | {:.2} |",
        rp / rawh
    );
}
