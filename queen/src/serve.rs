//! The HTTP server under the API: HTTP/1 connections that must send a request's headers within
//! `--header-timeout-secs` (a client that trickles them is cut off), and at most
//! `--max-connections-per-client` open connections per client address (more are closed at once).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_per_client: usize,
}

/// Open connections per client address.
#[derive(Default, Clone)]
struct OpenConnections(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One open connection, counted while it lives.
struct Counted {
    open: OpenConnections,
    client: IpAddr,
}

impl OpenConnections {
    fn admit(&self, client: IpAddr, max: usize) -> Option<Counted> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(client).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Counted { open: self.clone(), client })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown`; then lets requests in flight finish (up to `grace`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let open = OpenConnections::default();
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: wait a moment rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Some(counted) = open.admit(peer.ip(), limits.max_per_client) else {
            tracing::warn!(client = %peer.ip(), max = limits.max_per_client, "connection refused: too many open from this client");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _counted = counted;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!("connections still open after {}s; closing them", grace.as_secs());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_share_of_connections() {
        let open = OpenConnections::default();
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let first = open.admit(client, 2).unwrap();
        let _second = open.admit(client, 2).unwrap();
        assert!(open.admit(client, 2).is_none());
        assert!(open.admit("10.0.0.2".parse().unwrap(), 2).is_some(), "others are not affected");
        drop(first);
        assert!(open.admit(client, 2).is_some(), "a closed connection frees its place");
    }
}
