//! The archiver: copies the `RBEE` stream into the Postgres `events` table.
//!
//! A durable pull consumer (`archiver`) with explicit acks: a batch is inserted in one statement
//! (`UNNEST`), keyed by stream sequence, and each message is acked only after the batch committed.
//! A crash between insert and ack redelivers the batch, and the rows already there are skipped.
//! (Not "ack all": a later batch's ack must never cover an earlier batch that a killed archiver
//! fetched and never stored.) Everything in the log is archived: an event whose body cannot be
//! decoded, or whose aggregate version clashes with an archived one, is stored with a flag and
//! reported, never skipped.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::envelope::{HEADER_MSG_ID, HEADER_SCHEMA};
use crate::log::{EventLog, decode_message, header_pairs};
use crate::subjects::ARCHIVER_CONSUMER;

const BATCH: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("event store (Postgres) unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Schema(String),
    #[error("event log unavailable: {0}")]
    Log(String),
}

/// Brings the schema up to date. Run as the role that owns the schema (`rbee up` does), never as
/// the role processes archive with, which may not change the schema.
pub async fn migrate(owner_url: &str) -> Result<(), ArchiveError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(owner_url)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Connects to the event store and checks that its schema is the one this rbee writes.
pub async fn connect_store(database_url: &str) -> Result<PgPool, ArchiveError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await?;
    let expected = sqlx::migrate!("./migrations").iter().map(|m| m.version).max().unwrap_or(0);
    let found: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .map_err(|e| ArchiveError::Schema(format!("the event store has no rbee schema ({e})")))?;
    if found != Some(expected) {
        return Err(ArchiveError::Schema(format!(
            "the event store's schema is at migration {}, this rbee needs {expected}; run the migrations as \
             the schema's owner (rbee up does)",
            found.unwrap_or(0)
        )));
    }
    Ok(pool)
}

/// Postgres advisory lock key held by the one active archiver of a cluster ("rbeearch").
const ARCHIVER_LOCK: i64 = 0x7262_6565_6172_6368;

/// The first wait after an error; it doubles up to [`MAX_RETRY`], and starts over once the archiver
/// has run that long without one.
const MIN_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(15);

/// What the archiver is doing, for `/health` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveStatus {
    /// `starting`, `standby` (another process archives), `archiving`, or `retrying` after an error.
    pub state: &'static str,
    /// The last stream sequence stored (0: none yet by this process).
    pub archived_seq: u64,
    /// When the archiver last found nothing more to store (ms since the epoch; 0: not yet).
    pub caught_up_at_ms: u64,
    pub last_error: Option<String>,
    /// Errors survived so far.
    pub retries: u64,
    /// Events archived with a flag (a version clash, an undecodable body).
    pub flagged: u64,
}

pub type StatusSender = tokio::sync::watch::Sender<ArchiveStatus>;

