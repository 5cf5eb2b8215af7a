//! Crash safety of the archive against real processes: a queen archiving the log is killed with
//! SIGKILL at random moments while events are being appended; after a final restart the Postgres
//! archive holds every acknowledged event exactly once, in stream order, with no gap.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rbee_bus::read::raw_to_end;
use rbee_bus::{subjects, Event, EventLog, Expected, Meta, RequestCancelled};
use rbee_features::infra::{Nats, Postgres};
use rbee_features::poll::eventually;

fn queen(nats: &Nats, pg: &Postgres) -> Child {
    let port = rbee_ops::local::process::free_port().unwrap();
    Command::new(rbee_features::bin("rbee-queen"))
        .args(["--nats-url", &nats.url, "--database-url", &pg.url, "--bind", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rbee-queen starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_archiving_queen_at_random_moments_loses_no_event() {
    let (nats, pg) = (Nats::start().await, Postgres::start().await);
    let log = EventLog::connect(&nats.url).await.unwrap();
    log.ensure_streams(&Default::default()).await.unwrap();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64 | 1;
    println!("kill schedule seed: {seed}");
    let mut rng = seed;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };

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
    let mut archived_at_kill = Vec::new();
    for _ in 0..6 {
        let mut q = queen(&nats, &pg);
        tokio::time::sleep(Duration::from_millis(300 + next(500))).await;
        q.kill().expect("SIGKILL");
        q.wait().unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap_or(0);
        archived_at_kill.push(n);
    }
    println!("archived when each queen was killed: {archived_at_kill:?}");
    let acked = writer.await.unwrap();
    assert_eq!(acked, 4000, "every append was acknowledged");

    let mut last = queen(&nats, &pg);
    let in_log: Vec<_> = raw_to_end(&log, subjects::EVENTS_STREAM).await.unwrap();
    let expected = in_log.len() as i64;
    eventually("the archive catches up with the log", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
        if n == expected { Ok(()) } else { Err(n) }
    })
    .await;
    last.kill().unwrap();
    last.wait().unwrap();

    let seqs: Vec<i64> = sqlx::query_scalar("SELECT stream_seq FROM events ORDER BY stream_seq").fetch_all(&pool).await.unwrap();
    assert_eq!(seqs, (1..=expected).collect::<Vec<_>>(), "no gap, no duplicate");
    let archived: BTreeSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT event_id FROM events").fetch_all(&pool).await.unwrap().into_iter().map(|u| u.to_string()).collect();
    let logged: BTreeSet<String> = in_log
        .iter()
        .map(|e| e.headers.iter().find(|(k, _)| k == "Nats-Msg-Id").map(|(_, v)| v.clone()).unwrap())
        .collect();
    assert_eq!(archived, logged, "the archive holds exactly the log's events");
}
