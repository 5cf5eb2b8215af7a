//! The cost of authentication, in one run: acked appends per second as the queen's NATS identity
//! on a server that requires credentials and enforces permissions, against anonymous appends on a
//! server without them; and time to first token through a queen that checks API keys, against a
//! `--no-auth` queen on the same cluster and worker. Runs interleaved, medians, ratios.
//! `cargo build --release --workspace --bins && cargo bench -p rbee-features --bench auth`

use std::process::{Command, Stdio};
use std::time::Instant;

use rbee_bus::{Event, EventLog, Expected, Meta, NatsAccess, WorkerRegistered};
use rbee_features::bench::{median, seconds_to_first_delta};
use rbee_features::cluster::Cluster;
use rbee_features::infra::Nats;
use rbee_local::trust::Identity;
use serde_json::json;

const ROUNDS: usize = 5;
const APPENDS: usize = 2000;
const TTFT_RUNS: usize = 15;

/// Acked appends per second, one at a time, each the first event of a new aggregate.
async fn appends_per_sec(log: &EventLog, round: usize) -> f64 {
    let t0 = Instant::now();
    for i in 0..APPENDS {
        let event = Event::WorkerRegistered(WorkerRegistered {
            worker: format!("bench-{round}-{i}-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
            node: "n1".into(),
            model: "m".into(),
            slots: 1,
            pid: 1,
            backend: "cpu".into(),
        });
        log.append(event, Expected::NoStream, &Meta::default()).await.unwrap();
    }
    APPENDS as f64 / t0.elapsed().as_secs_f64()
}

/// Seconds to the first text delta through the queen at `url` (with `key` when given).
async fn ttft(url: &str, key: Option<&str>) -> f64 {
    let body = json!({"model": "SmolLM2-135M-Instruct", "stream": true, "max_tokens": 2,
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]});
    let request = rbee_features::http().post(format!("{url}/v1/chat/completions")).json(&body);
    let request = match key {
        Some(k) => request.bearer_auth(k),
        None => request,
    };
    seconds_to_first_delta(request).await
}

#[tokio::main]
async fn main() {
    // Appends: the queen's identity on a server with credentials, anonymous on one without.
    let (closed, tls, open) = (Nats::start().await, Nats::start_with_tls().await, Nats::start_without_auth().await);
    let as_queen = EventLog::connect(&NatsAccess::new(&closed.url, Some(closed.creds(Identity::Queen)))).await.unwrap();
    let queen_tls = NatsAccess::new(&tls.url, Some(tls.creds(Identity::Queen))).with_tls(tls.ca(), tls.cert());
    let as_queen_tls = EventLog::connect(&queen_tls).await.unwrap();
    let anonymous = EventLog::connect(&NatsAccess::new(&open.url, None)).await.unwrap();
    for log in [&as_queen, &as_queen_tls, &anonymous] {
        log.ensure_streams(&Default::default()).await.unwrap();
    }
    let (mut with_auth, mut with_tls, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        with_auth.push(appends_per_sec(&as_queen, round).await);
        with_tls.push(appends_per_sec(&as_queen_tls, round).await);
        without.push(appends_per_sec(&anonymous, round).await);
    }
    let (appends_auth, appends_tls, appends_open) = (median(with_auth), median(with_tls), median(without));

    // Time to first token: the cluster's queen (API keys) and a --no-auth queen beside it.
    let cluster = tokio::task::spawn_blocking(|| Cluster::up(&[]).expect("rbee up")).await.unwrap();
    let port = rbee_local::process::free_port().unwrap();
    let mut open_queen = Command::new(rbee_features::bin("rbee-queen"))
        .args(["--no-auth", "--bind", &format!("127.0.0.1:{port}")])
        .envs(cluster.queen_env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let open_url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(format!("{open_url}/health")).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Warm both paths once.
    ttft(&cluster.queen_url, Some(&cluster.api_key)).await;
    ttft(&open_url, None).await;
    let (mut keyed, mut unkeyed) = (Vec::new(), Vec::new());
    for _ in 0..TTFT_RUNS {
        keyed.push(ttft(&cluster.queen_url, Some(&cluster.api_key)).await);
        unkeyed.push(ttft(&open_url, None).await);
    }
    let _ = open_queen.kill();
    let _ = open_queen.wait();
    let (ttft_keyed, ttft_open) = (median(keyed) * 1000.0, median(unkeyed) * 1000.0);

    println!(
        "auth cost: nats-server 2.15.1 on loopback; medians of {ROUNDS} rounds x {APPENDS} appends and {TTFT_RUNS} requests, interleaved"
    );
    println!("| measure | with auth | without | ratio (aim >= 0.95) |\n|---|---|---|---|");
    println!(
        "| acked appends/s, one at a time (queen's JWT identity vs anonymous) | {appends_auth:.0} | {appends_open:.0} | {:.2} |",
        appends_auth / appends_open
    );
    println!(
        "| acked appends/s, one at a time (queen's JWT identity over TLS vs anonymous plain TCP) | {appends_tls:.0} | {appends_open:.0} | {:.2} |",
        appends_tls / appends_open
    );
    println!(
        "| time to first token through the queen (API key vs --no-auth), ms | {ttft_keyed:.1} | {ttft_open:.1} | {:.2} |",
        ttft_open / ttft_keyed
    );
}
