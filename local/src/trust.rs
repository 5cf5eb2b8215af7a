//! The cluster's NATS identities, made by rbee on first start and kept in one directory (0700, every
//! file 0600): the operator, the system account and the rbee account as seeds; a credentials file
//! for each role; a signing key per node with which that node's hive gives each of its workers an
//! identity of its own. nats-server trusts the operator and enforces the permissions the JWTs carry.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nkeys::KeyPair;
use rbee_bus::Code;
use rbee_bus::auth::jwt::{self, ScopedKey};
use rbee_bus::auth::roles::{self, inbox_prefix};

use crate::{LocalError, LocalResult, process};

/// Who a credentials file speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity<'a> {
    /// Everything, the JetStream API's delete and purge included: backup, restore, commands.
    Admin,
    /// Reads the log; writes nothing.
    Operator,
    Queen,
    Hive(&'a str),
}

impl Identity<'_> {
    fn file_name(&self) -> String {
        match self {
            Identity::Admin => "admin.creds".into(),
            Identity::Operator => "operator.creds".into(),
            Identity::Queen => "queen.creds".into(),
            Identity::Hive(node) => format!("hive-{node}.creds"),
        }
    }
}

/// Where a local cluster keeps its trust: `<data-dir>/trust`.
pub fn dir_in(data_dir: &Path) -> PathBuf {
    data_dir.join("trust")
}

/// Where `identity`'s credentials file is in the trust directory `dir`.
pub fn creds_path(dir: &Path, identity: Identity) -> PathBuf {
    dir.join(identity.file_name())
}

/// Where the seed a node's hive signs its workers' identities with is in the trust directory `dir`.
pub fn worker_signer_path(dir: &Path, node: &str) -> PathBuf {
    dir.join("nodes").join(format!("{node}.nk"))
}

pub struct Trust {
    dir: PathBuf,
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
}

