//! NATS JWTs, written by rbee itself: an operator signs the cluster's accounts, an account (or one of
//! its scoped signing keys) signs users. nats-server checks the chain and enforces each user's
//! subject permissions; nothing here is trusted by the server without the signatures.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The subjects a user may publish to and subscribe to (allow lists: everything else is refused).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer a request it received (once, on the request's reply subject).
    pub respond: bool,
}

impl Permissions {
    fn to_json(&self) -> Value {
        let mut claims = json!({
            "pub": { "allow": self.publish },
            "sub": { "allow": self.subscribe },
            "subs": -1, "data": -1, "payload": -1,
        });
        if self.respond {
            claims["resp"] = json!({ "max": 1, "ttl": 0 });
        }
        claims
    }
}

/// A signing key of the account whose users get `template`'s permissions whatever they claim;
/// `{{name()}}` in a subject is the user's name and `{{subject()}}` its public key.
pub struct ScopedKey {
    pub key: String,
    pub role: String,
    pub template: Permissions,
}

fn encode(mut claims: Value, signer: &KeyPair) -> String {
    claims["iss"] = json!(signer.public_key());
    claims["iat"] =
        json!(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    claims["jti"] = json!("");
    let jti = hex::encode_upper(Sha256::digest(claims.to_string().as_bytes()));
    claims["jti"] = json!(jti);
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = signer.sign(signed.as_bytes()).expect("a seed-holding key pair signs");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The self-signed operator JWT that the server trusts.
pub fn operator(operator: &KeyPair, name: &str, system_account: &str) -> String {
    let claims = json!({
        "name": name,
        "sub": operator.public_key(),
        "nats": { "system_account": system_account, "type": "operator", "version": 2 },
    });
    encode(claims, operator)
}

/// An account signed by the operator. `jetstream` turns on unlimited JetStream storage for it.
pub fn account(operator: &KeyPair, account: &str, name: &str, jetstream: bool, scoped: &[ScopedKey]) -> String {
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for field in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[field] = json!(-1);
        }
    }
    let signing_keys: Vec<Value> = scoped
        .iter()
        .map(|k| json!({ "kind": "user_scope", "key": k.key, "role": k.role, "template": k.template.to_json() }))
        .collect();
    let claims = json!({
        "name": name,
        "sub": account,
        "nats": {
            "limits": limits,
            "signing_keys": signing_keys,
            "default_permissions": { "pub": {}, "sub": {} },
            "type": "account",
            "version": 2,
        },
    });
    encode(claims, operator)
}

/// A user of `account`. Signed by the account's own key, the user has `permissions` (None: may use
/// every subject); signed by a scoped key, the key's template decides and `permissions` must be None.
pub fn user(signer: &KeyPair, account: &str, user: &str, name: &str, permissions: Option<&Permissions>) -> String {
    let mut nats = match permissions {
        Some(p) => p.to_json(),
        None if signer.public_key() == account => json!({ "subs": -1, "data": -1, "payload": -1 }),
        None => json!({}),
    };
    if signer.public_key() != account {
        nats["issuer_account"] = json!(account);
    }
    nats["type"] = json!("user");
    nats["version"] = json!(2);
    encode(json!({ "name": name, "sub": user, "nats": nats }), signer)
}

/// A credentials file (user JWT + the user's seed) in the format every NATS client reads.
pub fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// The claims of a JWT, without checking its signature (for tests and for reading a name back).
pub fn claims(jwt: &str) -> Option<Value> {
    let body = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_jwt_is_signed_by_its_issuer_and_names_its_account() {
        let account = KeyPair::new_account();
        let scoped = KeyPair::new_account();
        let user = KeyPair::new_user();
        let jwt = super::user(&scoped, &account.public_key(), &user.public_key(), "w1", None);
        let (signed, signature) = jwt.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        assert!(KeyPair::from_public_key(&scoped.public_key()).unwrap().verify(signed.as_bytes(), &signature).is_ok());
        let claims = claims(&jwt).unwrap();
        assert_eq!(claims["iss"], json!(scoped.public_key()));
        assert_eq!(claims["sub"], json!(user.public_key()));
        assert_eq!(claims["nats"]["issuer_account"], json!(account.public_key()));
        assert!(claims["nats"].get("pub").is_none(), "a scoped user carries no permissions of its own");
    }

    #[test]
    fn permissions_are_allow_lists() {
        let account = KeyPair::new_account();
        let p = Permissions { publish: vec!["a.b".into()], subscribe: vec!["c.>".into()], respond: true };
        let jwt = user(&account, &account.public_key(), &KeyPair::new_user().public_key(), "q", Some(&p));
        let nats = &claims(&jwt).unwrap()["nats"];
        assert_eq!(nats["pub"]["allow"], json!(["a.b"]));
        assert_eq!(nats["sub"]["allow"], json!(["c.>"]));
        assert_eq!(nats["resp"]["max"], json!(1));
        assert!(nats.get("issuer_account").is_none());
    }
}