/// Runs the archiver until `shutdown` is cancelled, through any number of errors: Postgres or NATS
/// going away is waited out with backoff, and the durable consumer resumes where the last stored
/// batch ended (a batch is acked only once it is stored). Any number of queens may call this: one
/// holds the archive lock (a Postgres advisory lock, released if its process or connection dies)
/// and archives; the others wait as standbys, so the archive is written in stream order by a
/// single writer.
pub async fn run_archiver(log: EventLog, pool: PgPool, status: StatusSender, shutdown: CancellationToken) {
    let mut delay = MIN_RETRY;
    loop {
        let started = tokio::time::Instant::now();
        let result = archive_while_locked(&log, &pool, &status, &shutdown).await;
        if shutdown.is_cancelled() {
            return;
        }
        let e = match result {
            Ok(()) => ArchiveError::Log("the archive consumer stopped".into()),
            Err(e) => e,
        };
        if started.elapsed() > MAX_RETRY {
            delay = MIN_RETRY;
        }
        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "archiver interrupted; retrying");
        status.send_modify(|s| {
            s.state = "retrying";
            s.last_error = Some(e.to_string());
            s.retries += 1;
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

async fn archive_while_locked(
    log: &EventLog,
    pool: &PgPool,
    status: &StatusSender,
    shutdown: &CancellationToken,
) -> Result<(), ArchiveError> {
    let mut lock_holder = pool.acquire().await?;
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(ARCHIVER_LOCK)
            .fetch_one(&mut *lock_holder)
            .await?;
        if locked {
            break;
        }
        status.send_modify(|s| s.state = "standby");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    tracing::info!("this process is the archiver");
    status.send_modify(|s| {
        s.state = "archiving";
        s.last_error = None;
    });
    let result = archive(log, pool, status, shutdown).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(ARCHIVER_LOCK).execute(&mut *lock_holder).await;
    result
}

async fn archive(
    log: &EventLog,
    pool: &PgPool,
    status: &StatusSender,
    shutdown: &CancellationToken,
) -> Result<(), ArchiveError> {
    let stream = log.events_stream().await.map_err(|e| ArchiveError::Log(e.to_string()))?;
    let consumer = stream
        .get_or_create_consumer(
            ARCHIVER_CONSUMER,
            pull::Config {
                durable_name: Some(ARCHIVER_CONSUMER.into()),
                ack_policy: AckPolicy::Explicit,
                // A batch fetched by an archiver that died comes back after this.
                ack_wait: Duration::from_secs(10),
                max_ack_pending: (BATCH * 4) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ArchiveError::Log(e.to_string()))?;
    // Fetching the next batch overlaps with storing this one. The fetcher stops with this
    // function: a batch it holds unacked comes back to the next attempt.
    let stop_fetching = shutdown.child_token();
    let _stop_on_return = stop_fetching.clone().drop_guard();
    let (batches, mut to_store) = tokio::sync::mpsc::channel(2);
    let fetcher = tokio::spawn(fetch_batches(consumer, batches, status.clone(), stop_fetching));
    while let Some(messages) = to_store.recv().await {
        let flagged = store_batch(pool, &messages).await?;
        for m in &messages {
            m.ack().await.map_err(|e| ArchiveError::Log(e.to_string()))?;
        }
        let last = messages.last().and_then(|m| m.info().ok()).map_or(0, |i| i.stream_sequence);
        status.send_modify(|s| {
            s.archived_seq = s.archived_seq.max(last);
            s.flagged += flagged;
        });
        tracing::debug!(count = messages.len(), "archived");
    }
    fetcher.await.map_err(|e| ArchiveError::Log(e.to_string()))?
}

/// Pulls batches until `stop` (or until the storing side is gone).
async fn fetch_batches(
    consumer: async_nats::jetstream::consumer::Consumer<pull::Config>,
    batches: tokio::sync::mpsc::Sender<Vec<async_nats::jetstream::Message>>,
    status: StatusSender,
    stop: CancellationToken,
) -> Result<(), ArchiveError> {
    loop {
        let batch = consumer.fetch().max_messages(BATCH).expires(Duration::from_millis(500)).messages();
        let mut batch = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            b = batch => b.map_err(|e| ArchiveError::Log(e.to_string()))?,
        };
        let mut messages = Vec::with_capacity(BATCH);
        while let Some(msg) = batch.next().await {
            match msg {
                Ok(m) => messages.push(m),
                Err(e) => tracing::warn!(error = %e, "archiver fetch interrupted"),
            }
        }
        let caught_up = messages.last().and_then(|m| m.info().ok()).is_none_or(|i| i.pending == 0);
        if caught_up {
            status.send_modify(|s| s.caught_up_at_ms = crate::envelope::now_ms());
        }
        if !messages.is_empty() && batches.send(messages).await.is_err() {
            return Ok(());
        }
    }
}

/// One row of the archive.
struct Row {
    seq: i64,
    id: uuid::Uuid,
    /// Also the row's aggregate: versions count per subject.
    subject: String,
    version: i64,
    event_type: String,
    schema: i16,
    payload: Vec<u8>,
    headers: serde_json::Value,
    flag: Option<String>,
}

impl Row {
    fn of(m: &async_nats::jetstream::Message) -> Result<Row, ArchiveError> {
        let seq = m.info().map_err(|e| ArchiveError::Log(e.to_string()))?.stream_sequence as i64;
        let pairs = header_pairs(m.headers.as_ref());
        let header = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let schema = header(HEADER_SCHEMA).and_then(|v| v.parse::<i16>().ok()).unwrap_or(0);
        let headers = serde_json::Value::Object(
            pairs.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
        );
        let subject = m.subject.to_string();
        Ok(match decode_message(m) {
            Ok(rec) => Row {
                seq,
                id: rec.envelope.id,
                subject,
                version: rec.envelope.version as i64,
                event_type: rec.envelope.event.kind().to_string(),
                schema,
                payload: m.payload.to_vec(),
                headers,
                flag: None,
            },
            // Archived as it is, so the archive still equals the log; readers skip it as they skip
            // it in the log.
            Err(e) => Row {
                seq,
                id: header(HEADER_MSG_ID).and_then(|v| v.parse().ok()).unwrap_or_default(),
                subject,
                version: 0,
                event_type: UNDECODABLE.into(),
                schema,
                payload: m.payload.to_vec(),
                headers,
                flag: Some(format!("undecodable: {e}")),
            },
        })
    }
}

/// The `event_type` of an archived event whose body could not be decoded.
pub const UNDECODABLE: &str = "undecodable";

/// Stores a batch; returns how many of its events were flagged.
async fn store_batch(pool: &PgPool, messages: &[async_nats::jetstream::Message]) -> Result<u64, ArchiveError> {
    let mut rows = messages.iter().map(Row::of).collect::<Result<Vec<_>, _>>()?;
    // A clash inside the batch; the statement finds clashes with earlier batches.
    let mut seen = std::collections::HashSet::new();
    for row in &mut rows {
        if row.flag.is_none() && !seen.insert((row.subject.clone(), row.version)) {
            row.flag = Some(VERSION_CLASH.into());
        }
    }
    let flagged = insert_rows(pool, rows).await?;
    for (seq, flag) in &flagged {
        tracing::error!(seq, %flag, "event archived with a flag");
    }
    Ok(flagged.len() as u64)
}

/// The flag of an event whose aggregate already has an event of its version.
pub const VERSION_CLASH: &str = "version_clash";

/// Inserts rows not archived yet (by stream sequence); returns the flagged ones it inserted.
async fn insert_rows(pool: &PgPool, rows: Vec<Row>) -> Result<Vec<(i64, String)>, ArchiveError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (mut seqs, mut ids, mut subjects_, mut versions, mut types, mut schemas, mut payloads, mut headers) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut flags = vec![];
    for r in rows {
        seqs.push(r.seq);
        ids.push(r.id);
        subjects_.push(r.subject);
        versions.push(r.version);
        types.push(r.event_type);
        schemas.push(r.schema);
        payloads.push(r.payload);
        headers.push(r.headers);
        flags.push(r.flag);
    }
    let inserted: Vec<(i64, Option<String>)> = sqlx::query_as(
        "INSERT INTO events (stream_seq, event_id, subject, aggregate, version, event_type, schema, payload, headers, flag)
         SELECT s, i, sub, sub, v, t, sc, p, h,
                COALESCE(f, CASE WHEN v > 0 AND EXISTS (SELECT 1 FROM events e WHERE e.aggregate = sub AND e.version = v)
                                 THEN 'version_clash' END)
         FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::smallint[],
                     $7::bytea[], $8::jsonb[], $9::text[])
              AS x(s, i, sub, v, t, sc, p, h, f)
         ORDER BY s
         ON CONFLICT (stream_seq) DO NOTHING
         RETURNING stream_seq, flag",
    )
    .bind(&seqs)
    .bind(&ids)
    .bind(&subjects_)
    .bind(&versions)
    .bind(&types)
    .bind(&schemas)
    .bind(&payloads)
    .bind(&headers)
    .bind(&flags)
    .fetch_all(pool)
    .await?;
    Ok(inserted.into_iter().filter_map(|(seq, flag)| Some((seq, flag?))).collect())
}

/// How many events the archive holds.
pub async fn archived_count(pool: &PgPool) -> Result<i64, ArchiveError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await?)
}

