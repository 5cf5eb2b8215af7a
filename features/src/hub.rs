//! A model-hub double: an HTTP server that serves real files in the hub's URL layout
//! (`/<org>/<repo>/resolve/<rev>/<file>`, `/api/models/<org>/<repo>/revision/<rev>`), with `Range`
//! support and the LFS checksum in `X-Linked-Etag`, and that can be told to misbehave: answer
//! 404/403/429/500, cut the connection at a byte offset, stall, or throttle. It stands in for the
//! internet this machine lacks; the hive's download code under test is the production code.
//!
//! It runs on its own thread and runtime, so test steps that block never slow it down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;

/// How the hub misbehaves for a file; `times` counts the GET requests it applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    NotFound,
    Forbidden,
    RateLimited {
        retry_after_secs: u64,
        times: u32,
    },
    ServerError {
        times: u32,
    },
    /// The connection is dropped when this absolute offset is reached.
    CutAt {
        offset: u64,
        times: u32,
    },
    /// Bytes stop (the connection stays open) at this absolute offset, until [`Hub::release_stalls`].
    StallAt {
        offset: u64,
        times: u32,
    },
}

/// A request the hub saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
    pub at: Instant,
    /// Body bytes sent so far.
    pub sent: Arc<std::sync::atomic::AtomicU64>,
}

