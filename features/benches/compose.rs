//! The compose cluster, measured in one run: time to first token and aggregate tokens/s through
//! the balancer against straight to one queen; acknowledged appends per second to a stream of 3
//! replicas against one of 1; the longest gap in acknowledged appends when the server leading a
//! 3-replica stream is SIGKILLed (the election); and with a machine (hive-b) cut off the network,
//! the time until the log marks its worker stale, what requests got meanwhile, and the time from
//! reconnecting it until its worker is ready again.
//! `cargo build --workspace --bins && cargo bench -p rbee-features --bench compose --profile dev`
//! (the images hold the binaries `cargo build` made: the dev profile, whose engine and its
//! dependencies are optimised; ratios are within one run).

use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use futures::StreamExt;
use rbee_features::bench::median;
use rbee_features::compose::Compose;
use serde_json::{Value, json};

const MODEL: &str = "SmolLM2-135M-Instruct";
const ROUNDS: usize = 5;
const STREAMS: usize = 4;
const ELECTIONS: usize = 3;

fn body() -> Value {
    json!({"model": MODEL, "stream": true, "max_tokens": 48, "temperature": 0,
        "messages": [{"role": "user", "content": "Name three flowers bees like."}]})
}

/// `STREAMS` streams at once to `base`: the median seconds to the first delta, and aggregate
/// completion tokens per second.
async fn round(compose: &Compose, base: &str) -> (f64, f64) {
    let url = format!("{base}/v1/chat/completions");
    let started = Instant::now();
    let streams = (0..STREAMS).map(|_| {
        let request = compose.cluster.http().post(&url).json(&body());
        async move {
            let response = request.send().await.expect("the cluster answers");
            assert_eq!(response.status().as_u16(), 200);
            let mut bytes = response.bytes_stream();
            let (mut first, mut sse) = (None, String::new());
            while let Some(chunk) = bytes.next().await {
                sse.push_str(&String::from_utf8_lossy(&chunk.expect("the stream")));
                if first.is_none() && sse.contains("\"content\":\"") {
                    first = Some(started.elapsed().as_secs_f64());
                }
            }
            let tokens = sse
                .lines()
                .rev()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .find_map(|c| c["usage"]["completion_tokens"].as_u64())
                .unwrap_or(0);
            (first.unwrap_or(f64::NAN), tokens)
        }
    });
    let results = futures::future::join_all(streams).await;
    let elapsed = started.elapsed().as_secs_f64();
    let firsts: Vec<f64> = results.iter().map(|r| r.0).collect();
    let tokens: u64 = results.iter().map(|r| r.1).sum();
    (median(firsts), tokens as f64 / elapsed)
}

/// A fresh stream named `name` of `replicas` replicas on subjects `<name>.>`.
async fn bench_stream(js: &async_nats::jetstream::Context, name: &str, replicas: usize) {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create the bench stream");
}

/// Acknowledged appends per second, one after another, for `secs` seconds.
async fn appends_per_second(js: &async_nats::jetstream::Context, name: &str, secs: u64) -> f64 {
    let started = Instant::now();
    let mut acked = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let ack = js.publish(format!("{name}.x"), "0123456789abcdef".into()).await.expect("publish").await;
        if ack.is_ok() {
            acked += 1;
        }
    }
    acked as f64 / started.elapsed().as_secs_f64()
}

