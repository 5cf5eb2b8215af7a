//! Downloads of models to nodes, folded from `download.*` events: who holds each claim, how far it
//! got, and how it ended. The hive reads it to resume; `rbee models` shows it.

use std::collections::BTreeMap;

use rbee_bus::{Code, Event, Position, Recorded};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownloadStatus {
    Active,
    Finished,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    pub id: String,
    pub node: String,
    pub model: String,
    pub source: String,
    pub status: DownloadStatus,
    pub total_bytes: u64,
    /// Bytes on disk and hashed, as last recorded.
    pub offset: u64,
    /// SHA-256 state after `offset` (empty at 0).
    pub sha256_state: Vec<u8>,
    pub expected_sha256: Option<String>,
    /// The checksum of the finished file.
    pub verified_sha256: Option<String>,
    pub owner: String,
    pub pid: u32,
    pub attempts: u32,
    /// Error code of a failed download, or of the last retried attempt.
    pub last_error: Option<Code>,
    /// When the last event about it was recorded (ms since the epoch): tells a stalled claim.
    pub updated_ms: u64,
    pub position: Position,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downloads {
    pub by_id: BTreeMap<String, Download>,
}

/// What one event does to the download it names.
type Change<'a> = Box<dyn FnOnce(&mut Download) + 'a>;

impl Downloads {
    pub fn apply(&mut self, rec: &Recorded) {
        let env = &rec.envelope;
        let position = Position { seq: rec.stream_seq, version: env.version };
        if let Event::DownloadStarted(e) = &env.event {
            self.by_id.insert(
                e.download.clone(),
                Download {
                    id: e.download.clone(),
                    node: e.node.clone(),
                    model: e.model.clone(),
                    source: e.source.clone(),
                    status: DownloadStatus::Active,
                    total_bytes: e.total_bytes,
                    offset: e.resume_from,
                    sha256_state: Vec::new(),
                    expected_sha256: e.sha256.clone(),
                    verified_sha256: None,
                    owner: e.owner.clone(),
                    pid: e.pid,
                    attempts: 0,
                    last_error: None,
                    updated_ms: env.at_ms,
                    position,
                },
            );
            return;
        }
        let (id, change): (&str, Change) = match &env.event {
            Event::DownloadProgressed(e) => (
                &e.download,
                Box::new(|d| {
                    d.offset = e.offset;
                    d.total_bytes = e.total_bytes;
                    d.sha256_state = e.sha256_state.clone();
                }),
            ),
            Event::DownloadRetried(e) => (
                &e.download,
                Box::new(|d| {
                    d.attempts = e.attempt;
                    d.last_error = Some(e.code);
                }),
            ),
            Event::DownloadFinished(e) => (
                &e.download,
                Box::new(|d| {
                    d.status = DownloadStatus::Finished;
                    d.offset = e.size_bytes;
                    d.verified_sha256 = Some(e.sha256.clone());
                }),
            ),
            Event::DownloadFailed(e) => (
                &e.download,
                Box::new(|d| {
                    d.status = DownloadStatus::Failed;
                    d.last_error = Some(e.code);
                }),
            ),
            _ => return,
        };
        if let Some(d) = self.by_id.get_mut(id) {
            change(d);
            d.updated_ms = env.at_ms;
            d.position = position;
        }
    }

    /// Downloads still under way, in id order.
    pub fn active(&self) -> impl Iterator<Item = &Download> {
        self.by_id.values().filter(|d| d.status == DownloadStatus::Active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::*;

    fn rec(seq: u64, event: Event) -> Recorded {
        Recorded { stream_seq: seq, subject: String::new(), envelope: Envelope::new(event, seq, &Meta::default()) }
    }

    #[test]
    fn a_download_is_followed_from_claim_to_end() {
        let id = download_id("n1", "m1");
        let mut d = Downloads::default();
        d.apply(&rec(
            1,
            Event::DownloadStarted(DownloadStarted {
                download: id.clone(),
                node: "n1".into(),
                model: "m1".into(),
                source: "hf:o/r".into(),
                total_bytes: 100,
                sha256: None,
                resume_from: 0,
                owner: "a".into(),
                pid: 7,
            }),
        ));
        d.apply(&rec(
            2,
            Event::DownloadProgressed(DownloadProgressed {
                download: id.clone(),
                offset: 64,
                total_bytes: 100,
                sha256_state: vec![1; 32],
                bytes_per_sec: 1,
            }),
        ));
        assert_eq!(d.active().map(|x| x.offset).collect::<Vec<_>>(), vec![64]);
        d.apply(&rec(
            3,
            Event::DownloadFailed(DownloadFailed {
                download: id.clone(),
                code: Code::DiskFull,
                message: String::new(),
            }),
        ));
        assert_eq!(d.active().count(), 0);
        assert_eq!(d.by_id[&id].last_error, Some(Code::DiskFull));
        assert_eq!(d.by_id[&id].position.seq, 3);
    }
}
