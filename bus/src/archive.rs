//! The archiver: copies the `RBEE` stream into the Postgres `events` table.
//!
//! A durable pull consumer (`archiver`) with explicit acks: a batch is inserted in one statement
//! (`UNNEST`), idempotent on event id and stream sequence, and acked only after it committed. A crash
//! between insert and ack redelivers the batch, and the duplicates are skipped by the database.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::envelope::HEADER_SCHEMA;
use crate::log::{decode_message, header_pairs, EventLog};
use crate::subjects;

pub const ARCHIVER_CONSUMER: &str = "archiver";
const BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("event store (Postgres) unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("event log unavailable: {0}")]
    Log(String),
}

/// Connects to Postgres and brings the schema up to date.
pub async fn connect_store(database_url: &str) -> Result<PgPool, ArchiveError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Runs the archiver until `shutdown` is cancelled.
pub async fn run_archiver(log: EventLog, pool: PgPool, shutdown: CancellationToken) -> Result<(), ArchiveError> {
    let stream = log.events_stream().await.map_err(|e| ArchiveError::Log(e.to_string()))?;
    let consumer = stream
        .get_or_create_consumer(
            ARCHIVER_CONSUMER,
            pull::Config {
                durable_name: Some(ARCHIVER_CONSUMER.into()),
                ack_policy: AckPolicy::All,
                max_ack_pending: (BATCH * 4) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ArchiveError::Log(e.to_string()))?;
    loop {
        let batch = consumer
            .fetch()
            .max_messages(BATCH)
            .expires(Duration::from_millis(500))
            .messages();
        let mut batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            b = batch => b.map_err(|e| ArchiveError::Log(e.to_string()))?,
        };
        let mut messages = Vec::new();
        while let Some(msg) = batch.next().await {
            match msg {
                Ok(m) => messages.push(m),
                Err(e) => tracing::warn!(error = %e, "archiver fetch interrupted"),
            }
        }
        let Some(last) = messages.last() else { continue };
        let rows = messages.iter().filter_map(|m| match decode_message(m) {
            Ok(r) => Some((r, header_pairs(m.headers.as_ref()), m.payload.to_vec())),
            Err(e) => {
                // Poison: keep it out of the archive but say so; the log still has it.
                tracing::error!(subject = %m.subject, error = %e, "undecodable event not archived");
                None
            }
        });
        insert_batch(&pool, rows).await?;
        // AckPolicy::All: acking the last message of the batch acks all before it.
        last.ack().await.map_err(|e| ArchiveError::Log(e.to_string()))?;
        tracing::debug!(count = messages.len(), "archived");
    }
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
pub async fn read_archive(pool: &PgPool, after: u64, before: u64) -> Result<Vec<crate::log::Recorded>, ArchiveError> {
    let rows: Vec<(i64, String, i16, Vec<u8>)> = sqlx::query_as(
        "SELECT stream_seq, subject, schema, payload FROM events WHERE stream_seq > $1 AND stream_seq < $2 ORDER BY stream_seq",
    )
    .bind(after as i64)
    .bind(before.min(i64::MAX as u64) as i64)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(seq, subject, schema, payload)| {
            let envelope = crate::Envelope::decode_schema(&schema.to_string(), &payload)
                .map_err(|e| ArchiveError::Log(format!("archived event {seq} unreadable: {e}")))?;
            Ok(crate::log::Recorded { stream_seq: seq as u64, subject, envelope })
        })
        .collect()
}
