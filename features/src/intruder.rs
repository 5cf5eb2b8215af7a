//! A client of a cluster's NATS that tries what its role should not be able to do, and keeps what
//! nats-server answered: a refused connection, or the permission violations it reported.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rbee_bus::{Envelope, Event, Meta, subjects};

pub struct Intruder {
    /// None when nats-server refused the connection; `connect_error` says how.
    client: Option<async_nats::Client>,
    pub connect_error: Option<String>,
    violations: Arc<Mutex<Vec<String>>>,
    received: Arc<AtomicUsize>,
}

impl Intruder {
    /// Connects to `url` with `creds` (None: no credentials at all), over TLS trusting `ca` when given.
    pub async fn connect(url: &str, creds: Option<&Path>, ca: Option<&Path>, cert: Option<&Path>) -> Intruder {
        let violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = violations.clone();
        let options = match creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path).await.expect("credentials file"),
            None => async_nats::ConnectOptions::new(),
        };
        let options = match ca {
            Some(ca) => options.add_root_certificates(ca.to_path_buf()).require_tls(true),
            None => options,
        };
        let options = match cert {
            Some(cert) => options.add_client_certificate(cert.to_path_buf(), cert.to_path_buf()),
            None => options,
        };
        let options = options.event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().unwrap().push(e.to_string());
                }
            }
        });
        let (client, connect_error) = match tokio::time::timeout(Duration::from_secs(10), options.connect(url)).await {
            Ok(Ok(client)) => (Some(client), None),
            Ok(Err(e)) => (None, Some(e.to_string())),
            Err(_) => (None, Some("no answer".into())),
        };
        Intruder { client, connect_error, violations, received: Arc::default() }
    }

    pub fn connected(&self) -> bool {
        self.client.is_some()
    }

    /// Subscribes and counts whatever arrives.
    pub async fn subscribe(&self, subject: &str) {
        let Some(client) = &self.client else { return };
        let mut sub = client.subscribe(subject.to_string()).await.expect("the client takes the subscription");
        let received = self.received.clone();
        tokio::spawn(async move {
            while sub.next().await.is_some() {
                received.fetch_add(1, Ordering::SeqCst);
            }
        });
        let _ = client.flush().await;
    }

    /// Publishes raw bytes.
    pub async fn publish(&self, subject: &str, payload: Vec<u8>) {
        let Some(client) = &self.client else { return };
        client.publish(subject.to_string(), payload.into()).await.expect("the client takes the message");
        let _ = client.flush().await;
    }

    /// Publishes `event` on its own subject, encoded as rbee writes events.
    pub async fn append(&self, event: Event) {
        self.append_on(&subjects::for_event(&event), event).await;
    }

    /// Publishes `event`, encoded as rbee writes events, on `subject`.
    pub async fn append_on(&self, subject: &str, event: Event) {
        let Some(client) = &self.client else { return };
        let (headers, body) = Envelope::new(event, 0, &Meta::default()).encode();
        client.publish_with_headers(subject.to_string(), headers, body.into()).await.expect("the client takes it");
        let _ = client.flush().await;
    }

    /// Sends a JetStream API request; whether any answer came (a refused request gets none).
    pub async fn jetstream_api(&self, subject: &str) -> bool {
        let Some(client) = &self.client else { return false };
        let request = client.request(subject.to_string(), "".into());
        matches!(tokio::time::timeout(Duration::from_secs(3), request).await, Ok(Ok(_)))
    }

    /// The permission violations nats-server reported to this client, waiting up to `within` for
    /// one naming `subject`.
    pub async fn violations_naming(&self, subject: &str, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let all = self.violations.lock().unwrap().clone();
            let naming: Vec<String> = all
                .into_iter()
                .filter(|v| v.to_lowercase().contains("permissions violation") && v.contains(subject))
                .collect();
            if !naming.is_empty() || tokio::time::Instant::now() >= deadline {
                return naming;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages received on every subscription so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}