/// Archived events with `after < stream_seq < before`, in order, decoded (old schemas upcast).
/// Refuses a range with a hole (an archiver crashed and its batch is not redelivered yet).
pub async fn read_archive(pool: &PgPool, after: u64, before: u64) -> Result<Vec<crate::log::Recorded>, ArchiveError> {
    let rows: Vec<(i64, String, i16, Vec<u8>, String)> = sqlx::query_as(
        "SELECT stream_seq, subject, schema, payload, event_type FROM events
         WHERE stream_seq > $1 AND stream_seq < $2 ORDER BY stream_seq",
    )
    .bind(after as i64)
    .bind(before.min(i64::MAX as u64) as i64)
    .fetch_all(pool)
    .await?;
    let expected = before.saturating_sub(after).saturating_sub(1);
    if rows.len() as u64 != expected {
        return Err(ArchiveError::Log(format!(
            "the archive holds {} of the {expected} events between {after} and {before}: it is still catching up; retry shortly",
            rows.len()
        )));
    }
    rows.into_iter()
        // Readers skip an undecodable event in the archive as they do in the log.
        .filter(|(.., event_type)| event_type != UNDECODABLE)
        .map(|(seq, subject, schema, payload, _)| {
            let envelope = crate::Envelope::decode_schema(&schema.to_string(), &payload)
                .map_err(|e| ArchiveError::Log(format!("archived event {seq} unreadable: {e}")))?;
            Ok(crate::log::Recorded { stream_seq: seq as u64, subject, envelope })
        })
        .collect()
}
