//! Crash safety of the archive against real processes: a queen archiving the log is killed with
//! SIGKILL at random moments while events are being appended; after a final restart the Postgres
//! archive holds every acknowledged event exactly once, in stream order, with no gap.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use rbee_features::KillOnDrop;
use std::time::Duration;

use rbee_bus::read::raw_to_end;
use rbee_bus::{Event, EventLog, Expected, Meta, RequestCancelled, subjects};
use rbee_features::infra::{Nats, Postgres};
use rbee_features::poll::eventually;
use rbee_features::signal::{self, Signal};
use rbee_local::trust::Identity;

fn queen(nats: &Nats, pg: &Postgres) -> KillOnDrop {
    queen_on(nats, pg, rbee_local::process::free_port().unwrap())
}

fn queen_on(nats: &Nats, pg: &Postgres, port: u16) -> KillOnDrop {
    KillOnDrop(
        Command::new(rbee_features::bin("rbee-queen"))
            .args(["--nats-url", &nats.url, "--database-url", &pg.url, "--bind", &format!("127.0.0.1:{port}")])
            .env("RBEE_NATS_CREDS", nats.creds(Identity::Queen))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rbee-queen starts"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_archiving_queen_at_random_moments_loses_no_event() {
    let (nats, pg) = (Nats::start().await, Postgres::start().await);
    let log = EventLog::connect(&nats.admin).await.unwrap();
    log.ensure_streams(&Default::default()).await.unwrap();
    let mut next = kill_schedule();

    // Appends 40 batches of 100 events, one batch every 75 ms, while the queens come and go.
    let writer_log = log.clone();
    let writer = tokio::spawn(async move {
        let meta = Meta::default();
        let mut acked = 0u64;
        for batch in 0..40 {
            let appends = (0..100).map(|i| {
                // Request events: history the queens only fold (worker events would wake their reapers).
                let request = format!("r{batch}-{i}");
                let event = Event::RequestCancelled(RequestCancelled { request, reason: "test".into() });
                writer_log.append(event, Expected::NoStream, &meta)
            });
            acked += futures::future::join_all(appends).await.into_iter().filter(|r| r.is_ok()).count() as u64;
            tokio::time::sleep(Duration::from_millis(75)).await;
        }
        acked
    });

    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&pg.url).await.unwrap();
    // (archived, in the log) right after each kill.
    let mut at_kill: Vec<(i64, u64)> = Vec::new();
    for _ in 0..6 {
        let q = queen(&nats, &pg);
        tokio::time::sleep(Duration::from_millis(300 + next(500))).await;
        drop(q); // SIGKILL
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap_or(0);
        let logged = rbee_bus::read::last_sequence(&log, subjects::EVENTS_STREAM).await.unwrap();
        at_kill.push((n, logged));
    }
    println!("(archived, in the log) when each queen was killed: {at_kill:?}");
    // A kill that landed while that queen was archiving a live stream: it had archived more than its
    // predecessor left, and the writer was still appending (the archiver keeps up within a batch, so
    // the archive often equals the log at the instant of the kill).
    let mid_archive = at_kill
        .iter()
        .enumerate()
        .filter(|(i, (n, logged))| *n > i.checked_sub(1).map_or(0, |p| at_kill[p].0) && *logged < 4000)
        .count();
    assert!(mid_archive >= 1, "no kill landed while a queen was archiving: {at_kill:?}");
    let acked = writer.await.unwrap();
    assert_eq!(acked, 4000, "every append was acknowledged");

    let port = rbee_local::process::free_port().unwrap();
    let last = queen_on(&nats, &pg, port);
    let in_log: Vec<_> = raw_to_end(&log, subjects::EVENTS_STREAM).await.unwrap();
    let expected = in_log.len() as i64;
    eventually("the archive catches up with the log", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
        if n == expected { Ok(()) } else { Err(n) }
    })
    .await;
    // The restarted queen's view (from a checkpoint written between kills, or rebuilt) equals a fresh fold.
    let mut fresh = rbee_projections::ClusterView::default();
    for item in
        rbee_bus::read::read_to_end(&log, subjects::EVENTS_STREAM, rbee_bus::read::StartAt::Start).await.unwrap()
    {
        fresh.apply(&item.unwrap());
    }
    let health_url = format!("http://127.0.0.1:{port}/health");
    eventually("the restarted queen's view equals a fresh rebuild", Duration::from_secs(30), || async {
        let h: serde_json::Value = match rbee_features::http().get(&health_url).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(e) => return Err(e.to_string()),
        };
        if h["digest"] == fresh.digest().as_str() { Ok(()) } else { Err(h.to_string()) }
    })
    .await;
    drop(last);

    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT stream_seq FROM events ORDER BY stream_seq").fetch_all(&pool).await.unwrap();
    assert_eq!(seqs, (1..=expected).collect::<Vec<_>>(), "no gap, no duplicate");
    let archived: BTreeSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT event_id FROM events")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.to_string())
        .collect();
    let logged: BTreeSet<String> = in_log
        .iter()
        .map(|e| e.headers.iter().find(|(k, _)| k == "Nats-Msg-Id").map(|(_, v)| v.clone()).unwrap())
        .collect();
    assert_eq!(archived, logged, "the archive holds exactly the log's events");
}

