//! Facts that must reach the log even when NATS cannot take them now. A process records a fact
//! here first: one file per event, written whole and fsynced before `record` returns, named in the
//! order recorded. A drainer appends them in that order, each with the id it was given when it was
//! recorded, and deletes a file only once the log has acknowledged it; a try whose ack was lost is
//! recognised by that id, so nothing is written twice. The files outlive a crash of the process:
//! the next one opening the same directory sends them. The outbox holds at most `capacity` events;
//! beyond that `record` refuses, and the caller says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::envelope::{Envelope, Meta};
use crate::event::Event;
use crate::log::EventLog;

/// Events one process keeps at most while the log cannot take them.
pub const CAPACITY: usize = 10_000;
/// How long a process gives its outbox to empty: at start (what an earlier run left) and at exit.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

const SUFFIX: &str = "event.json";
/// How long one append may take before the drainer tries again.
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("the outbox {dir} holds {capacity} events already; this one is not recorded")]
    Full { dir: String, capacity: usize },
    #[error("cannot write the outbox {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

pub struct Outbox {
    dir: PathBuf,
    capacity: usize,
    next: AtomicU64,
    pending: AtomicUsize,
    recorded: Notify,
}

impl Outbox {
    /// The outbox in `dir` (made 0700 if missing), with what an earlier process left in it.
    pub fn open(dir: &Path, capacity: usize) -> Result<Arc<Outbox>, OutboxError> {
        let io = |source| OutboxError::Io { dir: dir.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io)?;
        let left = files(dir).map_err(io)?;
        let next = left.last().and_then(|(n, _)| n.checked_add(1)).unwrap_or(0);
        Ok(Arc::new(Outbox {
            dir: dir.to_path_buf(),
            capacity,
            next: AtomicU64::new(next),
            pending: AtomicUsize::new(left.len()),
            recorded: Notify::new(),
        }))
    }

    /// Events recorded and not yet acknowledged by the log.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Keeps `event` until the log has it. Returns once it is on disk.
    pub fn record(&self, event: Event, meta: &Meta) -> Result<(), OutboxError> {
        let io = |source| OutboxError::Io { dir: self.dir.display().to_string(), source };
        if self.pending.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(OutboxError::Full { dir: self.dir.display().to_string(), capacity: self.capacity });
        }
        let envelope = Envelope::new(event, 0, meta);
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let written = write_synced(&self.dir, n, &envelope);
        if written.is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        written.map_err(io)?;
        self.recorded.notify_one();
        Ok(())
    }

    /// Sends what the outbox holds, in order, until `shutdown`; waits out an unreachable log.
    pub async fn drain(self: Arc<Self>, log: EventLog, shutdown: CancellationToken) {
        let mut delay = MIN_RETRY;
        loop {
            let sent = self.send_all(&log).await;
            let wait = match sent {
                Ok(()) => {
                    delay = MIN_RETRY;
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, pending = self.pending(), retry_in_ms = delay.as_millis() as u64,
                        "outbox: the log does not take events; keeping them");
                    let wait = delay;
                    delay = (delay * 2).min(MAX_RETRY);
                    Some(wait)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.recorded.notified(), if wait.is_none() => {}
                _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            }
        }
    }

    /// Waits until everything recorded is in the log, or `deadline` passes; true when empty.
    pub async fn flushed(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        while self.pending() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.pending() == 0
    }

    /// Before the process exits: gives the log [`FLUSH_DEADLINE`] to take everything; what it does
    /// not take stays on disk for the next process of this directory, and the log says so.
    pub async fn flush_before_exit(&self) {
        if !self.flushed(FLUSH_DEADLINE).await {
            tracing::warn!(pending = self.pending(), "the log did not take the last events; they stay in the outbox");
        }
    }

    async fn send_all(&self, log: &EventLog) -> Result<(), String> {
        let io = |e: std::io::Error| format!("cannot read the outbox {}: {e}", self.dir.display());
        for (_, path) in files(&self.dir).map_err(io)? {
            let envelope: Envelope = match std::fs::read(&path).map_err(io).and_then(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| format!("{} is not an event: {e}", path.display()))
            }) {
                Ok(envelope) => envelope,
                Err(e) => {
                    // Not ours to guess at: set it aside, keep the rest flowing.
                    tracing::error!(error = %e, "outbox: unreadable entry set aside");
                    let _ = std::fs::rename(&path, path.with_extension("unreadable"));
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
            };
            match tokio::time::timeout(APPEND_TIMEOUT, log.append_envelope(envelope)).await {
                Ok(Ok(_)) => {
                    std::fs::remove_file(&path).map_err(io)?;
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                }
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no ack within {}s", APPEND_TIMEOUT.as_secs())),
            }
        }
        Ok(())
    }
}

/// Events waiting in the outbox directory `dir`, whoever owns it (0 when there is none).
pub fn waiting_in(dir: &Path) -> usize {
    files(dir).map(|f| f.len()).unwrap_or(0)
}

/// The outbox's entries, oldest first.
fn files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(n) = name.strip_suffix(SUFFIX).and_then(|n| n.strip_suffix('.')).and_then(|n| n.parse().ok()) {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes entry `n` whole: a temporary file, synced, renamed into place, the directory synced.
fn write_synced(dir: &Path, n: u64, envelope: &Envelope) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(format!("{n:020}.{SUFFIX}"));
    let temporary = dir.join(format!("{n:020}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&serde_json::to_vec(envelope).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RequestCancelled;

    fn event(i: u32) -> Event {
        Event::RequestCancelled(RequestCancelled { request: format!("r{i}"), reason: "test".into() })
    }

    #[test]
    fn entries_survive_the_process_in_order_and_the_capacity_holds() {
        let dir = std::env::temp_dir().join(format!("rbee-outbox-{}", std::process::id()));
        let outbox = Outbox::open(&dir, 3).unwrap();
        for i in 0..3 {
            outbox.record(event(i), &Meta::default()).unwrap();
        }
        let full = outbox.record(event(99), &Meta::default());
        assert!(matches!(full, Err(OutboxError::Full { capacity: 3, .. })));
        drop(outbox);
        let again = Outbox::open(&dir, 10).unwrap();
        assert_eq!(again.pending(), 3, "a new process finds what the last one left");
        again.record(event(3), &Meta::default()).unwrap();
        let kept: Vec<String> = files(&dir)
            .unwrap()
            .iter()
            .map(|(_, p)| serde_json::from_slice::<Envelope>(&std::fs::read(p).unwrap()).unwrap())
            .map(|e| match e.event {
                Event::RequestCancelled(c) => c.request,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(kept, ["r0", "r1", "r2", "r3"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
