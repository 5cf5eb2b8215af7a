//! Checkpoints: a projection's state at a log position, kept in Postgres so a restart folds only
//! what came after. A checkpoint is trusted only when it proves itself: the current snapshot schema,
//! a matching sha256, a body that decodes to the sequence it claims, and (checked by the caller
//! against the log) the very event id at that sequence. Anything else is set aside and rebuilt.

use rbee_bus::Code;
use sha2::Digest;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ClusterView;

/// Bumped whenever the shape of [`ClusterView`] changes: older snapshots are then rebuilt.
pub const SNAPSHOT_SCHEMA: i32 = 5;
/// The name of the cluster view's checkpoint row.
pub const CLUSTER_VIEW: &str = "cluster_view";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub last_seq: u64,
    pub last_event_id: Option<Uuid>,
    pub schema_version: i32,
    pub snapshot: Vec<u8>,
    pub sha256: String,
}

/// Why a checkpoint was not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("snapshot schema {found} is not the current {expected}")]
    Outdated { found: i32, expected: i32 },
    #[error("snapshot does not match its sha256 (corrupt)")]
    HashMismatch,
    #[error("snapshot does not decode: {0}")]
    Undecodable(String),
    #[error("snapshot claims sequence {claimed} but holds state up to {held}")]
    SequenceMismatch { claimed: u64, held: u64 },
    #[error("snapshot is of another log: {0}")]
    Foreign(String),
}

impl Rejected {
    pub fn code(&self) -> Code {
        match self {
            Rejected::Outdated { .. } => Code::CheckpointOutdated,
            Rejected::HashMismatch | Rejected::Undecodable(_) | Rejected::SequenceMismatch { .. } => {
                Code::CheckpointCorrupt
            }
            Rejected::Foreign(_) => Code::CheckpointForeign,
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Checkpoint {
    /// A checkpoint of `view` (liveness left out: heartbeats are re-read from their own stream).
    pub fn of(view: &ClusterView) -> Checkpoint {
        let snapshot = view.without_liveness().encode();
        Checkpoint {
            last_seq: view.last_seq,
            last_event_id: view.last_event_id,
            schema_version: SNAPSHOT_SCHEMA,
            sha256: sha256_hex(&snapshot),
            snapshot,
        }
    }

    /// The view, if the checkpoint is intact and current.
    pub fn restore(&self) -> Result<ClusterView, Rejected> {
        if self.schema_version != SNAPSHOT_SCHEMA {
            return Err(Rejected::Outdated { found: self.schema_version, expected: SNAPSHOT_SCHEMA });
        }
        if sha256_hex(&self.snapshot) != self.sha256 {
            return Err(Rejected::HashMismatch);
        }
        let view = ClusterView::decode(&self.snapshot).map_err(|e| Rejected::Undecodable(e.to_string()))?;
        if view.last_seq != self.last_seq || view.last_event_id != self.last_event_id {
            return Err(Rejected::SequenceMismatch { claimed: self.last_seq, held: view.last_seq });
        }
        Ok(view)
    }
}

/// A row of `projection_checkpoints`: last_seq, last_event_id, schema_version, snapshot, sha256.
type CheckpointRow = (i64, Option<Uuid>, i32, Vec<u8>, String);

/// The stored checkpoint called `name`, if any.
pub async fn load(pool: &PgPool, name: &str) -> Result<Option<Checkpoint>, sqlx::Error> {
    let row: Option<CheckpointRow> = sqlx::query_as(
        "SELECT last_seq, last_event_id, schema_version, snapshot, sha256 FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(last_seq, last_event_id, schema_version, snapshot, sha256)| Checkpoint {
        last_seq: last_seq as u64,
        last_event_id,
        schema_version,
        snapshot,
        sha256,
    }))
}

/// Stores `checkpoint` unless a newer one is already there (several queens may checkpoint).
pub async fn save(pool: &PgPool, name: &str, checkpoint: &Checkpoint) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, last_seq, last_event_id, schema_version, snapshot, sha256)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (name) DO UPDATE SET last_seq = EXCLUDED.last_seq, last_event_id = EXCLUDED.last_event_id,
             schema_version = EXCLUDED.schema_version, snapshot = EXCLUDED.snapshot, sha256 = EXCLUDED.sha256, updated_at = now()
         WHERE projection_checkpoints.last_seq < EXCLUDED.last_seq OR projection_checkpoints.schema_version <> EXCLUDED.schema_version",
    )
    .bind(name)
    .bind(checkpoint.last_seq as i64)
    .bind(checkpoint.last_event_id)
    .bind(checkpoint.schema_version)
    .bind(&checkpoint.snapshot)
    .bind(&checkpoint.sha256)
    .execute(pool)
    .await?;
    Ok(())
}