/// A hive killed with SIGKILL at random moments while worker starts are requested: after a final
/// restart every requested worker is ready (commands are acked only once carried out, and a
/// redelivered command is not carried out twice), and a queen's view equals a fresh fold of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_hive_at_random_moments_loses_no_worker_start() {
    use rbee_bus::WorkerStartRequested;
    let cluster = rbee_features::cluster::Cluster::up(&["--no-worker"]).expect("rbee up");
    let file = cluster.file();
    let up_hive = file["hive_pid"].as_i64().unwrap() as i32;
    signal::send(up_hive as u32, Signal::Kill);
    let hive = || {
        let child = Command::new(rbee_features::bin("rbee-hive"))
            .args(["--node", &cluster.node])
            .envs(cluster.hive_env(&cluster.node))
            .arg("--data-dir")
            .arg(&cluster.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rbee-hive starts");
        rbee_features::KillOnDrop(child)
    };
    let log = EventLog::connect(&cluster.admin).await.unwrap();
    let model = rbee_features::default_model_file();
    let mut next = kill_schedule();
    let mut workers = Vec::new();
    let mut current = hive();
    for round in 0..4 {
        let worker = format!("{}-crash{round}", cluster.node);
        let command = Event::WorkerStartRequested(WorkerStartRequested {
            node: cluster.node.clone(),
            worker: worker.clone(),
            model: "SmolLM2-135M-Instruct".into(),
            source: format!("file://{}", model.display()),
            sha256: None,
            slots: 1,
            backend: "cpu".into(),
            device: None,
        });
        log.append(command, Expected::Any, &Meta::default()).await.unwrap();
        workers.push(worker);
        tokio::time::sleep(Duration::from_millis(next(900))).await;
        drop(current);
        current = hive();
    }
    let ready = eventually("every requested worker is ready", Duration::from_secs(90), || async {
        let mut view = rbee_projections::ClusterView::default();
        for item in
            rbee_bus::read::read_to_end(&log, subjects::EVENTS_STREAM, rbee_bus::read::StartAt::Start).await.unwrap()
        {
            view.apply(&item.unwrap());
        }
        let states: Vec<_> = workers.iter().map(|w| view.registry.workers.get(w).map(|x| (x.state, x.pid))).collect();
        if states.iter().all(|s| matches!(s, Some((rbee_bus::WorkerState::Ready, _)))) {
            Ok((states, view))
        } else {
            Err(states)
        }
    })
    .await;
    let (states, _) = ready;
    for w in &workers {
        let registrations = rbee_bus::read::read_subject(&log, &subjects::worker(&cluster.node, w)).await.unwrap();
        let count = registrations.iter().filter(|r| matches!(r.envelope.event, Event::WorkerRegistered(_))).count();
        assert_eq!(count, 1, "{w} registered once");
    }
    eventually("the queen's view equals a fresh fold of the same log", Duration::from_secs(10), || async {
        let mut fresh = rbee_projections::ClusterView::default();
        for item in
            rbee_bus::read::read_to_end(&log, subjects::EVENTS_STREAM, rbee_bus::read::StartAt::Start).await.unwrap()
        {
            fresh.apply(&item.unwrap());
        }
        let h: serde_json::Value = rbee_features::http()
            .get(format!("{}/health", cluster.queen_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if h["digest"] == fresh.digest().as_str() { Ok(()) } else { Err((h, fresh.last_seq)) }
    })
    .await;
    // Stop what this test's hives started: the last hive stops its own workers; earlier hives' workers
    // are stopped by the pids the log recorded (processes those hives spawned for this test).
    drop(current);
    for (_, pid) in states.into_iter().flatten() {
        signal::send(pid, Signal::Terminate);
    }
}

/// A download whose hive is SIGKILLed at a random offset, 20 times in a row (a new download each
/// time): after the hive restarts, every download ends with a sha256-verified file, resumed from the
/// last recorded chunk, so the hive fetches at most one chunk twice. (What the hub sent twice also
/// counts bytes that were still in socket buffers when the hive died; it is reported, not bounded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_killed_at_random_offsets_resumes_to_a_verified_file() {
    const CHUNK: u64 = 4 << 20;
    const ROUNDS: usize = 20;
    let hub = rbee_features::hub::Hub::start();
    let (repo, file) = ("rbee-test/SmolLM2-GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf");
    let sha = rbee_local::model::DEFAULT_SHA256;
    hub.publish(repo, file, rbee_features::default_model_file(), sha);
    let size = std::fs::metadata(rbee_features::default_model_file()).unwrap().len();
    // 150 MB/s: a download takes about 0.7 s, so a kill lands anywhere in it.
    hub.throttle(150_000_000);
    let env = vec![("HF_ENDPOINT", hub.url.clone()), ("RBEE_DOWNLOAD_CHUNK_BYTES", CHUNK.to_string())];
    let cluster = rbee_features::cluster::Cluster::up_with_env(&["--no-worker"], &env).expect("rbee up");
    let node = rbee_features::cluster::unique_node();
    let dir = rbee_features::scratch_dir("hive");
    let mut next = kill_schedule();
    let mut hive = KillOnDrop(cluster.spawn_hive(&node, &dir, &env));
    let mut refetched = Vec::new();
    let mut mid_download = 0;
    for round in 0..ROUNDS {
        let model = format!("crash{round}");
        let seen_before = hub.seen("").len();
        let pull = cluster
            .rbee_command_for(&[
                "models",
                "pull",
                &format!("hf:{repo}:{file}"),
                "--name",
                &model,
                "--node",
                &node,
                "--timeout-secs",
                "120",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rbee models pull");
        // Kill somewhere between the first byte and the end.
        let progressed = eventually("the download starts", Duration::from_secs(30), || async {
            let any = hub.seen("")[seen_before..].iter().any(|s| s.method == "GET" && s.sent() > 0);
            if any { Ok(()) } else { Err(()) }
        });
        progressed.await;
        tokio::time::sleep(Duration::from_millis(next(600))).await;
        let first_get_sent =
            hub.seen("")[seen_before..].iter().filter(|s| s.method == "GET").map(|s| s.sent()).sum::<u64>();
        drop(hive);
        let partial = dir.join("models").join(format!("{model}.gguf.partial"));
        let received_at_kill = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        // The partial file is renamed when the download completes: bytes in it mean the kill came mid-download.
        if received_at_kill > 0 && received_at_kill < size {
            mid_download += 1;
        }
        hive = KillOnDrop(cluster.spawn_hive(&node, &dir, &env));
        let out = tokio::task::spawn_blocking(move || pull.wait_with_output().unwrap()).await.unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "round {round}: {printed}");
        let stored = dir.join("models").join(format!("{model}.gguf"));
        assert_eq!(sha256_file(&stored), sha, "round {round}: the file is verified");
        let gets: Vec<_> = hub.seen("")[seen_before..].iter().filter(|s| s.method == "GET").cloned().collect();
        let resumed_from: u64 = gets
            .last()
            .and_then(|s| s.range.as_deref())
            .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
            .unwrap_or(0);
        let hive_twice = received_at_kill.saturating_sub(resumed_from);
        assert!(
            hive_twice <= CHUNK,
            "round {round}: the hive had {received_at_kill} bytes at the kill and resumed from {resumed_from}"
        );
        let hub_twice = gets.iter().map(|s| s.sent()).sum::<u64>().saturating_sub(size);
        refetched.push((hive_twice, hub_twice));
        println!(
            "round {round}: killed with {received_at_kill} bytes on disk ({first_get_sent} sent), resumed from {resumed_from}: the hive fetched {hive_twice} twice, the hub sent {hub_twice} twice"
        );
    }
    drop(hive);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(mid_download >= ROUNDS / 2, "only {mid_download} of {ROUNDS} kills landed mid-download");
    let median = |mut v: Vec<u64>| {
        v.sort();
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (hive, hub) =
        (median(refetched.iter().map(|r| r.0).collect()), median(refetched.iter().map(|r| r.1).collect()));
    println!(
        "bytes fetched twice per kill (median, max): by the hive {hive:?}, sent by the hub {hub:?}; chunk {CHUNK}"
    );
}

/// A worker SIGKILLed mid-stream with no other worker of its model: the client's stream ends with a
/// `WORKER_LOST` error event within 2 s (it used to get keep-alives until the token timeout), and
/// the log records the request's end, since the worker cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_ends_its_stream_with_worker_lost_at_once() {
    use futures::StreamExt;
    let cluster = rbee_features::cluster::Cluster::up(&[]).expect("rbee up");
    let worker = &cluster.workers()[0];
    let pid = worker["pid"].as_u64().expect("the worker's pid") as u32;
    let body = serde_json::json!({"model": "SmolLM2-135M-Instruct", "stream": true, "max_tokens": 2000,
        "messages": [{"role": "user", "content": "Tell me a long story about a bee."}]});
    let response =
        cluster.http().post(format!("{}/v1/chat/completions", cluster.queen_url)).json(&body).send().await.unwrap();
    let request = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut bytes = response.bytes_stream();
    let mut seen = String::new();
    while seen.matches("data: ").count() < 3 {
        seen.push_str(&String::from_utf8_lossy(&bytes.next().await.expect("the stream goes on").unwrap()));
    }
    signal::send(pid, Signal::Kill);
    let killed = std::time::Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = bytes.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains(rbee_bus::Code::WorkerLost.as_str()) {
                return killed.elapsed();
            }
        }
        panic!("the stream ended without WORKER_LOST: {seen}");
    })
    .await
    .expect("the stream ends");
    assert!(rest < Duration::from_secs(2), "WORKER_LOST came {rest:?} after the worker died");
    eventually("the log records the request's end", Duration::from_secs(10), || async {
        let finished = cluster.events_of("request.finished");
        let ours = finished.into_iter().find(|e| e["data"]["request"] == request.as_str());
        match ours {
            Some(e) if e["data"]["error_code"] == rbee_bus::Code::WorkerLost.as_str() => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

fn sha256_file(path: &std::path::Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).expect("stored model"), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// A random number source for kill moments (xorshift), seeded from the clock; the seed is printed
/// so a failing schedule can be told apart.
fn kill_schedule() -> impl FnMut(u64) -> u64 {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64 | 1;
    println!("kill schedule seed: {seed}");
    let mut rng = seed;
    move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    }
}
