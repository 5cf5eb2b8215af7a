//! The log as the system of record, measured: archive throughput into Postgres, rebuild speed from
//! JetStream and from the archive, queen restart with and without a checkpoint, catalog queries.
//! `cargo build --release --workspace --bins && cargo bench -p rbee-features --bench log`
//! (RBEE_BENCH_EVENTS sets the log size, default 1,000,000).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::read::{self, StartAt};
use rbee_bus::*;
use rbee_features::bench::median;
use rbee_features::infra::{Nats, Postgres};
use rbee_projections::{Catalog, ClusterView};
use tokio_util::sync::CancellationToken;

/// A realistic mix: 100 workers, each request a claim, an acceptance, a finish and a release.
fn event(i: u64) -> Event {
    let (worker, request) = (format!("w{}", i / 4 % 100), format!("r{}", i / 4));
    match i % 4 {
        0 => Event::SlotClaimed(SlotClaimed { worker, node: "n".into(), slot: 0, request }),
        1 => Event::RequestAccepted(RequestAccepted {
            request,
            model: "m".into(),
            worker,
            slot: 0,
            max_tokens: Some(64),
            stream: true,
            key: Some(format!("k-{:012}", i / 4 % 10)),
        }),
        2 => Event::RequestFinished(RequestFinished {
            request,
            worker,
            finish_reason: FinishReason::Stop,
            prompt_tokens: 30,
            completion_tokens: 20,
            time_to_first_token_ms: 100,
            duration_ms: 900,
            error_code: None,
        }),
        _ => Event::SlotReleased(SlotReleased { worker, node: "n".into(), slot: 0, request }),
    }
}

async fn fill(log: &EventLog, n: u64) {
    let registrations = (0..100).map(|w| {
        Event::WorkerRegistered(WorkerRegistered {
            worker: format!("w{w}"),
            node: "n".into(),
            model: "m".into(),
            slots: 1,
            pid: 1,
            backend: "cpu".into(),
        })
    });
    for e in registrations {
        log.append(e, Expected::Any, &Meta::default()).await.unwrap();
    }
    futures::stream::iter(0..n - 100)
        .map(|i| {
            let js = log.jetstream().clone();
            async move {
                let e = event(i);
                let (headers, body) = Envelope::new(e.clone(), i + 2, &Meta::default()).encode();
                js.publish_with_headers(subjects::for_event(&e), headers, body.into()).await.unwrap().await.unwrap()
            }
        })
        .buffer_unordered(512)
        .for_each(|_| async {})
        .await;
}

async fn rebuild_from_jetstream(log: &EventLog) -> (ClusterView, f64) {
    let end = read::last_sequence(log, subjects::EVENTS_STREAM).await.unwrap();
    let t0 = Instant::now();
    let mut view = ClusterView::default();
    let mut events = Box::pin(read::follow(log, subjects::EVENTS_STREAM, StartAt::Start).await.unwrap());
    while let Some(Ok(d)) = events.next().await {
        view.apply(&d.recorded);
        if d.recorded.stream_seq >= end {
            break;
        }
    }
    (view, t0.elapsed().as_secs_f64())
}

