//! Where a hive may fetch models from: hub hosts (by scheme, host and port; default: the
//! configured `HF_ENDPOINT`) and local files under allowed directories. Anything else is refused
//! with `SOURCE_NOT_ALLOWED` before a connection is made or a file is opened: a command in the log
//! cannot make a hive reach an address, or read a file, that its operator did not allow.

use std::path::{Component, Path, PathBuf};

use rbee_bus::Code;
use rbee_bus::model_ref::ModelRef;

use crate::fetch::Failure;

#[derive(Debug, Clone)]
pub struct SourcePolicy {
    /// (scheme, host, port) of every allowed hub.
    hosts: Vec<(String, String, u16)>,
    dirs: Vec<PathBuf>,
}

/// `scheme://[userinfo@]host[:port]/...` as (scheme, host, port); None for anything else, or a
/// URL with userinfo (which hides the real host from a reader).
pub fn origin(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            (host, port.parse().ok().filter(|p| *p != 0)?)
        }
        _ => (authority, default_port),
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// An absolute path with `.` and `..` resolved without touching the file system.
fn normalized(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::RootDir => out.push("/"),
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Prefix(_) => return None,
        }
    }
    path.is_absolute().then_some(out)
}

impl SourcePolicy {
    /// `hosts` are URLs (`https://huggingface.co`), `dirs` directories.
    pub fn new(hosts: &[String], dirs: &[PathBuf]) -> Result<SourcePolicy, String> {
        let hosts = hosts
            .iter()
            .map(|h| origin(h).ok_or_else(|| format!("allowed source host {h:?} is not an http(s) URL")))
            .collect::<Result<_, _>>()?;
        // A directory is compared by its real path (symlinks resolved) when it exists.
        let dirs = dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d)
                    .ok()
                    .or_else(|| normalized(d))
                    .ok_or_else(|| format!("allowed source directory {} is not an absolute path", d.display()))
            })
            .collect::<Result<_, _>>()?;
        Ok(SourcePolicy { hosts, dirs })
    }

    /// Whether `reference` may be fetched; the refusal says what is allowed.
    pub fn check(&self, reference: &ModelRef) -> Result<(), Failure> {
        let refuse = |what: String| Err(Failure::fatal(Code::SourceNotAllowed, what));
        match reference {
            // The hub is HF_ENDPOINT, which is allowed unless the operator listed others only.
            ModelRef::Hub { .. } => Ok(()),
            ModelRef::Url(url) => match origin(url) {
                Some(o) if self.hosts.contains(&o) => Ok(()),
                Some((scheme, host, port)) => refuse(format!(
                    "{scheme}://{host}:{port} is not an allowed model source (allowed hosts: {}; see --allowed-hosts)",
                    self.hosts.iter().map(|(s, h, p)| format!("{s}://{h}:{p}")).collect::<Vec<_>>().join(", ")
                )),
                None => refuse("a model URL must be http(s)://host[:port]/path, without user info".into()),
            },
            ModelRef::File(path) => {
                // The real path, so neither `..` nor a symlink leads out of an allowed directory.
                let real = std::fs::canonicalize(path).ok().or_else(|| normalized(path));
                match real {
                    Some(real) if self.dirs.iter().any(|d| real.starts_with(d)) => Ok(()),
                    _ => refuse(format!(
                        "{} is not under an allowed model directory ({}; see --allowed-dirs)",
                        path.display(),
                        self.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SourcePolicy {
        SourcePolicy::new(&["https://hub.example".into(), "http://127.0.0.1:8081".into()], &["/srv/models".into()])
            .unwrap()
    }

    fn check(reference: &str) -> Result<(), Code> {
        policy().check(&ModelRef::parse(reference).unwrap()).map_err(|f| f.code)
    }

    #[test]
    fn hosts_are_matched_by_scheme_host_and_port() {
        assert_eq!(check("https://hub.example/org/repo/resolve/main/m.gguf"), Ok(()));
        assert_eq!(check("https://HUB.example:443/m.gguf"), Ok(()));
        assert_eq!(check("http://127.0.0.1:8081/m.gguf"), Ok(()));
        for bad in [
            "http://hub.example/m.gguf",
            "https://hub.example:8443/m.gguf",
            "http://127.0.0.1:8082/m.gguf",
            "https://hub.example@evil.example/m.gguf",
            "https://evil.example/m.gguf",
        ] {
            assert_eq!(check(bad), Err(Code::SourceNotAllowed), "{bad}");
        }
    }

    #[test]
    fn files_must_be_under_an_allowed_directory() {
        assert_eq!(check("file:///srv/models/m.gguf"), Ok(()));
        for bad in ["/etc/passwd", "file:///srv/models/../../etc/shadow", "relative/m.gguf", "/srv/models-other/m.gguf"]
        {
            assert_eq!(check(bad), Err(Code::SourceNotAllowed), "{bad}");
        }
    }
}
