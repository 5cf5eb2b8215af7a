//! Makes a model present on this node, verified and catalogued: used as it is when the catalog
//! already holds it here (no download), copied from a local file, or downloaded from the model hub or a
//! URL ([`crate::fetch`]). Then recorded with `model.registered`. Also removes models on request.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rbee_bus::Code;
use rbee_bus::model_ref::ModelRef;

use crate::sources::SourcePolicy;
use rbee_bus::{EventLog, Meta, ModelRegistered, subjects};
use rbee_projections::LiveView;
use rbee_projections::aggregate::model::ModelCommand;
use rbee_projections::aggregate::on_model;
use rbee_runtime::config_file::Live;
use sha2::{Digest, Sha256};

use crate::fetch::{Downloader, Failure, Fetched, gguf_check};

#[derive(Clone)]
pub struct Provisioner {
    log: EventLog,
    view: LiveView,
    node: String,
    models_dir: PathBuf,
    downloader: Downloader,
    /// The hive's configuration now: where models may come from can change on SIGHUP.
    config: Live<crate::Config>,
}

/// A model ready to serve, and how it got here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub file: Fetched,
    /// `catalog` (already here), `copied` or `downloaded`.
    pub how: &'static str,
}

impl Provisioner {
    pub fn new(
        log: EventLog,
        view: LiveView,
        node: String,
        models_dir: PathBuf,
        downloader: Downloader,
        config: Live<crate::Config>,
    ) -> Self {
        Provisioner { log, view, node, models_dir, downloader, config }
    }

    /// Where models may come from, as configured now.
    fn sources(&self) -> Result<SourcePolicy, Failure> {
        self.config.get().source_policy().map_err(|e| Failure::fatal(Code::InvalidConfig, e))
    }

    /// Ensures `model` is on this node and in the catalog.
    pub async fn ensure(
        &self,
        model: &str,
        source: &str,
        expected_sha256: Option<&str>,
        meta: &Meta,
    ) -> Result<Provisioned, Failure> {
        subjects::validate_name("model", model).map_err(|e| Failure::fatal(Code::InvalidName, e.to_string()))?;
        if let Some(file) = self.catalogued(model, expected_sha256) {
            tracing::info!(path = %file.path.display(), "model already on this node; no download");
            return Ok(Provisioned { file, how: "catalog" });
        }
        let reference = ModelRef::parse(source).map_err(|e| Failure::fatal(Code::InvalidModelSource, e.to_string()))?;
        self.sources()?.check(&reference)?;
        let provisioned = match &reference {
            ModelRef::File(path) => {
                let (dir, model, path, sha) =
                    (self.models_dir.clone(), model.to_string(), path.clone(), expected_sha256.map(str::to_string));
                let file = tokio::task::spawn_blocking(move || copy_into_store(&dir, &model, &path, sha.as_deref()))
                    .await
                    .map_err(|e| Failure::fatal(Code::ProvisionFailed, e.to_string()))??;
                Provisioned { file, how: "copied" }
            }
            _ => Provisioned {
                file: self.downloader.fetch(model, source, &reference, expected_sha256, meta).await?,
                how: "downloaded",
            },
        };
        self.register(model, &provisioned.file, meta)
            .await
            .map_err(|e| Failure::fatal(Code::EventLogUnavailable, e))?;
        Ok(provisioned)
    }

    /// The model's size before it is fetched, when it can be known: from the catalog, the local
    /// file, or what the hub announces. Lets preflight refuse a model that cannot fit before
    /// downloading it.
    pub async fn expected_size(&self, model: &str, source: &str) -> Option<u64> {
        if let Some(e) = self.view.read(|v| v.catalog.get(model, &self.node).cloned()) {
            return Some(e.size_bytes);
        }
        let reference = ModelRef::parse(source).ok()?;
        // Not even asked about before it is known to be allowed.
        self.sources().ok()?.check(&reference).ok()?;
        match reference {
            ModelRef::File(path) => std::fs::metadata(path).ok().map(|m| m.len()),
            remote => self.downloader.announced_size(&remote).await,
        }
    }

    /// The catalog's entry for the model on this node, if its file is there (and matches).
    fn catalogued(&self, model: &str, expected_sha256: Option<&str>) -> Option<Fetched> {
        let entry = self.view.read(|v| v.catalog.get(model, &self.node).cloned())?;
        let on_disk = std::fs::metadata(&entry.path).map(|m| m.len()).ok();
        let matches =
            on_disk == Some(entry.size_bytes) && expected_sha256.is_none_or(|s| s.eq_ignore_ascii_case(&entry.sha256));
        matches.then(|| Fetched { path: entry.path.into(), size_bytes: entry.size_bytes, sha256: entry.sha256 })
    }

    /// Records the model in the catalog unless this node already registered this exact file.
    /// Several hives may race here: each appends only after the model's last event it read, so the
    /// losers re-read, find the registration, and skip it.
    async fn register(&self, model: &str, f: &Fetched, meta: &Meta) -> Result<(), String> {
        let registered = ModelRegistered {
            model: model.into(),
            node: self.node.clone(),
            path: f.path.display().to_string(),
            size_bytes: f.size_bytes,
            sha256: f.sha256.clone(),
            memory_required_bytes: rbee_bus::estimated_memory_bytes(f.size_bytes),
        };
        on_model(&self.log, &self.node, model, &ModelCommand::Register(registered), meta)
            .await
            .map(|_| ())
            .map_err(|e| format!("could not record {model} in the catalog: {e}"))
    }

