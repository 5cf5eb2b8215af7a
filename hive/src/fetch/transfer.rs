//! The partial file of a download and the hash of what is in it. Received bytes are gathered into
//! pieces; each piece is written and hashed on a blocking thread while the next one arrives from
//! the network, so hashing costs no transfer time. `offset` counts the bytes handed to the writer;
//! [`Transfer::settle`] waits until they are on disk.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use rbee_bus::Code;
use rbee_bus::Position;
use tokio::task::JoinHandle;

use super::sha_state::ResumableSha256;
use super::{Chunk, Failure, disk_failure};

/// Bytes gathered before a write: network reads are small, disk writes should not be.
const PIECE: usize = 1 << 20;

struct Disk {
    file: std::fs::File,
    hasher: ResumableSha256,
}

pub(super) struct Transfer {
    pub path: PathBuf,
    /// Bytes handed to the writer (on disk once settled).
    pub offset: u64,
    pub total: u64,
    /// Our claim's last event.
    pub position: Position,
    /// Received, not yet handed to the writer: bytes past `offset`.
    pending: Vec<u8>,
    /// The file and hasher, when no write is under way.
    disk: Option<Disk>,
    /// The write under way; it gives the file and hasher back.
    writing: Option<JoinHandle<(Disk, std::io::Result<()>)>>,
    /// Where the writer reports the chunk boundaries it reached (none: not reported).
    pub progress: Option<tokio::sync::mpsc::UnboundedSender<Chunk>>,
}

impl Transfer {
    pub async fn open(
        path: &Path,
        resume_from: u64,
        hasher: ResumableSha256,
        total: u64,
        position: Position,
    ) -> Result<Transfer, Failure> {
        let io = |e: std::io::Error| disk_failure(&e, path);
        let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(path).map_err(io)?;
        // Bytes past the last recorded chunk were never accounted for: drop them.
        file.set_len(resume_from).map_err(io)?;
        file.seek(std::io::SeekFrom::Start(resume_from)).map_err(io)?;
        let disk = Some(Disk { file, hasher });
        Ok(Transfer {
            path: path.to_path_buf(),
            offset: resume_from,
            total,
            position,
            pending: Vec::with_capacity(2 * PIECE),
            disk,
            writing: None,
            progress: None,
        })
    }

    /// Waits for the write under way; drops bytes received but not handed over.
    pub async fn settle(&mut self) -> Result<(), Failure> {
        self.pending.clear();
        self.wait_write().await
    }

    async fn wait_write(&mut self) -> Result<(), Failure> {
        if let Some(writing) = self.writing.take() {
            let (disk, result) =
                writing.await.map_err(|e| Failure::fatal(Code::DownloadFailed, format!("the writer failed: {e}")))?;
            self.disk = Some(disk);
            result.map_err(|e| disk_failure(&e, &self.path))?;
        }
        Ok(())
    }

    /// Empties the file to start over.
    pub async fn restart(&mut self) -> Result<(), Failure> {
        let _ = self.settle().await;
        let disk = self
            .disk
            .as_mut()
            .ok_or_else(|| Failure::fatal(Code::DownloadFailed, "the partial file is gone".into()))?;
        let io = |e: std::io::Error| disk_failure(&e, &self.path);
        disk.file.set_len(0).map_err(io)?;
        disk.file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        disk.hasher = ResumableSha256::default();
        self.offset = 0;
        Ok(())
    }

    /// Takes `data` in and hands it to the writer in pieces, a piece ending at every chunk
    /// boundary (which the writer syncs and reports).
    pub async fn write(&mut self, data: &[u8], chunk: u64) -> Result<(), Failure> {
        self.pending.extend_from_slice(data);
        loop {
            let boundary = (self.offset / chunk + 1) * chunk;
            let to_boundary = boundary - self.offset;
            if self.pending.len() as u64 >= to_boundary {
                self.hand_over(to_boundary as usize, true).await?;
            } else if self.pending.len() >= PIECE {
                self.hand_over(self.pending.len(), false).await?;
            } else {
                return Ok(());
            }
        }
    }

    /// The end of the stream: hands over what is still held.
    pub async fn flush_all(&mut self) -> Result<(), Failure> {
        self.hand_over(self.pending.len(), false).await
    }

    /// The end of the download: everything written, synced and hashed; the size and the digest.
    pub async fn finish(&mut self) -> Result<(u64, String), Failure> {
        let rest = self.pending.len();
        self.hand_over(rest, true).await?;
        self.wait_write().await?;
        let disk = self
            .disk
            .as_mut()
            .ok_or_else(|| Failure::fatal(Code::DownloadFailed, "the partial file is gone".into()))?;
        Ok((self.offset, std::mem::take(&mut disk.hasher).finish()))
    }

    /// Starts writing and hashing the first `n` pending bytes (after the previous write ends). At a
    /// chunk boundary the file is synced and the boundary reported.
    async fn hand_over(&mut self, n: usize, boundary: bool) -> Result<(), Failure> {
        self.wait_write().await?;
        let Some(mut disk) = self.disk.take() else {
            return Err(Failure::fatal(Code::DownloadFailed, "the partial file is gone".into()));
        };
        let piece: Vec<u8> = self.pending.drain(..n).collect();
        self.offset += n as u64;
        let (offset, total) = (self.offset, self.total);
        let report = self.progress.clone().filter(|_| boundary);
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let result =
                disk.file.write_all(&piece).and_then(|()| if boundary { disk.file.sync_data() } else { Ok(()) });
            if result.is_ok() {
                disk.hasher.update(&piece);
                if let (Some(report), Some(sha256_state)) = (report, disk.hasher.saved_state()) {
                    let _ = report.send(Chunk { offset, total, sha256_state });
                }
            }
            (disk, result)
        }));
        Ok(())
    }
}
