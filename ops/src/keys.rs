//! `rbee keys`: the queens' API keys, as events. A key is shown once when made; the log keeps only
//! its SHA-256, a name and its limits, so keys survive restarts, backups and replays, and every
//! queen learns of a revocation as soon as it reads the log.

use std::path::{Path, PathBuf};

use rbee_bus::{Code, Event, Expected, KeyCreated, KeyLimits, KeyRevoked, Meta, NatsAccess};
use rbee_projections::keys::secret_sha256;

use crate::error::{CliError, CliResult};

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// What the key is for (shown by `rbee keys list`).
    #[arg(long)]
    pub name: String,
    /// Most requests the key may start per minute.
    #[arg(long)]
    pub requests_per_minute: Option<u32>,
    /// Most tokens (prompt + completion) the key may use per minute.
    #[arg(long)]
    pub tokens_per_minute: Option<u32>,
    /// Most requests the key may have running at once.
    #[arg(long)]
    pub concurrent_requests: Option<u32>,
}

/// Where a local cluster keeps the key `rbee up` made (0600), which `rbee infer` uses.
pub fn local_key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("api-key")
}

/// Appends a new key; returns its id and its secret (shown once, never stored by rbee).
pub async fn create_key(nats: &NatsAccess, name: &str, limits: KeyLimits) -> CliResult<(String, String)> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(CliError::new(Code::InvalidName, "a key's name is 1 to 64 printable characters"));
    }
    let random = || uuid::Uuid::new_v4().simple().to_string();
    let id = format!("k-{}", &random()[..12]);
    let secret = format!("rbee-{}{}", random(), random());
    let event = Event::KeyCreated(KeyCreated {
        key: id.clone(),
        name: name.into(),
        secret_sha256: secret_sha256(&secret),
        limits,
    });
    let log = crate::live::connect_log(nats).await?;
    log.append(event, Expected::NoStream, &Meta::default()).await.map_err(crate::live::unavailable)?;
    Ok((id, secret))
}

pub async fn create(nats: &NatsAccess, args: &CreateArgs) -> CliResult<()> {
    let limits = KeyLimits {
        requests_per_minute: args.requests_per_minute,
        tokens_per_minute: args.tokens_per_minute,
        concurrent_requests: args.concurrent_requests,
    };
    let (id, secret) = create_key(nats, &args.name, limits).await?;
    eprintln!("created key {id} ({}); it is shown once, keep it now:", args.name);
    println!("{secret}");
    Ok(())
}

pub async fn list(nats: &NatsAccess, json: bool) -> CliResult<()> {
    let cluster = crate::live::connect(nats).await?;
    let keys: Vec<_> = cluster.view.read(|v| v.keys.keys.values().cloned().collect());
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id, "name": k.name, "fingerprint": &k.secret_sha256[..12], "revoked": k.revoked,
                    "requests_per_minute": k.limits.requests_per_minute,
                    "tokens_per_minute": k.limits.tokens_per_minute,
                    "concurrent_requests": k.limits.concurrent_requests,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!("{:<16} {:<20} {:<14} {:<8} limits (req/min, tok/min, concurrent)", "ID", "NAME", "FINGERPRINT", "STATE");
    let show = |n: Option<u32>| n.map_or("-".to_string(), |n| n.to_string());
    for k in keys {
        let state = if k.revoked { "revoked" } else { "active" };
        let limits = format!(
            "{}, {}, {}",
            show(k.limits.requests_per_minute),
            show(k.limits.tokens_per_minute),
            show(k.limits.concurrent_requests)
        );
        println!("{:<16} {:<20} {:<14} {:<8} {limits}", k.id, k.name, &k.secret_sha256[..12], state);
    }
    Ok(())
}

pub async fn revoke(nats: &NatsAccess, id: &str, reason: &str) -> CliResult<()> {
    let cluster = crate::live::connect(nats).await?;
    let revoked = cluster.view.read(|v| v.keys.keys.get(id).map(|k| k.revoked));
    match revoked {
        None => Err(CliError::new(Code::KeyNotFound, format!("no key {id}; rbee keys list shows them"))),
        Some(true) => {
            println!("key {id} was already revoked");
            Ok(())
        }
        Some(false) => {
            let event = Event::KeyRevoked(KeyRevoked { key: id.into(), reason: reason.into() });
            cluster.log.append(event, Expected::Any, &Meta::default()).await.map_err(crate::live::unavailable)?;
            println!("revoked key {id}");
            Ok(())
        }
    }
}