fn queen(nats: &Nats, pg: &Postgres, port: u16) -> Child {
    Command::new(rbee_features::bin("rbee-queen"))
        .args(["--nats-url", &nats.url, "--database-url", &pg.url, "--bind", &format!("127.0.0.1:{port}")])
        .env("RBEE_NATS_CREDS", nats.creds(rbee_local::trust::Identity::Queen))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// How long a queen may take to catch up before the bench gives up.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(600);

/// Seconds from starting a queen to its view covering the log's last event.
async fn queen_caught_up(nats: &Nats, pg: &Postgres, end: u64) -> (Child, f64) {
    let port = rbee_local::process::free_port().unwrap();
    let t0 = Instant::now();
    let mut child = queen(nats, pg, port);
    let client = rbee_features::http();
    while t0.elapsed() < CATCH_UP_DEADLINE {
        let seen = match client.get(format!("http://127.0.0.1:{port}/health")).send().await {
            Ok(r) => r.json::<serde_json::Value>().await.ok().and_then(|h| h["last_seq"].as_u64()),
            Err(_) => None,
        };
        if seen >= Some(end) {
            return (child, t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the queen did not reach sequence {end} within {CATCH_UP_DEADLINE:?}");
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("RBEE_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let (nats, pg) = (Nats::start().await, Postgres::start().await);
    let log = EventLog::connect(&nats.admin).await.unwrap();
    log.ensure_streams(&Default::default()).await.unwrap();
    let t0 = Instant::now();
    fill(&log, n).await;
    let fill_rate = n as f64 / t0.elapsed().as_secs_f64();

    // Archive: the archiver copies everything into Postgres.
    let pool = archive::connect_store(&pg.url).await.unwrap();
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let (status, _) = tokio::sync::watch::channel(Default::default());
    let archiver = tokio::spawn(archive::run_archiver(log.clone(), pool.clone(), status, stop.clone()));
    while archive::archived_count(&pool).await.unwrap() < n as i64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let archive_rate = n as f64 / t0.elapsed().as_secs_f64();
    stop.cancel();
    archiver.await.unwrap();

    // Rebuild from JetStream, 3 runs.
    let mut js_times = Vec::new();
    let mut digest = String::new();
    for _ in 0..3 {
        let (view, secs) = rebuild_from_jetstream(&log).await;
        digest = view.digest();
        js_times.push(secs);
    }
    let js_secs = median(js_times);

    // Rebuild from the Postgres archive, 3 runs.
    let mut pg_times = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut view = ClusterView::default();
        for rec in archive::read_archive(&pool, 0, n + 1).await.unwrap() {
            view.apply(&rec);
        }
        pg_times.push(t0.elapsed().as_secs_f64());
        assert_eq!(view.digest(), digest, "the archive folds to the same state");
    }
    let pg_secs = median(pg_times);

    // Queen restart: without a checkpoint (full rebuild), then with the checkpoint it wrote.
    let (mut first, cold) = queen_caught_up(&nats, &pg, n).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a checkpoint is written every 2 s
    first.kill().unwrap();
    first.wait().unwrap();
    let mut warm = Vec::new();
    for _ in 0..3 {
        let (mut q, secs) = queen_caught_up(&nats, &pg, n).await;
        warm.push(secs);
        q.kill().unwrap();
        q.wait().unwrap();
    }
    let warm = median(warm);

    // Catalog queries over 10,000 models on 10 nodes.
    let mut catalog = Catalog::default();
    for i in 0..10_000u64 {
        let e = Event::ModelRegistered(ModelRegistered {
            model: format!("org{}-model-{i:05}", i % 37),
            node: format!("node{}", i % 10),
            path: "/m".into(),
            size_bytes: i,
            sha256: "00".into(),
            memory_required_bytes: i,
        });
        catalog.apply(&Recorded {
            stream_seq: i + 1,
            subject: subjects::for_event(&e),
            envelope: Envelope::new(e, 1, &Meta::default()),
        });
    }
    let mut lat = Vec::new();
    let mut after: Option<(String, String)> = None;
    for q in 0..10_000u64 {
        let t0 = Instant::now();
        let page = catalog.page(Some(&format!("node{}", q % 10)), after.as_ref(), 50);
        let next = page.last().map(|e| (e.model.clone(), e.node.clone()));
        std::hint::black_box(catalog.knows(&format!("org{}-model-{:05}", q % 37, q)));
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
        after = if next.is_some() && q % 20 != 19 { next } else { None };
    }
    lat.sort_by(f64::total_cmp);
    let p99 = lat[lat.len() * 99 / 100];

    println!(
        "log: {n} events (100 workers; claim/accept/finish/release per request), nats-server 2.15.1 file storage, Postgres 15; medians of 3"
    );
    println!("| measure | value | aim |\n|---|---|---|");
    println!("| fill (raw publishes, 512 in flight) | {fill_rate:.0} events/s | |");
    println!(
        "| archive into Postgres (UNNEST batches of 2000) | {archive_rate:.0} events/s | keeps up with pipelined appends (57k/s) |"
    );
    println!(
        "| rebuild registry + catalog from JetStream | {js_secs:.2} s ({:.0} events/s) | < 5 s for 1M |",
        n as f64 / js_secs
    );
    println!("| rebuild from the Postgres archive | {pg_secs:.2} s ({:.0} events/s) | |", n as f64 / pg_secs);
    println!("| queen start to caught up, no checkpoint | {cold:.2} s | |");
    println!("| queen restart to caught up, from its checkpoint | {warm:.3} s | < 1 s |");
    println!("| catalog page of 50 by node + lookup, 10,000 models, p99 | {p99:.0} us | < 1 ms |");
}
