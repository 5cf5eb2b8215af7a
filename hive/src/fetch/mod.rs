//! Downloads a model into this node's store, every chunk an event, resumable across dropped
//! connections, crashes and restarts.
//!
//! One download per model and node: a hive claims it by appending `download.started` after the
//! download's last event (optimistic concurrency), and every later event of the download is appended
//! the same way, so a superseded claimant notices at its next chunk. Others wait for the model to be
//! registered, or take the claim over when its holder is gone. Each `download.progressed` is written
//! after its chunk is synced to disk and carries the offset and the SHA-256 state there: a successor
//! truncates the partial file to that offset and continues with a `Range` request, re-downloading at
//! most one chunk and rereading nothing.

pub mod gguf_check;
pub mod hub;
pub mod sha_state;
mod transfer;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rbee_bus::Code;
use rbee_bus::model_ref::ModelRef;
use rbee_bus::read::read_subject;
use rbee_bus::{
    AggregateKind, AppendError, DownloadFailed, DownloadFinished, DownloadProgressed, DownloadRetried, DownloadStarted,
    Event, EventLog, Expected, Meta, Position, download_id, subjects,
};
use rbee_projections::aggregate;
use rbee_projections::{DownloadStatus, Downloads, LiveView};

use sha_state::ResumableSha256;
use transfer::Transfer;

/// Why a download (or one attempt of it) failed, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: Code,
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// How long the server asked us to wait (429 Retry-After).
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn fatal(code: Code, message: String) -> Failure {
        Failure { code, message, retryable: false, retry_after: None }
    }

    pub fn retry(code: Code, message: String) -> Failure {
        Failure { code, message, retryable: true, retry_after: None }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone)]
pub struct DownloadSettings {
    /// Bytes per `download.progressed` event; a multiple of 64 (SHA-256 blocks).
    pub chunk_bytes: u64,
    /// Attempts after the first before giving up.
    pub retries: u32,
    /// No bytes for this long: the attempt is abandoned (`DOWNLOAD_TIMEOUT`).
    pub stall: Duration,
    /// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
    pub backoff: Duration,
    /// Bytes per second at most (0: unlimited).
    pub limit_bytes_per_sec: u64,
    pub hub: hub::HubSettings,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A verified model file in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Clone)]
pub struct Downloader {
    log: EventLog,
    view: LiveView,
    node: String,
    models_dir: PathBuf,
    settings: DownloadSettings,
    clients: hub::Clients,
    /// This hive run: tells its own claims from those of earlier runs.
    owner: String,
}

/// What the log says about a download when we look.
enum Claim {
    /// Ours now: download from `resume_from` with this hash state.
    Mine { position: Position, resume_from: u64, hasher: ResumableSha256, total: u64 },
    /// A live hive holds it: wait for the outcome after `seen`.
    Held { seen: u64 },
    /// It finished and its file is in place (its holder died before registering it).
    Done(Fetched),
}

impl Downloader {
    pub fn new(
        log: EventLog,
        view: LiveView,
        node: String,
        models_dir: PathBuf,
        mut settings: DownloadSettings,
    ) -> Result<Self, Failure> {
        settings.chunk_bytes = settings.chunk_bytes.max(64) / 64 * 64;
        let clients = hub::clients()?;
        let owner = uuid::Uuid::now_v7().to_string();
        Ok(Downloader { log, view, node, models_dir, settings, clients, owner })
    }

