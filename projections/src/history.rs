//! The history of the cluster folded into a view, written once for every reader: a queen at start
//! ([`recover`]), `rbee projections rebuild` ([`rebuild`]) and `rbee replay` ([`replay_to`]).
//! Events JetStream no longer holds are read from the Postgres archive, and an event that cannot be
//! decoded is skipped and reported, as the live view does: all of them agree on the state.

use rbee_bus::archive::{ArchiveError, read_archive};
use rbee_bus::read::{self, StartAt};
use rbee_bus::{Code, EventLog, Recorded, subjects};
use sqlx::PgPool;

use crate::ClusterView;
use crate::checkpoint::{self, CLUSTER_VIEW, Checkpoint, Rejected};

/// Where a replay stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Every event there is now.
    End,
    /// The event with this stream sequence, included.
    Seq(u64),
    /// The last event written at or before this time (milliseconds since the Unix epoch).
    TimeMs(u64),
}

impl Until {
    fn excludes(self, rec: &Recorded) -> bool {
        match self {
            Until::End => false,
            Until::Seq(seq) => rec.stream_seq > seq,
            Until::TimeMs(ms) => rec.envelope.at_ms > ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("the event log is unavailable: {0}")]
    Log(String),
    #[error("the event store is unavailable: {0}")]
    Store(String),
}

impl HistoryError {
    pub fn code(&self) -> Code {
        match self {
            HistoryError::Log(_) => Code::EventLogUnavailable,
            HistoryError::Store(_) => Code::EventStoreUnavailable,
        }
    }
}

impl From<ArchiveError> for HistoryError {
    fn from(e: ArchiveError) -> Self {
        HistoryError::Store(e.to_string())
    }
}

impl From<sqlx::Error> for HistoryError {
    fn from(e: sqlx::Error) -> Self {
        HistoryError::Store(e.to_string())
    }
}

fn log_error(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Log(e.to_string())
}

/// A view folded from the history, and how.
#[derive(Debug, Default)]
pub struct Folded {
    pub view: ClusterView,
    /// Events read from the Postgres archive because JetStream no longer holds them.
    pub from_archive: usize,
    /// Events that could not be decoded and were skipped.
    pub skipped: usize,
}

/// Folds every event after `folded.view.last_seq`, up to `until`: first those only the archive
/// still holds (before `first_in_log`, the first sequence JetStream holds), then the stream's.
async fn fold_onto(
    folded: &mut Folded,
    log: &EventLog,
    pool: Option<&PgPool>,
    first_in_log: u64,
    until: Until,
) -> Result<(), HistoryError> {
    if let Some(pool) = pool
        && first_in_log > folded.view.last_seq + 1
    {
        for rec in read_archive(pool, folded.view.last_seq, first_in_log).await? {
            if until.excludes(&rec) {
                return Ok(());
            }
            folded.view.apply(&rec);
            folded.from_archive += 1;
        }
    }
    let start = StartAt::Seq(folded.view.last_seq + 1);
    read::each_to_end(log, subjects::EVENTS_STREAM, start, |item| match item {
        Ok(rec) if until.excludes(&rec) => false,
        Ok(rec) => {
            if rec.stream_seq > folded.view.last_seq {
                folded.view.apply(&rec);
            }
            true
        }
        Err(error) => {
            let seq = match &error {
                rbee_bus::log::ReadError::Undecodable { seq, .. } => *seq,
                rbee_bus::log::ReadError::Unavailable(_) => 0,
            };
            if matches!(until, Until::Seq(end) if seq > end) {
                return false;
            }
            tracing::error!(code = %rbee_bus::Code::UndecodableEvent, seq, %error, "event skipped");
            folded.view.pass_undecodable(seq);
            folded.skipped += 1;
            true
        }
    })
    .await
    .map_err(log_error)
}

/// The state as it was at `until`, folded from the very first event.
pub async fn replay_to(log: &EventLog, pool: Option<&PgPool>, until: Until) -> Result<Folded, HistoryError> {
    let (first_in_log, _) = log.events_bounds().await.map_err(log_error)?;
    let mut folded = Folded::default();
    fold_onto(&mut folded, log, pool, first_in_log, until).await?;
    Ok(folded)
}

/// Reset and replay: folds the whole history again, sets the stored checkpoint aside and stores
/// the fresh one.
pub async fn rebuild(log: &EventLog, pool: &PgPool) -> Result<Folded, HistoryError> {
    let folded = replay_to(log, Some(pool), Until::End).await?;
    if let Some(old) = checkpoint::load(pool, CLUSTER_VIEW).await? {
        checkpoint::set_aside(pool, CLUSTER_VIEW, &old, "replaced by rbee projections rebuild").await?;
    }
    checkpoint::save(pool, CLUSTER_VIEW, &Checkpoint::of(&folded.view)).await?;
    Ok(folded)
}

/// The view a queen starts from, and what happened, in words for the operator.
pub struct Recovered {
    pub folded: Folded,
    pub report: String,
}

/// The view as of now: from the stored checkpoint when it proves itself (intact, current, folded
/// from this very log), else rebuilt; a rejected checkpoint is set aside with its reason.
pub async fn recover(log: &EventLog, pool: Option<&PgPool>) -> Result<Recovered, HistoryError> {
    let Some(pool) = pool else {
        let folded = replay_to(log, None, Until::End).await?;
        return Ok(Recovered { folded, report: "folded from the log (no event store configured)".into() });
    };
    let (first_in_log, last_in_log) = log.events_bounds().await.map_err(log_error)?;
    let (view, mut report) = match checkpoint::load(pool, CLUSTER_VIEW).await? {
        None => (ClusterView::default(), "no checkpoint: rebuilt from the log".to_string()),
        Some(cp) => match trusted(log, &cp, last_in_log).await? {
            Ok(view) => {
                let report = format!("restored from the checkpoint at sequence {}", view.last_seq);
                (view, report)
            }
            Err(rejected) => {
                let reason = format!("{}: {rejected}", rejected.code());
                checkpoint::set_aside(pool, CLUSTER_VIEW, &cp, &reason).await?;
                tracing::warn!(%reason, "checkpoint set aside; rebuilding from the log");
                (ClusterView::default(), format!("checkpoint set aside ({reason}); rebuilt from the log"))
            }
        },
    };
    let mut folded = Folded { view, ..Folded::default() };
    fold_onto(&mut folded, log, Some(pool), first_in_log, Until::End).await?;
    if folded.from_archive > 0 {
        report.push_str(&format!(
            "; {} event(s) before sequence {first_in_log} read from the Postgres archive",
            folded.from_archive
        ));
    }
    tracing::info!(%report, "projections recovered");
    Ok(Recovered { folded, report })
}

/// Whether a checkpoint may be used: intact and current, and tied to this very log.
async fn trusted(
    log: &EventLog,
    cp: &Checkpoint,
    last_in_log: u64,
) -> Result<Result<ClusterView, Rejected>, HistoryError> {
    let view = match cp.restore() {
        Ok(v) => v,
        Err(r) => return Ok(Err(r)),
    };
    if view.last_seq > last_in_log {
        return Ok(Err(Rejected::Foreign(format!(
            "it reaches sequence {} but the log ends at {last_in_log}",
            view.last_seq
        ))));
    }
    if view.last_seq > 0
        && let Some(actual) = log.event_id_at(view.last_seq).await.map_err(log_error)?
        && Some(actual) != view.last_event_id
    {
        return Ok(Err(Rejected::Foreign(format!(
            "the event at sequence {} is not the one it was folded from",
            view.last_seq
        ))));
    }
    Ok(Ok(view))
}