impl Seen {
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
struct HubFile {
    path: PathBuf,
    sha256: String,
}

struct Inner {
    /// `org/repo` -> file name -> file.
    repos: HashMap<String, HashMap<String, HubFile>>,
    faults: HashMap<String, Fault>,
    throttle_bytes_per_sec: u64,
    seen: Vec<Seen>,
    /// Bumped to let stalled transfers go on.
    releases: tokio::sync::watch::Sender<u64>,
}

#[derive(Clone)]
pub struct Hub {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Hub {
    /// Starts the hub on a free loopback port.
    pub fn start() -> Hub {
        let inner = Arc::new(Mutex::new(Inner {
            repos: HashMap::new(),
            faults: HashMap::new(),
            throttle_bytes_per_sec: 0,
            seen: Vec::new(),
            releases: tokio::sync::watch::Sender::new(0),
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the hub double");
        let url = format!("http://{}", listener.local_addr().expect("hub address"));
        listener.set_nonblocking(true).expect("non-blocking listener");
        let state = inner.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("hub runtime");
            runtime.block_on(async move {
                let app = axum::Router::new()
                    .route("/api/models/{org}/{repo}/revision/{rev}", get(list_files))
                    .route("/{org}/{repo}/resolve/{rev}/{*file}", get(serve_file).head(serve_file))
                    .with_state(state);
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                axum::serve(listener, app).await.expect("hub double serves");
            });
        });
        Hub { url, inner }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `path` as `<repo>/<file>`, advertising `sha256` as its checksum.
    pub fn publish(&self, repo: &str, file: &str, path: PathBuf, sha256: &str) {
        let mut inner = self.lock();
        inner.repos.entry(repo.into()).or_default().insert(file.into(), HubFile { path, sha256: sha256.into() });
    }

    pub fn set_fault(&self, repo: &str, file: &str, fault: Fault) {
        self.lock().faults.insert(format!("{repo}/{file}"), fault);
    }

    pub fn clear_faults(&self) {
        let mut inner = self.lock();
        inner.faults.clear();
        inner.throttle_bytes_per_sec = 0;
    }

    /// Transfers stalled by [`Fault::StallAt`] go on.
    pub fn release_stalls(&self) {
        self.lock().releases.send_modify(|n| *n += 1);
    }

    /// Every file is served at most this fast (0: unlimited).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.lock().throttle_bytes_per_sec = bytes_per_sec;
    }

    /// Requests for paths containing `needle`, in order.
    pub fn seen(&self, needle: &str) -> Vec<Seen> {
        self.lock().seen.iter().filter(|s| s.path.contains(needle)).cloned().collect()
    }
}

async fn list_files(
    State(state): State<Arc<Mutex<Inner>>>,
    Path((org, repo, _rev)): Path<(String, String, String)>,
) -> Response {
    let inner = state.lock().unwrap_or_else(|p| p.into_inner());
    match inner.repos.get(&format!("{org}/{repo}")) {
        Some(files) => {
            let siblings: Vec<_> = files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
            axum::Json(serde_json::json!({ "id": format!("{org}/{repo}"), "siblings": siblings })).into_response()
        }
        None => (StatusCode::NOT_FOUND, "Repository not found").into_response(),
    }
}

async fn serve_file(
    State(state): State<Arc<Mutex<Inner>>>,
    method: Method,
    Path((org, repo, _rev, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let key = format!("{org}/{repo}/{file}");
    let range = headers.get("range").and_then(|v| v.to_str().ok()).map(str::to_string);
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let is_get = method == Method::GET;
    let mut inner = state.lock().unwrap_or_else(|p| p.into_inner());
    let found = inner.repos.get(&format!("{org}/{repo}")).and_then(|f| f.get(&file)).cloned();
    let throttle = inner.throttle_bytes_per_sec;
    let releases = inner.releases.subscribe();
    // Faults apply to GETs; a HEAD sees what a GET would (except transient ones).
    let fault = inner.faults.get_mut(&key).and_then(|f| {
        let take = |times: &mut u32| {
            if is_get && *times > 0 {
                *times -= 1;
                true
            } else {
                false
            }
        };
        match f {
            Fault::NotFound | Fault::Forbidden => Some(f.clone()),
            Fault::RateLimited { times, .. }
            | Fault::ServerError { times }
            | Fault::CutAt { times, .. }
            | Fault::StallAt { times, .. } => take(times).then(|| f.clone()),
        }
    });
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut record = |status: u16| {
        let seen = Seen {
            method: method.to_string(),
            path: key.clone(),
            range: range.clone(),
            authorization: authorization.clone(),
            status,
            at: Instant::now(),
            sent: sent.clone(),
        };
        inner.seen.push(seen);
    };
    let Some(hub_file) = found else {
        record(404);
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    match fault {
        Some(Fault::NotFound) => {
            record(404);
            return (StatusCode::NOT_FOUND, "Entry not found").into_response();
        }
        Some(Fault::Forbidden) => {
            record(403);
            return (StatusCode::FORBIDDEN, "Access to this model is restricted").into_response();
        }
        Some(Fault::RateLimited { retry_after_secs, .. }) => {
            record(429);
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", retry_after_secs.to_string())], "slow down")
                .into_response();
        }
        Some(Fault::ServerError { .. }) => {
            record(500);
            return (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response();
        }
        _ => {}
    }
    let size = std::fs::metadata(&hub_file.path).map(|m| m.len()).unwrap_or(0);
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<u64>().ok());
    if start.is_some_and(|s| s >= size) {
        record(416);
        return (StatusCode::RANGE_NOT_SATISFIABLE, [("content-range", format!("bytes */{size}"))]).into_response();
    }
    let from = start.unwrap_or(0);
    let status = if start.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    record(status.as_u16());
    drop(inner);
    let mut response = Response::builder()
        .status(status)
        .header("content-length", (size - from).to_string())
        .header("accept-ranges", "bytes")
        .header("x-linked-etag", format!("\"{}\"", hub_file.sha256))
        .header("x-linked-size", size.to_string());
    if start.is_some() {
        response = response.header("content-range", format!("bytes {from}-{}/{size}", size - 1));
    }
    if !is_get {
        return response.body(Body::empty()).expect("valid response");
    }
    let (cut, stall) = match fault {
        Some(Fault::CutAt { offset, .. }) => (Some(offset), None),
        Some(Fault::StallAt { offset, .. }) => (None, Some(offset)),
        _ => (None, None),
    };
    let body =
        file_stream(hub_file.path, from, size, cut, stall.map(|at| (at, releases)), throttle).inspect(move |piece| {
            if let Ok(bytes) = piece {
                sent.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
    response.body(Body::from_stream(body)).expect("valid response")
}

const PIECE: u64 = 64 * 1024;

/// A transfer stalled at `at` until the hub's releases counter moves.
type Stall = (u64, tokio::sync::watch::Receiver<u64>);

/// The file from `from`, in pieces; ends with an error at `cut`, hangs at `stall` (until released),
/// paced by `throttle`.
fn file_stream(
    path: PathBuf,
    from: u64,
    size: u64,
    cut: Option<u64>,
    stall: Option<Stall>,
    throttle: u64,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let started = Instant::now();
    futures::stream::unfold((from, None::<tokio::fs::File>, stall), move |(offset, file, mut stall)| {
        let path = path.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            if offset >= size {
                return None;
            }
            if cut.is_some_and(|c| offset >= c) {
                return Some((
                    Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut by the hub double")),
                    (size, None, None),
                ));
            }
            if let Some((at, release)) = stall.as_mut()
                && offset >= *at
            {
                let _ = tokio::time::timeout(Duration::from_secs(3600), release.changed()).await;
                stall = None;
            }
            let mut file = match file {
                Some(f) => f,
                None => {
                    let mut f = tokio::fs::File::open(&path).await.ok()?;
                    f.seek(std::io::SeekFrom::Start(offset)).await.ok()?;
                    f
                }
            };
            let mut end = (offset + PIECE).min(size);
            for limit in [cut, stall.as_ref().map(|(at, _)| *at)].into_iter().flatten() {
                if limit > offset {
                    end = end.min(limit);
                }
            }
            let mut buf = vec![0u8; (end - offset) as usize];
            file.read_exact(&mut buf).await.ok()?;
            if throttle > 0 {
                let due = Duration::from_secs_f64((end - from) as f64 / throttle as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            Some((Ok(buf), (end, Some(file), stall)))
        }
    })
    .boxed()
}
