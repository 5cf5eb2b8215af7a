//! Faults, measured: the failover gap (a worker killed mid-stream, to the next token at the
//! client, on another worker), and a queue at four times the slots against a load that fits them
//! (aggregate tokens/s and p99 time to first token, refused requests counted), in one run.
//! `cargo build --release --workspace --bins && cargo bench -p rbee-features --bench faults`

use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_features::bench::median;
use rbee_features::cluster::Cluster;
use rbee_features::signal::{self, Signal};
use serde_json::{Value, json};

const MODEL: &str = "SmolLM2-135M-Instruct";
const FAILOVERS: usize = 5;

fn body(prompt: &str, max_tokens: u32) -> Value {
    json!({"model": MODEL, "stream": true, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": prompt}]})
}

/// The worker the log says took `request` first.
fn serving_worker(cluster: &Cluster, request: &str) -> String {
    let accepted = cluster.events_of("request.accepted");
    let first = accepted.iter().find(|e| e["data"]["request"] == request).expect("the request was accepted");
    first["data"]["worker"].as_str().unwrap().to_string()
}

/// Milliseconds from SIGKILL of the worker serving a stream to the next text delta at the client.
async fn failover_gap_ms(cluster: &Cluster) -> f64 {
    let url = format!("{}/v1/chat/completions", cluster.queen_url);
    let response = cluster.http().post(url).json(&body("Tell me a long story about a bee.", 400)).send().await.unwrap();
    let request = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut bytes = response.bytes_stream();
    let mut seen = 0;
    while seen < 4 {
        seen += String::from_utf8_lossy(&bytes.next().await.unwrap().unwrap()).matches("\"content\":\"").count();
    }
    let worker = serving_worker(cluster, &request);
    let pid = cluster.workers().iter().find(|w| w["id"] == worker.as_str()).and_then(|w| w["pid"].as_u64()).unwrap();
    // What was already on its way is read first: the gap starts at the kill.
    let killed = Instant::now();
    signal::send(pid as u32, Signal::Kill);
    let mut gap = None;
    while let Some(chunk) = bytes.next().await {
        let chunk = String::from_utf8_lossy(&chunk.unwrap()).into_owned();
        if gap.is_none() && killed.elapsed() > Duration::from_millis(5) && chunk.contains("\"content\":\"") {
            gap = Some(killed.elapsed().as_secs_f64() * 1000.0);
        }
    }
    gap.expect("the stream went on after the kill")
}

/// `n` streams at once: aggregate completion tokens per second, p99 seconds to the first delta,
/// and how many were refused.
async fn burst(cluster: &Cluster, n: usize) -> (f64, f64, usize) {
    let url = format!("{}/v1/chat/completions", cluster.queen_url);
    let started = Instant::now();
    let streams = (0..n).map(|_| {
        let request = cluster.http().post(&url).json(&body("Name three flowers bees like.", 48));
        async move {
            let t0 = Instant::now();
            let response = request.send().await.unwrap();
            if response.status() != 200 {
                return None;
            }
            let (mut first, mut text) = (None, String::new());
            let mut bytes = response.bytes_stream();
            while let Some(chunk) = bytes.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                if first.is_none() && text.contains("\"content\":\"") && text.matches("data: ").count() >= 2 {
                    first = Some(t0.elapsed().as_secs_f64());
                }
            }
            let tokens = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .find_map(|c| c["usage"]["completion_tokens"].as_u64())?;
            Some((first?, tokens))
        }
    });
    let done: Vec<Option<(f64, u64)>> = futures::future::join_all(streams).await;
    let elapsed = started.elapsed().as_secs_f64();
    let refused = done.iter().filter(|d| d.is_none()).count();
    let mut firsts: Vec<f64> = done.iter().flatten().map(|d| d.0).collect();
    firsts.sort_by(f64::total_cmp);
    let p99 = firsts[((firsts.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
    let tokens: u64 = done.iter().flatten().map(|d| d.1).sum();
    (tokens as f64 / elapsed, p99, refused)
}

#[tokio::main]
async fn main() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::up(&["--slots", "2"]).expect("rbee up")).await.unwrap();
    let node = cluster.node.clone();
    let start = ["workers", "start", "--node", &node, "--slots", "2", "--timeout-secs", "120"];
    assert!(cluster.rbee(&start).status.success(), "a second worker starts");
    let mut gaps = Vec::new();
    for _ in 0..FAILOVERS {
        gaps.push(failover_gap_ms(&cluster).await);
        println!("failover gap: {:.0} ms", gaps.last().unwrap());
        // Two ready workers again before the next kill.
        if cluster.workers().iter().filter(|w| w["state"] == "Ready").count() < 2 {
            assert!(cluster.rbee(&start).status.success(), "a worker starts in the killed one's place");
        }
    }
    println!("failover gap: median {:.0} ms over {FAILOVERS} kills ({gaps:?})", median(gaps.clone()));
    let slots = 4;
    let (mut fit, mut queued) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        fit.push(burst(&cluster, slots).await);
        queued.push(burst(&cluster, slots * 4).await);
    }
    let rate = |runs: &[(f64, f64, usize)]| median(runs.iter().map(|r| r.0).collect());
    let p99 = |runs: &[(f64, f64, usize)]| median(runs.iter().map(|r| r.1).collect());
    let refused = |runs: &[(f64, f64, usize)]| runs.iter().map(|r| r.2).sum::<usize>();
    println!(
        "queue: {} streams: {:.1} tokens/s, p99 first token {:.2} s, {} refused; {slots} streams: {:.1} tokens/s, p99 {:.2} s, {} refused; ratio {:.2}",
        slots * 4,
        rate(&queued),
        p99(&queued),
        refused(&queued),
        rate(&fit),
        p99(&fit),
        refused(&fit),
        rate(&queued) / rate(&fit)
    );
}
