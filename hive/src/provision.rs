//! Puts a model file into this node's model store, verified: copied from its source through a
//! `.partial` file, hashed on the way, checked against the expected sha256 and the GGUF magic,
//! then renamed into place. A model already in the store is used as it is (after verification).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("model source {0} does not exist")]
    SourceNotFound(String),
    #[error("model source {0} is not supported here (use file:///path or a local path)")]
    UnsupportedSource(String),
    #[error("checksum mismatch for {path}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch { path: String, expected: String, actual: String },
    #[error("{0} is not a GGUF file (bad magic)")]
    NotGguf(String),
    #[error("cannot provision model: {0}")]
    Io(#[from] std::io::Error),
}

impl ProvisionError {
    pub fn code(&self) -> &'static str {
        match self {
            ProvisionError::SourceNotFound(_) => "MODEL_NOT_FOUND",
            ProvisionError::UnsupportedSource(_) => "INVALID_MODEL_SOURCE",
            ProvisionError::ChecksumMismatch { .. } => "CHECKSUM_MISMATCH",
            ProvisionError::NotGguf(_) => "MODEL_INVALID",
            ProvisionError::Io(_) => "PROVISION_FAILED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub sha256: String,
    /// False when the store already held the model (nothing was copied).
    pub copied: bool,
}

/// The local path a source names: `file:///p`, `file:/p` or a plain path.
pub fn source_path(source: &str) -> Result<PathBuf, ProvisionError> {
    let path = source.strip_prefix("file://").or_else(|| source.strip_prefix("file:")).unwrap_or(source);
    if path.contains("://") || path.is_empty() {
        return Err(ProvisionError::UnsupportedSource(source.chars().take(200).collect()));
    }
    Ok(PathBuf::from(path))
}

/// Ensures `<models_dir>/<model>.gguf` exists and is verified. Blocking: call off the runtime.
pub fn provision(models_dir: &Path, model: &str, source: &str, expected_sha256: Option<&str>) -> Result<Provisioned, ProvisionError> {
    let target = models_dir.join(format!("{model}.gguf"));
    if target.exists() {
        let (size_bytes, sha256) = hash_file(&target)?;
        if expected_sha256.is_none_or(|e| e.eq_ignore_ascii_case(&sha256)) {
            check_magic(&target)?;
            return Ok(Provisioned { path: target, size_bytes, sha256, copied: false });
        }
        tracing::warn!(path = %target.display(), "stored model does not match its checksum; provisioning again");
        std::fs::remove_file(&target)?;
    }
    let from = source_path(source)?;
    if !from.is_file() {
        return Err(ProvisionError::SourceNotFound(from.display().to_string()));
    }
    std::fs::create_dir_all(models_dir)?;
    remove_abandoned_partials(models_dir, model);
    // A partial file of our own: several hives (or starts) may provision the same model at once;
    // each copies and verifies its own, and the renames into place are atomic and identical.
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let partial = models_dir.join(format!("{model}.gguf.partial.{}.{nonce}", std::process::id()));
    let result = copy_hashing(&from, &partial).and_then(|(size_bytes, sha256)| {
        if let Some(expected) = expected_sha256.filter(|e| !e.eq_ignore_ascii_case(&sha256)) {
            return Err(ProvisionError::ChecksumMismatch { path: from.display().to_string(), expected: expected.into(), actual: sha256 });
        }
        check_magic(&partial)?;
        Ok((size_bytes, sha256))
    });
    match result {
        Ok((size_bytes, sha256)) => {
            std::fs::rename(&partial, &target)?;
            Ok(Provisioned { path: target, size_bytes, sha256, copied: true })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Removes partial files of this model left by processes that are gone (a hive killed mid-copy).
fn remove_abandoned_partials(models_dir: &Path, model: &str) {
    let prefix = format!("{model}.gguf.partial.");
    let Ok(entries) = std::fs::read_dir(models_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name.strip_prefix(&prefix).and_then(|rest| rest.split('.').next()).and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()) {
            tracing::info!(file = %name, "removing a partial file its dead writer left");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn copy_hashing(from: &Path, to: &Path) -> Result<(u64, String), ProvisionError> {
    let mut input = File::open(from)?;
    let mut output = File::create(to)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
        size += n as u64;
    }
    output.sync_all()?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Size and sha256 of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String), ProvisionError> {
    let mut input = File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut input, &mut hasher)?;
    Ok((size, hex::encode(hasher.finalize())))
}

fn check_magic(path: &Path) -> Result<(), ProvisionError> {
    let mut magic = [0u8; 4];
    let ok = File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF";
    if ok { Ok(()) } else { Err(ProvisionError::NotGguf(path.display().to_string())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rbee-provision-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fake_gguf(dir: &Path) -> (PathBuf, String) {
        let path = dir.join("source.gguf");
        std::fs::write(&path, b"GGUF rest of a model").unwrap();
        let sha = hash_file(&path).unwrap().1;
        (path, sha)
    }

    #[test]
    fn a_missing_model_is_copied_verified_and_then_reused() {
        let dir = scratch("copy");
        let (src, sha) = fake_gguf(&dir);
        let store = dir.join("models");
        let first = provision(&store, "m", &format!("file://{}", src.display()), Some(&sha)).unwrap();
        assert!(first.copied);
        assert_eq!(first.sha256, sha);
        let second = provision(&store, "m", "file:///nonexistent", Some(&sha)).unwrap();
        assert!(!second.copied, "a stored, verified model is not copied again");
        assert_eq!(second.path, first.path);
    }

    #[test]
    fn a_checksum_mismatch_leaves_nothing_behind() {
        let dir = scratch("mismatch");
        let (src, _) = fake_gguf(&dir);
        let store = dir.join("models");
        let err = provision(&store, "m", src.to_str().unwrap(), Some(&"0".repeat(64))).unwrap_err();
        assert_eq!(err.code(), "CHECKSUM_MISMATCH");
        assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0, "partial file removed");
    }

    #[test]
    fn a_file_without_gguf_magic_is_refused() {
        let dir = scratch("magic");
        let src = dir.join("x.gguf");
        std::fs::write(&src, b"not a model").unwrap();
        let err = provision(&dir.join("models"), "m", src.to_str().unwrap(), None).unwrap_err();
        assert_eq!(err.code(), "MODEL_INVALID");
    }

    #[test]
    fn missing_and_remote_sources_have_clear_codes() {
        let dir = scratch("sources");
        assert_eq!(provision(&dir, "m", "/no/such/file.gguf", None).unwrap_err().code(), "MODEL_NOT_FOUND");
        assert_eq!(provision(&dir, "m", "https://example.invalid/x.gguf", None).unwrap_err().code(), "INVALID_MODEL_SOURCE");
    }
}