/// The longest time without an acknowledged append while the server leading `name` is killed
/// (and started again after 10 s).
async fn election_gap(compose: &Compose, js: &async_nats::jetstream::Context, name: &str) -> f64 {
    let leader = js.get_stream(name).await.unwrap().info().await.unwrap().cluster.clone().unwrap().leader.unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let publishing = async {
        let (mut last, mut longest) = (Instant::now(), Duration::ZERO);
        while Instant::now() < until {
            let sent = tokio::time::timeout(Duration::from_secs(2), async {
                js.publish(format!("{name}.x"), "election".into()).await.ok()?.await.ok()
            });
            if sent.await.ok().flatten().is_some() {
                longest = longest.max(last.elapsed());
                last = Instant::now();
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        longest.as_secs_f64()
    };
    let fault = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        compose.docker(&["kill"], &leader);
        tokio::time::sleep(Duration::from_secs(10)).await;
        compose.docker(&["start"], &leader);
    };
    let (gap, ()) = tokio::join!(publishing, fault);
    // Let the restarted server catch up before the next election.
    tokio::time::sleep(Duration::from_secs(10)).await;
    gap
}

/// The state of hive-b's worker in the registry; None when it has none.
fn hive_b_state(compose: &Compose) -> Option<String> {
    let workers = compose.cluster.workers();
    workers.iter().find(|w| w["node"] == "hive-b").map(|w| w["state"].as_str().unwrap_or_default().to_string())
}

/// Cuts hive-b off: seconds until its worker is no longer ready (stale or removed), the requests
/// sent one after another meanwhile (served, failed), and seconds from reconnecting it until its
/// worker is ready again.
async fn partition(compose: &Compose) -> (f64, usize, usize, f64) {
    let network = compose.network();
    let url = format!("{}/v1/chat/completions", compose.cluster.queen_url);
    let small = json!({"model": MODEL, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello."}]});
    let cut = Instant::now();
    compose.docker(&["network", "disconnect", &network], "hive-b");
    let (mut served, mut failed) = (0, 0);
    let unready_after = loop {
        if hive_b_state(compose).is_none_or(|s| s != "Ready") {
            break cut.elapsed().as_secs_f64();
        }
        let sent = compose.cluster.http().post(&url).json(&small).timeout(Duration::from_secs(30)).send().await;
        match sent {
            Ok(r) if r.status() == 200 => served += 1,
            _ => failed += 1,
        }
        assert!(cut.elapsed() < Duration::from_secs(120), "hive-b's worker stayed ready for 2 minutes");
    };
    compose.docker(&["network", "connect", "--alias", "hive-b", &network], "hive-b");
    let healed = Instant::now();
    while hive_b_state(compose).is_none_or(|s| s != "Ready") {
        assert!(healed.elapsed() < Duration::from_secs(300), "hive-b's worker not ready 5 minutes after healing");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (unready_after, served, failed, healed.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let compose = Compose::up().expect("the compose cluster starts");
    let balancer = compose.cluster.queen_url.clone();
    let queen = format!("http://127.0.0.1:{}", compose.setting("RBEE_QUEEN_PORT"));
    let _ = round(&compose, &balancer).await; // warm-up
    let (mut ttft_lb, mut ttft_q, mut tps_lb, mut tps_q) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let (t, r) = round(&compose, &balancer).await;
        ttft_lb.push(t);
        tps_lb.push(r);
        let (t, r) = round(&compose, &queen).await;
        ttft_q.push(t);
        tps_q.push(r);
    }
    let (ttft_lb, ttft_q, tps_lb, tps_q) =
        (median(ttft_lb.clone()), median(ttft_q.clone()), median(tps_lb.clone()), median(tps_q.clone()));
    println!("{STREAMS} streams at once, {ROUNDS} rounds each (medians):");
    println!("  through the balancer: first token {:.0} ms, {tps_lb:.1} tokens/s", ttft_lb * 1000.0);
    println!("  straight to queen-1:  first token {:.0} ms, {tps_q:.1} tokens/s", ttft_q * 1000.0);
    println!("  balancer / straight: tokens/s {:.2}, first token {:.2}", tps_lb / tps_q, ttft_lb / ttft_q);

    let log = rbee_bus::EventLog::connect(&compose.cluster.admin).await.expect("admin connects");
    let js = log.jetstream();
    bench_stream(js, "bench-r1", 1).await;
    bench_stream(js, "bench-r3", 3).await;
    let (mut r1, mut r3) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        r1.push(appends_per_second(js, "bench-r1", 3).await);
        r3.push(appends_per_second(js, "bench-r3", 3).await);
    }
    let (r1, r3) = (median(r1.clone()), median(r3.clone()));
    println!(
        "acked appends/s, one after another (medians of {ROUNDS} x 3 s): 1 replica {r1:.0}, 3 replicas {r3:.0}, ratio 3/1 {:.2}",
        r3 / r1
    );

    let mut gaps = Vec::new();
    for _ in 0..ELECTIONS {
        gaps.push(election_gap(&compose, js, "bench-r3").await);
    }
    println!(
        "longest gap in acked appends when the stream's leader is SIGKILLed: {gaps:.2?} s, median {:.2} s",
        median(gaps.clone())
    );
    let _ = js.delete_stream("bench-r1").await;
    let _ = js.delete_stream("bench-r3").await;

    let (unready, served, failed, back) = partition(&compose).await;
    println!(
        "hive-b cut off the network: its worker not ready after {unready:.1} s (meanwhile {served} requests served, \
         {failed} failed); reconnected, its worker ready again after {back:.1} s"
    );
    compose.down();
}
