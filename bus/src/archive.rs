//! The archiver: copies the `RBEE` stream into the Postgres `events` table.
//!
//! A durable pull consumer (`archiver`) with explicit acks: a batch is inserted in one statement
//! (`UNNEST`), idempotent on event id and stream sequence, and each message is acked only after the
//! batch committed. A crash between insert and ack redelivers the batch, and the duplicates are
//! skipped by the database. (Not "ack all": a later batch's ack must never cover an earlier batch
//! that a killed archiver fetched and never stored.)

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::envelope::HEADER_SCHEMA;
use crate::log::{EventLog, decode_message, header_pairs};
use crate::subjects::{self, ARCHIVER_CONSUMER};

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

/// Runs the archiver until `shutdown` is cancelled. Any number of queens may call this: one holds
/// the archive lock (a Postgres advisory lock, released if its process dies) and archives; the
/// others wait as standbys, so the archive is written in stream order by a single writer.
pub async fn run_archiver(log: EventLog, pool: PgPool, shutdown: CancellationToken) -> Result<(), ArchiveError> {
    let mut lock_holder = pool.acquire().await?;
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(ARCHIVER_LOCK)
            .fetch_one(&mut *lock_holder)
            .await?;
        if locked {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    tracing::info!("this process is the archiver");
    let result = archive(log, pool, shutdown).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(ARCHIVER_LOCK).execute(&mut *lock_holder).await;
    result
}

async fn archive(log: EventLog, pool: PgPool, shutdown: CancellationToken) -> Result<(), ArchiveError> {
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
    // Fetching the next batch overlaps with storing this one.
    let (batches, mut to_store) = tokio::sync::mpsc::channel(2);
    let fetcher = tokio::spawn(fetch_batches(consumer, batches, shutdown));
    while let Some(messages) = to_store.recv().await {
        store_batch(&pool, &messages).await?;
        for m in &messages {
            m.ack().await.map_err(|e| ArchiveError::Log(e.to_string()))?;
        }
        tracing::debug!(count = messages.len(), "archived");
    }
    fetcher.await.map_err(|e| ArchiveError::Log(e.to_string()))?
}

/// Pulls batches until `shutdown` (or until the storing side is gone).
async fn fetch_batches(
    consumer: async_nats::jetstream::consumer::Consumer<pull::Config>,
    batches: tokio::sync::mpsc::Sender<Vec<async_nats::jetstream::Message>>,
    shutdown: CancellationToken,
) -> Result<(), ArchiveError> {
    loop {
        let batch = consumer.fetch().max_messages(BATCH).expires(Duration::from_millis(500)).messages();
        let mut batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            b = batch => b.map_err(|e| ArchiveError::Log(e.to_string()))?,
        };
        let mut messages = Vec::with_capacity(BATCH);
        while let Some(msg) = batch.next().await {
            match msg {
                Ok(m) => messages.push(m),
                Err(e) => tracing::warn!(error = %e, "archiver fetch interrupted"),
            }
        }
        if !messages.is_empty() && batches.send(messages).await.is_err() {
            return Ok(());
        }
    }
}

async fn store_batch(pool: &PgPool, messages: &[async_nats::jetstream::Message]) -> Result<(), ArchiveError> {
    let rows = messages.iter().filter_map(|m| match decode_message(m) {
        Ok(r) => Some((r, header_pairs(m.headers.as_ref()), m.payload.to_vec())),
        Err(e) => {
            // Poison: keep it out of the archive but say so; the log still has it.
            tracing::error!(subject = %m.subject, error = %e, "undecodable event not archived");
            None
        }
    });
    insert_batch(pool, rows).await
}

async fn insert_batch(
    pool: &PgPool,
    rows: impl Iterator<Item = (crate::log::Recorded, Vec<(String, String)>, Vec<u8>)>,
) -> Result<(), ArchiveError> {
    let (mut seqs, mut ids, mut subjects_, mut aggs, mut versions, mut types, mut schemas, mut payloads, mut headers) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (rec, hdrs, payload) in rows {
        let (kind, id) = rec.envelope.event.aggregate();
        seqs.push(rec.stream_seq as i64);
        ids.push(rec.envelope.id);
        aggs.push(subjects::aggregate(kind, id));
        subjects_.push(rec.subject);
        versions.push(rec.envelope.version as i64);
        types.push(rec.envelope.event.kind().to_string());
        payloads.push(payload);
        let schema = hdrs.iter().find(|(k, _)| k == HEADER_SCHEMA).and_then(|(_, v)| v.parse::<i16>().ok());
        schemas.push(schema.unwrap_or(0));
        let map: serde_json::Map<String, serde_json::Value> =
            hdrs.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
        headers.push(serde_json::Value::Object(map));
    }
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO events (stream_seq, event_id, subject, aggregate, version, event_type, schema, payload, headers)
         SELECT s, i, sub, a, v, t, sc, p, h
         FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::smallint[], $8::bytea[], $9::jsonb[])
              AS x(s, i, sub, a, v, t, sc, p, h)
         ORDER BY s
         ON CONFLICT DO NOTHING",
    )
    .bind(&seqs)
    .bind(&ids)
    .bind(&subjects_)
    .bind(&aggs)
    .bind(&versions)
    .bind(&types)
    .bind(&schemas)
    .bind(&payloads)
    .bind(&headers)
    .execute(pool)
    .await?;
    Ok(())
}

/// How many events the archive holds.
pub async fn archived_count(pool: &PgPool) -> Result<i64, ArchiveError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await?)
}

/// Archived events with `after < stream_seq < before`, in order, decoded (old schemas upcast).
/// Refuses a range with a hole (an archiver crashed and its batch is not redelivered yet).
pub async fn read_archive(pool: &PgPool, after: u64, before: u64) -> Result<Vec<crate::log::Recorded>, ArchiveError> {
    let rows: Vec<(i64, String, i16, Vec<u8>)> = sqlx::query_as(
        "SELECT stream_seq, subject, schema, payload FROM events WHERE stream_seq > $1 AND stream_seq < $2 ORDER BY stream_seq",
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
        .map(|(seq, subject, schema, payload)| {
            let envelope = crate::Envelope::decode_schema(&schema.to_string(), &payload)
                .map_err(|e| ArchiveError::Log(format!("archived event {seq} unreadable: {e}")))?;
            Ok(crate::log::Recorded { stream_seq: seq as u64, subject, envelope })
        })
        .collect()
}
