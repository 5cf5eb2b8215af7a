//! Who may say what on the bus. Every process connects to nats-server as a user of the cluster's
//! account, with a credentials file (a JWT signed by the account or one of its scoped keys, and the
//! user's seed). The JWT carries the role's subject permissions ([`roles`]) and nats-server
//! enforces them; [`jwt`] writes the operator, account and user JWTs.

pub mod jwt;
pub mod roles;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a process finds nats-server and which identity it speaks as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsAccess {
    pub url: String,
    /// A `.creds` file; None connects anonymously, which an rbee cluster refuses.
    pub creds: Option<PathBuf>,
    /// The cluster's CA (PEM): when set, the connection must be TLS to a server it signed.
    pub ca: Option<PathBuf>,
    /// This machine's client certificate and its key, one PEM file signed by the cluster's CA: a
    /// server that verifies clients (mutual TLS) takes no connection without one.
    pub cert: Option<PathBuf>,
    /// How often the client pings a server it heard nothing from. Three silent periods in a row
    /// and it gives the server up for another: the only way to notice a server that vanished
    /// without closing the connection (its machine died or was cut off).
    pub ping: Duration,
}

/// The default [`NatsAccess::ping`]: a server silent for 30 s is given up; one frozen for less
/// (paused, a stall) keeps its clients.
pub const DEFAULT_PING: Duration = Duration::from_secs(10);

impl NatsAccess {
    pub fn new(url: impl Into<String>, creds: Option<PathBuf>) -> Self {
        NatsAccess { url: url.into(), creds, ca: None, cert: None, ping: DEFAULT_PING }
    }

    /// Pings a silent server every `ping`.
    pub fn with_ping(mut self, ping: Duration) -> Self {
        self.ping = ping;
        self
    }

    /// The servers `url` names: one URL, or several of one cluster separated by commas.
    pub fn servers(&self) -> Vec<String> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
    }

    /// Over TLS to a server `ca` signed, showing `cert` when given.
    pub fn with_tls(mut self, ca: Option<PathBuf>, cert: Option<PathBuf>) -> Self {
        self.ca = ca;
        self.cert = cert;
        self
    }
}

/// A user's identity read from its credentials file: the JWT and the key that proves it.
pub struct Credentials {
    pub text: String,
    pub public_key: String,
    /// The account the user belongs to (the public key that signed it, or the one it names).
    pub account: String,
}

impl Credentials {
    /// Reads a `.creds` file; the error names the file, never its content.
    pub fn read(path: &Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read NATS credentials {}: {e}", path.display()))?;
        let seed = seed_of(&text).ok_or_else(|| format!("{} is not a NATS credentials file", path.display()))?;
        let key =
            nkeys::KeyPair::from_seed(seed).map_err(|_| format!("{} holds no valid user seed", path.display()))?;
        let claims = jwt_of(&text).and_then(jwt::claims).unwrap_or_default();
        let account =
            claims["nats"]["issuer_account"].as_str().or(claims["iss"].as_str()).unwrap_or_default().to_string();
        Ok(Credentials { public_key: key.public_key(), account, text })
    }
}

/// Gives the workers of one node their identities: a user per worker, named after it and signed by
/// the node's scoped key, so the account's template for that node decides what it may do.
pub struct WorkerIssuer {
    signer: nkeys::KeyPair,
    account: String,
}

impl WorkerIssuer {
    /// The hive's own credentials name the account; `signing_key` holds the node's scoped seed.
    pub fn load(hive_creds: &Path, signing_key: &Path) -> Result<Self, String> {
        let account = Credentials::read(hive_creds)?.account;
        let seed = std::fs::read_to_string(signing_key)
            .map_err(|e| format!("cannot read the worker signing key {}: {e}", signing_key.display()))?;
        let signer = nkeys::KeyPair::from_seed(seed.trim())
            .map_err(|_| format!("{} holds no valid signing key", signing_key.display()))?;
        Ok(WorkerIssuer { signer, account })
    }

    /// The text of a credentials file for `worker` (a fresh key pair each time).
    pub fn issue(&self, worker: &str) -> String {
        let user = nkeys::KeyPair::new_user();
        let token = jwt::user(&self.signer, &self.account, &user.public_key(), worker, None);
        jwt::creds(&token, &user.seed().expect("a generated key pair holds its seed"))
    }
}

/// The JWT between the `NATS USER JWT` markers of a credentials file.
fn jwt_of(creds: &str) -> Option<&str> {
    let mut lines = creds.lines().map(str::trim);
    lines.find(|l| l.starts_with("-----BEGIN NATS USER JWT"))?;
    lines.next()
}

/// The seed between the `USER NKEY SEED` markers of a credentials file.
fn seed_of(creds: &str) -> Option<&str> {
    let mut lines = creds.lines().map(str::trim);
    lines.find(|l| l.starts_with("-----BEGIN USER NKEY SEED"))?;
    lines.next().filter(|l| l.starts_with('S'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credentials_file_gives_back_its_user() {
        let user = nkeys::KeyPair::new_user();
        let account = nkeys::KeyPair::new_account();
        let token = jwt::user(&account, &account.public_key(), &user.public_key(), "u", None);
        let dir = std::env::temp_dir().join(format!("rbee-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.creds");
        std::fs::write(&path, jwt::creds(&token, &user.seed().unwrap())).unwrap();
        let creds = Credentials::read(&path).unwrap();
        assert_eq!(creds.public_key, user.public_key());
        assert_eq!(creds.account, account.public_key());
        std::fs::write(&path, "nothing here").unwrap();
        let err = Credentials::read(&path).err().unwrap();
        assert!(err.contains("not a NATS credentials file") && !err.contains("nothing here"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
