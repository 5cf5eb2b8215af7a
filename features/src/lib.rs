//! The test harness: real nats-server, Postgres and rbee processes, started on free ports in
//! private directories and stopped by the PIDs it started. Used by the cucumber features and the
//! integration tests.

pub mod bench;
pub mod cluster;
pub mod compose;
pub mod hub;
pub mod infra;
pub mod intruder;
pub mod load;
pub mod poll;
pub mod signal;

use std::path::PathBuf;

/// Where the built binaries are: beside the test executable's `deps/` directory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    let dir = if deps.ends_with("deps") { deps.parent().expect("profile dir") } else { deps };
    dir.to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --workspace` before the tests", path.display());
    path
}

/// Shared download caches, so tests do not fetch nats-server or the model per run.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("RBEE_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| home_cache().join("tools"))
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("RBEE_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| home_cache().join("models"))
}

fn home_cache() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache").join("rbee")
}

/// The default model's GGUF file in the shared cache (`rbee setup` puts it there).
pub fn default_model_file() -> PathBuf {
    cache_dir().join(rbee_local::model::FILE_NAME)
}

/// The default model's size in bytes.
pub fn default_model_size() -> u64 {
    std::fs::metadata(default_model_file()).expect("the default model is in the cache").len()
}

/// A fresh private directory under the system temp dir.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rbee-{prefix}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves nothing behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// An HTTP client for tests (TLS through ring, the one crypto provider the workspace builds).
pub fn http() -> reqwest::Client {
    rbee_runtime::use_ring_for_tls();
    reqwest::Client::new()
}
