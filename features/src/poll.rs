//! Waiting without sleeping blindly: poll for an expected state with a deadline, and say what was
//! last seen when it never came.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

/// Polls `probe` until it returns `Ok`, or fails after `timeout` with the last `Err` seen.
pub async fn eventually<T, E: Debug, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not true within {timeout:?}; last seen: {last:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