    /// Makes `model` present in the store from `reference`, downloading (or waiting for another
    /// hive's download of) it. `expected_sha256` overrides the hub's published checksum.
    pub async fn fetch(
        &self,
        model: &str,
        source: &str,
        reference: &ModelRef,
        expected_sha256: Option<&str>,
        meta: &Meta,
    ) -> Result<Fetched, Failure> {
        let id = download_id(&self.node, model);
        let remote = match self.resolve_with_retries(reference).await {
            Ok(remote) => remote,
            Err(f) => {
                // Recorded, so whoever asked for the model sees why it will not come.
                let failed =
                    Event::DownloadFailed(DownloadFailed { download: id, code: f.code, message: f.message.clone() });
                if let Err(e) = self.log.append(failed, Expected::Any, meta).await {
                    tracing::error!(error = %e, "download failure not recorded");
                }
                return Err(f);
            }
        };
        let expected = expected_sha256.map(str::to_ascii_lowercase).or(remote.sha256.clone());
        loop {
            match self.claim(&id, model, source, &expected, meta).await? {
                Claim::Mine { position, resume_from, hasher, total } => {
                    let job = Job {
                        id: id.clone(),
                        model: model.to_string(),
                        url: remote.url.clone(),
                        expected: expected.clone(),
                        meta: meta.clone(),
                    };
                    return self.download(&job, position, resume_from, hasher, total).await;
                }
                Claim::Done(fetched) => return Ok(fetched),
                Claim::Held { seen } => {
                    if let Some(outcome) = self.wait_for_holder(&id, model, seen).await {
                        return outcome;
                    }
                }
            }
        }
    }

    /// The size the source announces for `reference` (a HEAD on the hub), if it does.
    pub async fn announced_size(&self, reference: &ModelRef) -> Option<u64> {
        self.settings.hub.resolve(&self.clients, reference).await.ok().and_then(|r| r.size)
    }

