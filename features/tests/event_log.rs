//! The event log against a real nats-server (and Postgres for the archive): optimistic
//! concurrency, ordered reads, and archiving exactly once.

use std::time::Duration;

use rbee_bus::read::read_subject;
use rbee_bus::{AppendError, Event, EventLog, Expected, Meta, SlotClaimed, WorkerRegistered, subjects};
use rbee_features::infra::{Nats, Postgres};
use rbee_features::poll::eventually;
use tokio_util::sync::CancellationToken;

async fn log(nats: &Nats) -> EventLog {
    let log = EventLog::connect(&nats.admin).await.expect("connect");
    log.ensure_streams(&Default::default()).await.expect("streams");
    log
}

fn registered(worker: &str) -> Event {
    Event::WorkerRegistered(WorkerRegistered {
        worker: worker.into(),
        node: "n1".into(),
        model: "m".into(),
        slots: 1,
        pid: 1,
        backend: "cpu".into(),
    })
}

fn claim(request: &str) -> Event {
    Event::SlotClaimed(SlotClaimed { worker: "w1".into(), node: "n1".into(), slot: 0, request: request.into() })
}

#[tokio::test]
async fn the_second_first_registration_is_refused_by_the_server() {
    let nats = Nats::start().await;
    let log = log(&nats).await;
    let first = log.append(registered("w1"), Expected::NoStream, &Meta::default()).await.expect("first registration");
    assert_eq!(first.version, 1);
    let second = log.append(registered("w1"), Expected::NoStream, &Meta::default()).await;
    assert!(matches!(second, Err(AppendError::Conflict { .. })), "got {second:?}");
    assert_eq!(read_subject(&log, &subjects::worker("n1", "w1")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_stale_expectation_conflicts_and_any_appends_after_the_last() {
    let nats = Nats::start().await;
    let log = log(&nats).await;
    let p1 = log.append(registered("w1"), Expected::NoStream, &Meta::default()).await.unwrap();
    let p2 = log.append(claim("r1"), Expected::At(p1), &Meta::default()).await.unwrap();
    assert_eq!(p2.version, 2);
    let stale = log.append(claim("r2"), Expected::At(p1), &Meta::default()).await;
    assert!(matches!(stale, Err(AppendError::Conflict { .. })), "got {stale:?}");
    let p3 = log.append(claim("r3"), Expected::Any, &Meta::default()).await.unwrap();
    assert_eq!(p3.version, 3);
    let history = read_subject(&log, &subjects::worker("n1", "w1")).await.unwrap();
    let versions: Vec<u64> = history.iter().map(|r| r.envelope.version).collect();
    assert_eq!(versions, vec![1, 2, 3], "r2 was never written");
}

#[tokio::test]
async fn of_many_racing_claims_on_one_position_exactly_one_wins() {
    let nats = Nats::start().await;
    let log = log(&nats).await;
    let at = log.append(registered("w1"), Expected::NoStream, &Meta::default()).await.unwrap();
    let racers = (0..16).map(|i| {
        let log = log.clone();
        tokio::spawn(async move { log.append(claim(&format!("r{i}")), Expected::At(at), &Meta::default()).await })
    });
    let results = futures::future::join_all(racers).await;
    let wins = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let conflicts = results.iter().filter(|r| matches!(r, Ok(Err(AppendError::Conflict { .. })))).count();
    assert_eq!((wins, conflicts), (1, 15));
}

#[tokio::test]
async fn the_archiver_copies_every_event_once_even_when_restarted() {
    let (nats, pg) = (Nats::start().await, Postgres::start().await);
    let log = log(&nats).await;
    let mut at = log.append(registered("w1"), Expected::NoStream, &Meta::default()).await.unwrap();
    for i in 0..49 {
        at = log.append(claim(&format!("r{i}")), Expected::At(at), &Meta::default()).await.unwrap();
    }
    let pool = rbee_bus::archive::connect_store(&pg.url).await.expect("store");
    for round in 0..2 {
        let stop = CancellationToken::new();
        let (status, _) = tokio::sync::watch::channel(Default::default());
        let archiver = tokio::spawn(rbee_bus::archive::run_archiver(log.clone(), pool.clone(), status, stop.clone()));
        eventually(&format!("archive holds 50 events (round {round})"), Duration::from_secs(20), || async {
            let n = rbee_bus::archive::archived_count(&pool).await.unwrap();
            if n == 50 { Ok(()) } else { Err(n) }
        })
        .await;
        stop.cancel();
        archiver.await.unwrap();
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM events ORDER BY stream_seq").fetch_all(&pool).await.unwrap();
    assert_eq!(versions, (1..=50).collect::<Vec<i64>>());
    // The archiver's role may not update at all; even the schema's owner is stopped by the trigger.
    let refused = sqlx::query("UPDATE events SET version = 0").execute(&pool).await.unwrap_err();
    assert!(refused.to_string().contains("permission denied"), "{refused}");
    let owner = sqlx::PgPool::connect(&pg.owner_url).await.unwrap();
    let refused = sqlx::query("UPDATE events SET version = 0").execute(&owner).await.unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
}

#[tokio::test]
async fn a_retried_publish_after_a_lost_ack_is_one_event() {
    let nats = Nats::start().await;
    let log = log(&nats).await;
    let subject = subjects::worker("n1", "w1");
    let envelope = rbee_bus::Envelope::new(registered("w1"), 1, &Meta::default());
    let first = log.publish_envelope(&subject, &envelope, 0).await.expect("first send");
    // The same event sent again, as after a lost ack: same id, same (now stale) expectation.
    let again = log.publish_envelope(&subject, &envelope, 0).await.expect("the retry is recognised as our own write");
    assert_eq!(first, again);
    // A different event with the stale expectation is still a conflict.
    let other = rbee_bus::Envelope::new(registered("w1"), 1, &Meta::default());
    assert!(matches!(log.publish_envelope(&subject, &other, 0).await, Err(AppendError::Conflict { .. })));
    assert_eq!(read_subject(&log, &subject).await.unwrap().len(), 1);
}

/// A replay reads to the end even when the last event cannot be decoded: it is skipped, counted
/// and read past, and the replay returns instead of waiting for an event after it.
#[tokio::test]
async fn a_replay_skips_an_undecodable_last_event_and_returns() {
    let nats = Nats::start().await;
    let log = log(&nats).await;
    log.append(registered("w1"), Expected::NoStream, &Meta::default()).await.expect("registration");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Rbee-Event", "worker.registered");
    headers.insert("Rbee-Schema", "4");
    let garbage: &[u8] = b"\xff\xff\xff not postcard";
    log.jetstream()
        .publish_with_headers("rbee.ev.worker.w2", headers, garbage.into())
        .await
        .unwrap()
        .await
        .expect("stored");
    let replay = rbee_projections::history::replay_to(&log, None, rbee_projections::history::Until::End);
    let folded = tokio::time::timeout(Duration::from_secs(10), replay).await.expect("the replay returns").unwrap();
    assert_eq!(folded.skipped, 1);
    // Read past, so a view folded from this log counts as caught up with it; tied to no event id.
    assert_eq!((folded.view.last_seq, folded.view.last_event_id), (2, None));
    assert!(folded.view.registry.workers.contains_key("w1"));
}

/// Postgres stopped under the archiver: it waits, says so, and once Postgres is back archives
/// everything the log holds, in order and once; an undecodable body and an event written around
/// optimistic concurrency (a version its aggregate already has) are archived too, flagged.
#[tokio::test]
async fn the_archiver_waits_out_postgres_and_archives_everything_flagging_what_it_cannot_believe() {
    let (nats, pg) = (Nats::start().await, Postgres::start().await);
    let log = log(&nats).await;
    let mut at = log.append(registered("w1"), Expected::NoStream, &Meta::default()).await.unwrap();
    for i in 0..9 {
        at = log.append(claim(&format!("r{i}")), Expected::At(at), &Meta::default()).await.unwrap();
    }
    let pool = rbee_bus::archive::connect_store(&pg.url).await.expect("store");
    let stop = CancellationToken::new();
    let (status, watch) = tokio::sync::watch::channel(Default::default());
    let archiver = tokio::spawn(rbee_bus::archive::run_archiver(log.clone(), pool.clone(), status, stop.clone()));
    let count = || async { rbee_bus::archive::archived_count(&pool).await.map_err(|e| e.to_string()) };
    eventually("the first 10 events are archived", Duration::from_secs(20), || async {
        if count().await? == 10 { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;

    pg.stop();
    for i in 9..19 {
        at = log.append(claim(&format!("r{i}")), Expected::At(at), &Meta::default()).await.unwrap();
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Rbee-Schema", "6");
    log.jetstream().publish_with_headers("rbee.ev.junk", headers, b"\x01\x02"[..].into()).await.unwrap().await.unwrap();
    // Version 2 of w1 again, published without the expected-sequence header.
    let clash = rbee_bus::Envelope::new(claim("clash"), 2, &Meta::default());
    let (headers, body) = clash.encode();
    let subject = subjects::worker("n1", "w1");
    log.jetstream().publish_with_headers(subject, headers, body.into()).await.unwrap().await.unwrap();
    let mut retrying = watch.clone();
    tokio::time::timeout(Duration::from_secs(30), retrying.wait_for(|s| s.state == "retrying"))
        .await
        .expect("the archiver says it cannot store")
        .unwrap();

    pg.start_again().await;
    eventually("all 22 events are archived once Postgres is back", Duration::from_secs(60), || async {
        if count().await? == 22 { Ok(()) } else { Err(format!("{:?}", count().await)) }
    })
    .await;
    let rows: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT stream_seq, event_type, flag FROM events ORDER BY stream_seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), (1..=22).collect::<Vec<i64>>(), "in order, once");
    assert!(rows[20].2.as_deref().is_some_and(|f| f.starts_with("undecodable")), "{:?}", rows[20]);
    assert_eq!(rows[20].1, rbee_bus::archive::UNDECODABLE);
    assert_eq!(rows[21].2.as_deref(), Some(rbee_bus::archive::VERSION_CLASH), "{:?}", rows[21]);
    assert!(rows[..20].iter().all(|r| r.2.is_none()), "{rows:?}");
    let status = watch.borrow().clone();
    assert!(status.retries >= 1 && status.flagged == 2 && status.archived_seq == 22, "{status:?}");
    assert_eq!(status.state, "archiving");
    stop.cancel();
    archiver.await.unwrap();
}