/// Moves a distrusted checkpoint out of the way, keeping it for the operator to inspect.
pub async fn set_aside(pool: &PgPool, name: &str, checkpoint: &Checkpoint, reason: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO projection_checkpoints_set_aside (name, reason, last_seq, schema_version, snapshot, sha256)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(name)
    .bind(reason)
    .bind(checkpoint.last_seq as i64)
    .bind(checkpoint.schema_version)
    .bind(&checkpoint.snapshot)
    .bind(&checkpoint.sha256)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1").bind(name).execute(&mut *tx).await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::*;

    /// A small deterministic generator (xorshift), so the property tests need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn random_events(rng: &mut Rng, count: usize) -> Vec<Recorded> {
        (1..=count as u64)
            .map(|seq| {
                let w = format!("w{}", rng.next(4));
                let event = match rng.next(9) {
                    0 => Event::WorkerRegistered(WorkerRegistered {
                        worker: w,
                        node: "n".into(),
                        model: format!("m{}", rng.next(2)),
                        slots: 2,
                        pid: 1,
                        backend: "cpu".into(),
                    }),
                    1 => Event::WorkerStateChanged(WorkerStateChanged {
                        worker: w,
                        node: "n".into(),
                        state: WorkerState::Ready,
                        context_length: 4096,
                    }),
                    2 => Event::WorkerStateChanged(WorkerStateChanged {
                        worker: w,
                        node: "n".into(),
                        state: WorkerState::Stale,
                        context_length: 0,
                    }),
                    3 | 4 => Event::SlotClaimed(SlotClaimed {
                        worker: w,
                        node: "n".into(),
                        slot: rng.next(2) as u32,
                        request: format!("r{}", rng.next(5)),
                    }),
                    5 | 6 => Event::SlotReleased(SlotReleased {
                        worker: w,
                        node: "n".into(),
                        slot: rng.next(2) as u32,
                        request: format!("r{}", rng.next(5)),
                    }),
                    7 => Event::WorkerRemoved(WorkerRemoved { worker: w, node: "n".into(), reason: "test".into() }),
                    _ => Event::ModelRegistered(ModelRegistered {
                        model: format!("m{}", rng.next(2)),
                        node: format!("n{}", rng.next(3)),
                        path: "/m".into(),
                        size_bytes: rng.next(1000),
                        sha256: "00".into(),
                        memory_required_bytes: 1,
                    }),
                };
                let mut envelope = Envelope::new(event.clone(), seq, &Meta::default());
                envelope.at_ms = seq * 10;
                Recorded { stream_seq: seq, subject: subjects::for_event(&event), envelope }
            })
            .collect()
    }

    fn fold(events: &[Recorded], view: &mut ClusterView) {
        for e in events {
            view.apply(e);
        }
    }

    #[test]
    fn live_fold_snapshot_plus_tail_and_rebuild_agree() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..300 {
            let count = 1 + rng.next(80) as usize;
            let events = random_events(&mut rng, count);
            let cut = rng.next(events.len() as u64 + 1) as usize;

            let mut live = ClusterView::default();
            fold(&events, &mut live);

            let mut before = ClusterView::default();
            fold(&events[..cut], &mut before);
            let mut resumed = Checkpoint::of(&before).restore().expect("a fresh checkpoint restores");
            fold(&events[cut..], &mut resumed);

            let mut rebuilt = ClusterView::default();
            fold(&events, &mut rebuilt);

            assert_eq!(resumed.without_liveness(), live.without_liveness(), "case {case}, cut at {cut}");
            assert_eq!(rebuilt.digest(), live.digest(), "case {case}");
            assert_eq!(resumed.digest(), live.digest(), "case {case}");
        }
    }

    #[test]
    fn a_corrupt_outdated_or_inconsistent_checkpoint_is_rejected() {
        let mut rng = Rng(7);
        let mut view = ClusterView::default();
        fold(&random_events(&mut rng, 40), &mut view);
        let good = Checkpoint::of(&view);
        assert_eq!(good.restore().unwrap().digest(), view.digest());

        let mut flipped = good.clone();
        flipped.snapshot[3] ^= 0xFF;
        assert_eq!(flipped.restore().unwrap_err(), Rejected::HashMismatch);

        let mut garbage = good.clone();
        garbage.snapshot = vec![0xFF; 7];
        garbage.sha256 = sha256_hex(&garbage.snapshot);
        assert!(matches!(garbage.restore().unwrap_err(), Rejected::Undecodable(_)));

        let mut old = good.clone();
        old.schema_version = SNAPSHOT_SCHEMA - 1;
        assert_eq!(old.restore().unwrap_err().code(), Code::CheckpointOutdated);

        let mut lying = good.clone();
        lying.last_seq += 5;
        assert!(matches!(lying.restore().unwrap_err(), Rejected::SequenceMismatch { .. }));
    }
}
