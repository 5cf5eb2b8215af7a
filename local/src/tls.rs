//! TLS for nats-server: a certificate authority made by rbee for the cluster, the server's
//! certificate signed by it for the names clients dial, and a client certificate the server
//! verifies (mutual TLS). Clients trust only that CA, so a client that reaches another server (or a
//! man in the middle) refuses to talk; the server takes no connection from a machine without a
//! certificate of the cluster, before any credentials are looked at. Kept beside the NATS
//! credentials, every file 0600.

use std::path::{Path, PathBuf};

use rbee_bus::Code;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::trust::write_secret;
use crate::{LocalError, LocalResult};

/// The files a TLS nats-server and its clients need.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// What clients trust.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The client certificate and its key in one file, for the cluster's machines.
    pub client: PathBuf,
}

fn failed(e: impl std::fmt::Display) -> LocalError {
    LocalError::new(Code::InvalidConfig, format!("cannot make the cluster's TLS certificates: {e}"))
}

/// The CA and a server certificate valid for `names` (host names or IP addresses) in `dir`,
/// made the first time; later calls keep them.
pub fn ensure(dir: &Path, names: &[String]) -> LocalResult<TlsFiles> {
    let files = TlsFiles {
        ca: dir.join("nats-ca.pem"),
        server_cert: dir.join("nats-server.pem"),
        server_key: dir.join("nats-server-key.pem"),
        client: dir.join("nats-client.pem"),
    };
    if [&files.ca, &files.server_cert, &files.server_key, &files.client].iter().all(|f| f.exists()) {
        return Ok(files);
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params.distinguished_name.push(DnType::CommonName, "rbee cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(failed)?).map_err(failed)?;

    let mut server_params = CertificateParams::new(names.to_vec()).map_err(failed)?;
    server_params.distinguished_name.push(DnType::CommonName, "rbee nats-server");
    let server_key = KeyPair::generate().map_err(failed)?;
    let server = server_params.signed_by(&server_key, &ca).map_err(failed)?;

    let mut client_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    client_params.distinguished_name.push(DnType::CommonName, "rbee cluster machine");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().map_err(failed)?;
    let client = client_params.signed_by(&client_key, &ca).map_err(failed)?;

    write_secret(&files.ca, &ca.pem())?;
    write_secret(&files.server_cert, &server.pem())?;
    write_secret(&files.server_key, &server_key.serialize_pem())?;
    write_secret(&files.client, &format!("{}{}", client.pem(), client_key.serialize_pem()))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_server_certificate_is_made_once() {
        let dir = std::env::temp_dir().join(format!("rbee-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let first = super::ensure(&dir, &names).unwrap();
        let pem = std::fs::read_to_string(&first.server_cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let again = super::ensure(&dir, &names).unwrap();
        assert_eq!(std::fs::read_to_string(&again.server_cert).unwrap(), pem);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