impl Trust {
    /// The trust kept in `dir`, made there (with the admin, operator and queen credentials) when
    /// the directory holds none yet.
    pub fn open(dir: &Path) -> LocalResult<Trust> {
        std::fs::create_dir_all(dir.join("nodes")).map_err(|e| process::io_error("create", dir, e))?;
        for d in [dir, &dir.join("nodes")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| process::io_error("chmod", d, e))?;
        }
        let trust = Trust {
            operator: key(&dir.join("operator.nk"), KeyPair::new_operator)?,
            system: key(&dir.join("system.nk"), KeyPair::new_account)?,
            account: key(&dir.join("account.nk"), KeyPair::new_account)?,
            dir: dir.to_path_buf(),
        };
        for identity in [Identity::Admin, Identity::Operator, Identity::Queen] {
            if !trust.creds(identity).exists() {
                trust.issue(identity)?;
            }
        }
        Ok(trust)
    }

    /// Where `identity`'s credentials file is.
    pub fn creds(&self, identity: Identity) -> PathBuf {
        creds_path(&self.dir, identity)
    }

    /// The seed a node's hive signs its workers' identities with.
    pub fn worker_signer(&self, node: &str) -> PathBuf {
        worker_signer_path(&self.dir, node)
    }

    /// Makes `node` a member: its hive's credentials and its workers' signing key. The server
    /// learns the key from [`Trust::server_config`] (reload it after adding a node to a running one).
    pub fn add_node(&self, node: &str) -> LocalResult<()> {
        rbee_bus::subjects::validate_name("node", node)
            .map_err(|e| LocalError::new(Code::InvalidName, e.to_string()))?;
        key(&self.worker_signer(node), KeyPair::new_account)?;
        self.issue(Identity::Hive(node))
    }

    /// The nodes that are members, in name order.
    pub fn nodes(&self) -> LocalResult<Vec<String>> {
        let dir = self.dir.join("nodes");
        let entries = std::fs::read_dir(&dir).map_err(|e| process::io_error("read", &dir, e))?;
        let mut nodes: Vec<String> =
            entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".nk").map(String::from)).collect();
        nodes.sort();
        Ok(nodes)
    }

    /// nats-server's authorization: trust the operator, and know both accounts with every node's
    /// scoped signing key. Holds public JWTs only, no seed.
    pub fn server_config(&self) -> LocalResult<String> {
        let mut scoped = Vec::new();
        for node in self.nodes()? {
            let signer = key(&self.worker_signer(&node), KeyPair::new_account)?;
            scoped.push(ScopedKey {
                key: signer.public_key(),
                role: format!("workers-{node}"),
                template: roles::worker_template(&node),
            });
        }
        let (system, account) = (self.system.public_key(), self.account.public_key());
        // The operator's JWT never changes once made: nats-server refuses a reload that changes it.
        let operator_path = self.dir.join("operator.jwt");
        let operator_jwt = match std::fs::read_to_string(&operator_path) {
            Ok(text) => text.trim().to_string(),
            Err(_) => {
                let token = jwt::operator(&self.operator, "rbee", &system);
                write_secret(&operator_path, &token)?;
                token
            }
        };
        let system_jwt = jwt::account(&self.operator, &system, "SYS", false, &[]);
        let account_jwt = jwt::account(&self.operator, &account, "RBEE", true, &scoped);
        Ok(format!(
            "operator: {operator_jwt:?}\nsystem_account: {system:?}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {system}: {system_jwt:?}\n  {account}: {account_jwt:?}\n}}\n"
        ))
    }

    fn issue(&self, identity: Identity) -> LocalResult<()> {
        let user = KeyPair::new_user();
        let inbox = inbox_prefix(&user.public_key());
        let permissions = match identity {
            Identity::Admin => None,
            Identity::Operator => Some(roles::operator(&inbox)),
            Identity::Queen => Some(roles::queen(&inbox)),
            Identity::Hive(node) => Some(roles::hive(node, &inbox)),
        };
        let name = identity.file_name().trim_end_matches(".creds").to_string();
        let token =
            jwt::user(&self.account, &self.account.public_key(), &user.public_key(), &name, permissions.as_ref());
        write_secret(&self.creds(identity), &jwt::creds(&token, &seed(&user)))
    }
}

fn seed(key: &KeyPair) -> String {
    key.seed().expect("generated and loaded key pairs hold their seed")
}

/// The key pair whose seed is in `path`, made and written there first when the file is missing.
fn key(path: &Path, new: fn() -> KeyPair) -> LocalResult<KeyPair> {
    match std::fs::read_to_string(path) {
        Ok(text) => KeyPair::from_seed(text.trim())
            .map_err(|_| LocalError::new(Code::InvalidConfig, format!("{} holds no valid seed", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pair = new();
            write_secret(path, &seed(&pair))?;
            Ok(pair)
        }
        Err(e) => Err(process::io_error("read", path, e)),
    }
}

/// Writes a file only its owner can read (see `rbee_runtime::write_secret`).
pub fn write_secret(path: &Path, text: &str) -> LocalResult<()> {
    rbee_runtime::write_secret(path, text).map_err(|e| process::io_error("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_is_made_once_kept_private_and_names_every_node() {
        let dir = std::env::temp_dir().join(format!("rbee-trust-{}", std::process::id()));
        let trust = Trust::open(&dir).unwrap();
        trust.add_node("n1").unwrap();
        let again = Trust::open(&dir).unwrap();
        assert_eq!(again.account.public_key(), trust.account.public_key(), "opening twice keeps the keys");
        for file in ["account.nk", "admin.creds", "queen.creds", "hive-n1.creds", "nodes/n1.nk"] {
            let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        let config = again.server_config().unwrap();
        assert!(config.contains(&again.account.public_key()));
        assert!(!config.contains(&seed(&again.account)), "the server config holds no seed");
        assert!(again.add_node("../x").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