    /// Deletes a model's file from this node and records `model.removed`. Refused while a worker on
    /// this node serves it.
    pub async fn remove(&self, model: &str, meta: &Meta) -> Result<u64, Failure> {
        let (entry, serving) = self.view.read(|v| {
            let serving: Vec<String> =
                v.registry.workers_for(model).filter(|w| w.node == self.node).map(|w| w.id.clone()).collect();
            (v.catalog.get(model, &self.node).cloned(), serving)
        });
        let Some(entry) = entry else {
            return Err(Failure::fatal(
                Code::ModelNotFound,
                format!("{model} is not in the catalog of node {}", self.node),
            ));
        };
        if !serving.is_empty() {
            return Err(Failure::fatal(
                Code::ModelInUse,
                format!("{model} is served by {}; stop those workers first", serving.join(", ")),
            ));
        }
        let freed = std::fs::metadata(&entry.path).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&entry.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Failure::fatal(Code::RemoveFailed, format!("cannot delete {}: {e}", entry.path))),
        }
        let command = ModelCommand::Remove {
            model: model.into(),
            node: self.node.clone(),
            reason: "removed on request (rbee models rm)".into(),
        };
        on_model(&self.log, &self.node, model, &command, meta).await.map(|_| freed).map_err(|e| {
            Failure::fatal(Code::EventLogUnavailable, format!("could not record {model} in the catalog: {e}"))
        })
    }
}

/// Copies a local GGUF file into the store through a private partial file, hashing on the way and
/// checking the checksum and header before it is renamed into place. Blocking.
pub fn copy_into_store(
    models_dir: &Path,
    model: &str,
    from: &Path,
    expected_sha256: Option<&str>,
) -> Result<Fetched, Failure> {
    let io = |e: std::io::Error| Failure::fatal(Code::ProvisionFailed, format!("cannot copy {}: {e}", from.display()));
    let target = models_dir.join(format!("{model}.gguf"));
    if !from.is_file() {
        return Err(Failure::fatal(Code::ModelNotFound, format!("model file {} does not exist", from.display())));
    }
    std::fs::create_dir_all(models_dir).map_err(io)?;
    remove_abandoned_partials(models_dir, model);
    // A partial file of our own: several hives (or starts) may copy the same model at once; each
    // copies and verifies its own, and the renames into place are atomic and identical.
    let nonce =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let partial = models_dir.join(format!("{model}.gguf.partial.{}.{nonce}", std::process::id()));
    let result = copy_hashing(from, &partial).map_err(io).and_then(|(size_bytes, sha256)| {
        if let Some(expected) = expected_sha256.filter(|e| !e.eq_ignore_ascii_case(&sha256)) {
            return Err(Failure::fatal(
                Code::ChecksumMismatch,
                format!("{} has sha256 {sha256}, expected {expected}", from.display()),
            ));
        }
        gguf_check::check(&partial).map_err(|reason| {
            Failure::fatal(Code::ModelInvalid, format!("{} is not a usable GGUF model: {reason}", from.display()))
        })?;
        Ok((size_bytes, sha256))
    });
    match result {
        Ok((size_bytes, sha256)) => {
            std::fs::rename(&partial, &target).map_err(io)?;
            Ok(Fetched { path: target, size_bytes, sha256 })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Removes copy partials of this model left by processes that are gone (a hive killed mid-copy).
fn remove_abandoned_partials(models_dir: &Path, model: &str) {
    let prefix = format!("{model}.gguf.partial.");
    let Ok(entries) = std::fs::read_dir(models_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner =
            name.strip_prefix(&prefix).and_then(|rest| rest.split('.').next()).and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()) {
            tracing::info!(file = %name, "removing a partial file its dead writer left");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn copy_hashing(from: &Path, to: &Path) -> std::io::Result<(u64, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A test's own directory, removed when the test ends (passed or not).
    struct Scratch(PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("rbee-provision-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn tiny_model(dir: &Path) -> (PathBuf, String) {
        let path = dir.join("source.gguf");
        let bytes = gguf_check::tiny_gguf();
        std::fs::write(&path, &bytes).unwrap();
        (path, hex::encode(Sha256::digest(&bytes)))
    }

    #[test]
    fn a_local_model_is_copied_verified_and_placed() {
        let dir = scratch("copy");
        let (src, sha) = tiny_model(&dir);
        let store = dir.join("models");
        let copied = copy_into_store(&store, "m", &src, Some(&sha)).unwrap();
        assert_eq!(copied.sha256, sha);
        assert_eq!(copied.path, store.join("m.gguf"));
        assert_eq!(std::fs::read_dir(&store).unwrap().count(), 1, "only the model, no partial file");
    }

    #[test]
    fn a_checksum_mismatch_leaves_nothing_behind() {
        let dir = scratch("mismatch");
        let (src, _) = tiny_model(&dir);
        let store = dir.join("models");
        let err = copy_into_store(&store, "m", &src, Some(&"0".repeat(64))).unwrap_err();
        assert_eq!(err.code, Code::ChecksumMismatch);
        assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0, "partial file removed");
    }

    #[test]
    fn a_file_that_is_not_a_gguf_model_is_refused() {
        let dir = scratch("magic");
        let src = dir.join("x.gguf");
        std::fs::write(&src, b"GGUF but nothing after the magic").unwrap();
        let err = copy_into_store(&dir.join("models"), "m", &src, None).unwrap_err();
        assert_eq!(err.code, Code::ModelInvalid);
    }

    #[test]
    fn a_missing_file_is_model_not_found() {
        let dir = scratch("missing");
        assert_eq!(
            copy_into_store(&dir, "m", Path::new("/no/such/file.gguf"), None).unwrap_err().code,
            Code::ModelNotFound
        );
    }
}
