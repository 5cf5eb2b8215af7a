//! The model hub over HTTP, as huggingface_hub users know it: `HF_ENDPOINT` (a mirror works),
//! `HF_TOKEN` as a bearer token, files at `<endpoint>/<repo>/resolve/<revision>/<file>`, the file
//! list at `<endpoint>/api/models/<repo>/revision/<revision>`, and the LFS sha256 in
//! `X-Linked-Etag`. Plain `https://` URLs are fetched the same way, without the hub's extras.

use std::time::Duration;

use rbee_bus::Code;
use rbee_bus::model_ref::ModelRef;

use super::Failure;

/// Where the hub is and who we are to it.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub endpoint: String,
    pub token: Option<String>,
}

/// A file to download: its URL and what the source says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    /// sha256 the hub publishes for the file (LFS), if any.
    pub sha256: Option<String>,
    /// Size the source announces, if it does.
    pub size: Option<u64>,
}

/// The HTTP clients a downloader needs, built once (rustls with the ring provider, the one
/// async-nats already brings): one that follows redirects, for files and file lists, and one that
/// does not, for the hub's answers to HEAD (its LFS headers come on the redirect itself).
#[derive(Clone)]
pub struct Clients {
    pub fetch: reqwest::Client,
    probe: reqwest::Client,
}

pub fn clients() -> Result<Clients, Failure> {
    let unusable =
        |e: reqwest::Error| Failure::fatal(Code::DownloadFailed, format!("cannot create an HTTP client: {e}"));
    Ok(Clients {
        fetch: client_builder().build().map_err(unusable)?,
        probe: client_builder().redirect(reqwest::redirect::Policy::none()).build().map_err(unusable)?,
    })
}

fn client_builder() -> reqwest::ClientBuilder {
    rbee_runtime::use_ring_for_tls();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("rbee-hive/", env!("CARGO_PKG_VERSION")))
}

impl HubSettings {
    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) if !token.is_empty() => req.bearer_auth(token),
            _ => req,
        }
    }

    pub fn get(&self, client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
        self.authorized(client.get(url))
    }

    /// The URL and published checksum of what `reference` names.
    pub async fn resolve(&self, clients: &Clients, reference: &ModelRef) -> Result<Remote, Failure> {
        match reference {
            ModelRef::Url(url) => {
                // Only the size is asked for; a server that refuses HEAD still serves the GET.
                let size = match self.authorized(clients.fetch.head(url)).send().await {
                    Ok(resp) if resp.status().is_success() => resp.content_length(),
                    _ => None,
                };
                Ok(Remote { url: url.clone(), sha256: None, size })
            }
            ModelRef::File(_) => {
                Err(Failure::fatal(Code::InvalidModelSource, "a file is copied, not downloaded".into()))
            }
            ModelRef::Hub { repo, file, revision } => {
                let file = match file {
                    Some(f) => f.clone(),
                    None => self.only_gguf_file(&clients.fetch, repo, revision).await?,
                };
                let url = format!("{}/{repo}/resolve/{revision}/{file}", self.endpoint.trim_end_matches('/'));
                let (sha256, size) = self.published(&clients.probe, &url).await?;
                Ok(Remote { url, sha256, size })
            }
        }
    }

    /// The one `.gguf` file of a repository; a repository with several needs the file named.
    async fn only_gguf_file(&self, client: &reqwest::Client, repo: &str, revision: &str) -> Result<String, Failure> {
        let url = format!("{}/api/models/{repo}/revision/{revision}", self.endpoint.trim_end_matches('/'));
        let resp = self
            .get(client, &url)
            .send()
            .await
            .map_err(|e| Failure::retry(Code::DownloadFailed, format!("{url}: {}", causes(&e))))?;
        check_status(&resp, &format!("hf:{repo}"))?;
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| Failure::retry(Code::DownloadFailed, format!("{url}: unreadable file list: {e}")))?;
        let ggufs: Vec<String> = body["siblings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["rfilename"].as_str())
            .filter(|f| f.ends_with(".gguf"))
            .map(str::to_string)
            .collect();
        match ggufs.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Failure::fatal(Code::ModelNotFound, format!("hf:{repo} has no .gguf file"))),
            many => Err(Failure::fatal(
                Code::AmbiguousModelFile,
                format!("hf:{repo} has {} .gguf files; name one: hf:{repo}:<file> ({})", many.len(), many.join(", ")),
            )),
        }
    }

    /// The sha256 and size the hub publishes for an LFS file (`X-Linked-Etag`, `X-Linked-Size` on a
    /// HEAD that is not followed: the hub answers LFS files with a redirect carrying them).
    async fn published(&self, client: &reqwest::Client, url: &str) -> Result<(Option<String>, Option<u64>), Failure> {
        let resp = self
            .authorized(client.head(url))
            .send()
            .await
            .map_err(|e| Failure::retry(Code::DownloadFailed, format!("{url}: {}", causes(&e))))?;
        if !resp.status().is_redirection() {
            check_status(&resp, url)?;
        }
        let etag = resp.headers().get("x-linked-etag").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let sha = etag.trim_start_matches("W/").trim_matches('"').to_ascii_lowercase();
        let size =
            resp.headers().get("x-linked-size").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
        Ok((
            (sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit())).then_some(sha),
            size.or(resp.content_length().filter(|n| *n > 0)),
        ))
    }
}

/// An error with the chain of its causes ("error sending request: connection refused"), so the
/// reason reaches the user.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Maps the hub's refusals to stable codes: what retrying cannot fix is fatal.
pub fn check_status(resp: &reqwest::Response, what: &str) -> Result<(), Failure> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    Err(match status.as_u16() {
        404 => Failure::fatal(Code::ModelNotFound, format!("{what} was not found on the model hub (404)")),
        401 | 403 => Failure::fatal(
            Code::AccessDenied,
            format!(
                "the model hub refused {what} ({status}); if the model is gated or private, set HF_TOKEN to a token that may read it"
            ),
        ),
        429 => {
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Failure {
                retry_after: after,
                ..Failure::retry(Code::RateLimited, format!("the model hub rate-limited {what} (429)"))
            }
        }
        416 => Failure::retry(
            Code::DownloadFailed,
            format!("{what}: the range asked for is not there (416); starting over"),
        ),
        _ => Failure::retry(Code::DownloadFailed, format!("{what}: the server answered {status}")),
    })
}