    async fn resolve_with_retries(&self, reference: &ModelRef) -> Result<hub::Remote, Failure> {
        let mut attempt = 0;
        loop {
            match self.settings.hub.resolve(&self.clients, reference).await {
                Err(f) if f.retryable && attempt < self.settings.retries => {
                    attempt += 1;
                    let delay = self.delay(attempt, &f);
                    tracing::warn!(code = %f.code, error = %f.message, ?delay, "model hub lookup failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    fn partial_path(&self, model: &str) -> PathBuf {
        self.models_dir.join(format!("{model}.gguf.partial"))
    }

    fn target_path(&self, model: &str) -> PathBuf {
        self.models_dir.join(format!("{model}.gguf"))
    }

    /// Reads the download's history and either claims it (resuming what a dead holder left) or
    /// reports who holds it; the download aggregate's rules decide
    /// ([`rbee_projections::aggregate::download`]).
    async fn claim(
        &self,
        id: &str,
        model: &str,
        source: &str,
        expected: &Option<String>,
        meta: &Meta,
    ) -> Result<Claim, Failure> {
        let subject = subjects::aggregate(AggregateKind::Download, id);
        loop {
            let history = read_subject(&self.log, &subject)
                .await
                .map_err(|e| Failure::retry(Code::EventLogUnavailable, e.to_string()))?;
            let mut folded = Downloads::default();
            history.iter().for_each(|r| folded.apply(r));
            let last = history.last().map(|r| Position { seq: r.stream_seq, version: r.envelope.version });
            let previous = folded.by_id.get(id);
            // What only this hive can see: the holder's process, the files on its disk.
            let finished = previous.and_then(|d| self.finished_file(d, model));
            let hasher = previous.and_then(|d| ResumableSha256::resume(&d.sha256_state, d.offset));
            let on_disk = std::fs::metadata(self.partial_path(model)).map(|m| m.len()).unwrap_or(0);
            let command = aggregate::download::Claim {
                started: DownloadStarted {
                    download: id.to_string(),
                    node: self.node.clone(),
                    model: model.to_string(),
                    source: source.to_string(),
                    total_bytes: 0,
                    sha256: expected.clone(),
                    resume_from: 0,
                    owner: self.owner.clone(),
                    pid: std::process::id(),
                },
                holder_alive: previous.is_some_and(|d| self.holder_alive(d)),
                finished_in_place: finished.is_some(),
                resumable_bytes: if hasher.is_some() { on_disk } else { 0 },
            };
            let decided = aggregate::download::decide(previous, &command).map(|events| events.into_iter().next());
            let started = match (decided, previous, finished) {
                (Err(_), Some(d), _) => {
                    tracing::info!(holder = %d.owner, pid = d.pid, offset = d.offset, "another hive is downloading this model; waiting");
                    return Ok(Claim::Held { seen: d.position.seq });
                }
                (Ok(None), _, Some(done)) => return Ok(Claim::Done(done)),
                (Ok(Some(Event::DownloadStarted(started))), _, _) => started,
                (other, _, _) => {
                    let why = format!("the download rules gave {other:?} for {id}");
                    return Err(Failure::fatal(Code::InternalError, why));
                }
            };
            let (resume_from, total) = (started.resume_from, started.total_bytes);
            let event = Event::DownloadStarted(started);
            let hasher = if resume_from > 0 { hasher.unwrap_or_default() } else { ResumableSha256::default() };
            match self.log.append(event, last.map_or(Expected::NoStream, Expected::At), meta).await {
                Ok(position) => {
                    if resume_from > 0 {
                        tracing::info!(resume_from, total, "resuming a download its previous holder left");
                    }
                    return Ok(Claim::Mine { position, resume_from, hasher, total });
                }
                Err(AppendError::Conflict { .. }) => continue,
                Err(e) => return Err(Failure::retry(Code::EventLogUnavailable, e.to_string())),
            }
        }
    }

    /// The file of a finished download, if it is still in place with its size (its content was
    /// verified before it got there).
    fn finished_file(&self, d: &rbee_projections::Download, model: &str) -> Option<Fetched> {
        let sha256 = d.verified_sha256.clone().filter(|_| d.status == DownloadStatus::Finished)?;
        let path = self.target_path(model);
        let size_bytes = std::fs::metadata(&path).ok()?.len();
        (size_bytes == d.offset).then_some(Fetched { path, size_bytes, sha256 })
    }

    /// Whether the hive process holding a download is still at work: this run, or a live hive
    /// process on this node.
    fn holder_alive(&self, d: &rbee_projections::Download) -> bool {
        if d.owner == self.owner {
            return true;
        }
        d.pid != std::process::id() && rbee_runtime::runs(d.pid, "rbee-hive")
    }

    /// Waits for another holder's outcome: `Some` when the model got registered or the download
    /// failed, `None` when the holder is gone (then claim again).
    async fn wait_for_holder(&self, id: &str, model: &str, seen: u64) -> Option<Result<Fetched, Failure>> {
        loop {
            let (entry, download) =
                self.view.read(|v| (v.catalog.get(model, &self.node).cloned(), v.downloads.by_id.get(id).cloned()));
            if let Some(e) = entry.filter(|e| Path::new(&e.path).is_file()) {
                return Some(Ok(Fetched { path: e.path.into(), size_bytes: e.size_bytes, sha256: e.sha256 }));
            }
            match download {
                Some(d) if d.position.seq >= seen && d.status == DownloadStatus::Failed => {
                    let code = d.last_error.unwrap_or(Code::DownloadFailed);
                    return Some(Err(Failure::fatal(
                        code,
                        format!("the download of {model} by another hive failed ({code})"),
                    )));
                }
                Some(d) if d.status == DownloadStatus::Active && !self.holder_alive(&d) => return None,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn delay(&self, attempt: u32, failure: &Failure) -> Duration {
        if let Some(after) = failure.retry_after {
            return after.min(MAX_RETRY_AFTER);
        }
        self.settings.backoff.saturating_mul(1 << (attempt - 1).min(16)).min(MAX_BACKOFF)
    }

    /// Our claim: attempts with backoff until the file is complete and verified, or a failure that
    /// retrying cannot fix. The partial file is removed on failure.
    async fn download(
        &self,
        job: &Job,
        position: Position,
        resume_from: u64,
        hasher: ResumableSha256,
        total: u64,
    ) -> Result<Fetched, Failure> {
        let partial = self.partial_path(&job.model);
        let result = async {
            std::fs::create_dir_all(&self.models_dir).map_err(|e| disk_failure(&e, &partial))?;
            let mut t = Transfer::open(&partial, resume_from, hasher, total, position).await?;
            let mut attempt = 0;
            loop {
                let outcome = match self.transfer(job, &mut t).await {
                    Ok(()) => self.verify(job, &mut t).await,
                    Err(f) => Err(f),
                };
                match outcome {
                    Ok(fetched) => return Ok(fetched),
                    Err(f) if f.retryable && attempt < self.settings.retries => {
                        attempt += 1;
                        let delay = self.delay(attempt, &f);
                        tracing::warn!(code = %f.code, error = %f.message, attempt, ?delay, offset = t.offset, "download attempt failed; retrying");
                        let retried = Event::DownloadRetried(DownloadRetried {
                            download: job.id.clone(),
                            attempt,
                            code: f.code,
                            message: f.message.clone(),
                            delay_ms: delay.as_millis() as u64,
                        });
                        t.position = self.append(job, retried, t.position).await?;
                        tokio::time::sleep(delay).await;
                    }
                    Err(f) => return Err(f),
                }
            }
        }
        .await;
        if let Err(f) = &result {
            let _ = std::fs::remove_file(&partial);
            tracing::error!(code = %f.code, error = %f.message, "download failed; partial file removed");
            let failed = Event::DownloadFailed(DownloadFailed {
                download: job.id.clone(),
                code: f.code,
                message: f.message.clone(),
            });
            if let Err(e) = self.log.append(failed, Expected::Any, &job.meta).await {
                tracing::error!(error = %e, "download failure not recorded");
            }
        }
        result
    }

    /// One attempt: a (ranged) GET from the current offset to the end. Chunks are recorded by a
    /// task of their own as the writer reaches them, so receiving never waits for the log.
    async fn transfer(&self, job: &Job, t: &mut Transfer) -> Result<(), Failure> {
        // Bytes an earlier attempt received but did not write are fetched again.
        t.settle().await?;
        let (boundaries, chunks) = tokio::sync::mpsc::unbounded_channel();
        let recorder = tokio::spawn(self.clone().record_chunks(job.clone(), chunks, t.position, t.offset));
        t.progress = Some(boundaries);
        let received = self.receive(job, t, &recorder).await;
        // The writer finishes what it was handed, then the recorder what the writer reached.
        let written = t.settle().await;
        t.progress = None;
        t.position = recorder
            .await
            .map_err(|e| Failure::fatal(Code::DownloadFailed, format!("the chunk recorder failed: {e}")))??;
        written.and(received)
    }

    /// Appends `download.progressed` for every chunk boundary the writer reaches, each after the
    /// previous one; returns the claim's last position.
    async fn record_chunks(
        self,
        job: Job,
        mut chunks: tokio::sync::mpsc::UnboundedReceiver<Chunk>,
        mut position: Position,
        from: u64,
    ) -> Result<Position, Failure> {
        let started = Instant::now();
        while let Some(chunk) = chunks.recv().await {
            let rate = ((chunk.offset - from) as f64 / started.elapsed().as_secs_f64().max(1e-3)) as u64;
            let progressed = Event::DownloadProgressed(DownloadProgressed {
                download: job.id.clone(),
                offset: chunk.offset,
                total_bytes: chunk.total,
                sha256_state: chunk.sha256_state,
                bytes_per_sec: rate,
            });
            position = self.append(&job, progressed, position).await?;
        }
        Ok(position)
    }

    async fn receive(
        &self,
        job: &Job,
        t: &mut Transfer,
        recorder: &tokio::task::JoinHandle<Result<Position, Failure>>,
    ) -> Result<(), Failure> {
        let stall = self.settings.stall;
        let mut request = self.settings.hub.get(&self.clients.fetch, &job.url);
        if t.offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={}-", t.offset));
        }
        let timed_out = || {
            Failure::retry(Code::DownloadTimeout, format!("no answer from {} for {}s", job.url, stall.as_secs_f32()))
        };
        let mut resp = tokio::time::timeout(stall, request.send())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| Failure::retry(Code::DownloadFailed, format!("{}: {}", job.url, hub::causes(&e))))?;
        hub::check_status(&resp, &job.url)?;
        if t.offset > 0 && resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            tracing::warn!(offset = t.offset, "the server ignored the range; starting over");
            t.restart().await?;
        }
        let length = resp.content_length().unwrap_or(0);
        if length > 0 {
            t.total = t.offset + length;
            let free = crate::resources::read(&self.models_dir).disk_free_bytes;
            if length > free {
                return Err(Failure::fatal(
                    Code::InsufficientDisk,
                    format!(
                        "{} needs {} MB more, {} has {} MB free; remove models with `rbee models rm`",
                        job.model,
                        mb(length),
                        self.models_dir.display(),
                        mb(free)
                    ),
                ));
            }
        }
        let started = Instant::now();
        let mut received = 0u64;
        loop {
            let next = tokio::time::timeout(stall, resp.chunk())
                .await
                .map_err(|_| {
                    Failure::retry(
                        Code::DownloadTimeout,
                        format!("no bytes from {} for {}s at offset {}", job.url, stall.as_secs_f32(), t.offset),
                    )
                })?
                .map_err(|e| {
                    Failure::retry(
                        Code::DownloadFailed,
                        format!("connection to {} lost at offset {}: {}", job.url, t.offset, hub::causes(&e)),
                    )
                })?;
            let Some(bytes) = next else {
                t.flush_all().await?;
                break;
            };
            if recorder.is_finished() {
                // It stopped early: its error is the attempt's.
                return Ok(());
            }
            received += bytes.len() as u64;
            t.write(&bytes, self.settings.chunk_bytes).await?;
            if self.settings.limit_bytes_per_sec > 0 {
                let due = Duration::from_secs_f64(received as f64 / self.settings.limit_bytes_per_sec as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
            }
        }
        if t.total > 0 && t.offset < t.total {
            return Err(Failure::retry(
                Code::DownloadFailed,
                format!("connection to {} closed at {} of {} bytes", job.url, t.offset, t.total),
            ));
        }
        Ok(())
    }

    /// The whole file is on disk: checksum and GGUF header, then into place. A bad file is deleted
    /// and the next attempt starts over.
    async fn verify(&self, job: &Job, t: &mut Transfer) -> Result<Fetched, Failure> {
        let (size_bytes, sha256) = t.finish().await?;
        if let Some(expected) = job.expected.as_deref().filter(|e| *e != sha256) {
            t.restart().await?;
            return Err(Failure::retry(
                Code::ChecksumMismatch,
                format!("{} has sha256 {sha256}, expected {expected}; deleted", job.url),
            ));
        }
        if let Err(reason) = gguf_check::check(&t.path) {
            t.restart().await?;
            return Err(Failure::retry(
                Code::ModelInvalid,
                format!("{} is not a usable GGUF model: {reason}; deleted", job.url),
            ));
        }
        let target = self.target_path(&job.model);
        std::fs::rename(&t.path, &target).map_err(|e| disk_failure(&e, &target))?;
        let finished =
            Event::DownloadFinished(DownloadFinished { download: job.id.clone(), size_bytes, sha256: sha256.clone() });
        self.append(job, finished, t.position).await?;
        tracing::info!(size_bytes, %sha256, path = %target.display(), "download verified");
        Ok(Fetched { path: target, size_bytes, sha256 })
    }

    /// Appends an event of our claim right after our previous one: if another hive took the claim
    /// over meanwhile, we stop.
    async fn append(&self, job: &Job, event: Event, after: Position) -> Result<Position, Failure> {
        match self.log.append(event, Expected::At(after), &job.meta).await {
            Ok(p) => Ok(p),
            Err(AppendError::Conflict { .. }) => Err(Failure::fatal(
                Code::DownloadTakenOver,
                format!("another hive took over the download of {}", job.model),
            )),
            Err(e) => Err(Failure::retry(Code::EventLogUnavailable, e.to_string())),
        }
    }
}

/// A chunk boundary the writer reached: synced, with the hash state there.
pub(crate) struct Chunk {
    pub offset: u64,
    pub total: u64,
    pub sha256_state: Vec<u8>,
}

/// One claimed download.
#[derive(Clone)]
struct Job {
    id: String,
    model: String,
    url: String,
    expected: Option<String>,
    meta: Meta,
}

pub(crate) fn disk_failure(e: &std::io::Error, path: &Path) -> Failure {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return Failure::fatal(
            Code::DiskFull,
            format!(
                "the disk holding {} is full; partial file removed; free space or remove models with `rbee models rm`",
                path.display()
            ),
        );
    }
    Failure::fatal(Code::DownloadFailed, format!("cannot write {}: {e}", path.display()))
}

fn mb(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}
