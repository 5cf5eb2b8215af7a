//! Model references, as users write them: `hf:org/repo[:file]`, `https://host/path/file.gguf`,
//! `file:///path/file.gguf` or a plain path. Parsed once here, for the CLI and the hive alike.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A repository on the model hub (`HF_ENDPOINT`), and optionally the file in it.
    Hub {
        repo: String,
        file: Option<String>,
        revision: String,
    },
    Url(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid model reference {reference}: {reason} (use hf:org/repo[:file.gguf], https://... or file:///path)")]
pub struct InvalidModelRef {
    pub reference: String,
    pub reason: &'static str,
}

impl ModelRef {
    pub fn parse(reference: &str) -> Result<ModelRef, InvalidModelRef> {
        let invalid = |reason| InvalidModelRef { reference: reference.chars().take(200).collect(), reason };
        if reference.is_empty() || reference.len() > 1024 || reference.chars().any(char::is_control) {
            return Err(invalid("empty, too long or containing control characters"));
        }
        if let Some(rest) = reference.strip_prefix("hf:") {
            let (repo_rev, file) = match rest.split_once(':') {
                Some((repo, file)) => (repo, Some(file.to_string())),
                None => (rest, None),
            };
            let (repo, revision) = repo_rev.split_once('@').unwrap_or((repo_rev, "main"));
            let parts: Vec<&str> = repo.split('/').collect();
            let token_ok = |t: &str| {
                !t.is_empty()
                    && t != "."
                    && t != ".."
                    && t.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if parts.len() != 2 || !parts.iter().all(|p| token_ok(p)) || !token_ok(revision) {
                return Err(invalid("a hub repository is org/name"));
            }
            if file.as_deref().is_some_and(|f| f.is_empty() || f.split('/').any(|t| !token_ok(t))) {
                return Err(invalid("the file must be a path inside the repository"));
            }
            return Ok(ModelRef::Hub { repo: repo.to_string(), file, revision: revision.to_string() });
        }
        if reference.starts_with("https://") || reference.starts_with("http://") {
            return Ok(ModelRef::Url(reference.to_string()));
        }
        let path = reference.strip_prefix("file://").or_else(|| reference.strip_prefix("file:")).unwrap_or(reference);
        if path.contains("://") {
            return Err(invalid("unknown scheme"));
        }
        Ok(ModelRef::File(PathBuf::from(path)))
    }

    /// The model name a reference suggests: the file's stem up to its first dot (quantisation
    /// suffixes such as `.Q4_1` dropped), or the repository's name, reduced to `[A-Za-z0-9_-]`.
    pub fn default_name(&self) -> String {
        let base = match self {
            ModelRef::Hub { repo, file: Some(f), .. } => f.rsplit('/').next().unwrap_or(repo).to_string(),
            ModelRef::Hub { repo, file: None, .. } => {
                repo.rsplit('/').next().unwrap_or(repo).trim_end_matches("-GGUF").to_string()
            }
            ModelRef::Url(u) => {
                u.split(['?', '#']).next().unwrap_or(u).rsplit('/').next().unwrap_or("model").to_string()
            }
            ModelRef::File(p) => p.file_name().and_then(|s| s.to_str()).unwrap_or("model").to_string(),
        };
        let stem = base.split('.').next().unwrap_or(&base);
        let name: String = stem
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(crate::subjects::MAX_NAME_LEN)
            .collect();
        if name.is_empty() { "model".into() } else { name }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_to_their_kind() {
        assert_eq!(
            ModelRef::parse("hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:SmolLM2-135M-Instruct.Q4_1.gguf").unwrap(),
            ModelRef::Hub {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF".into(),
                file: Some("SmolLM2-135M-Instruct.Q4_1.gguf".into()),
                revision: "main".into()
            }
        );
        assert_eq!(
            ModelRef::parse("hf:o/r@v2").unwrap(),
            ModelRef::Hub { repo: "o/r".into(), file: None, revision: "v2".into() }
        );
        assert_eq!(ModelRef::parse("file:///m/x.gguf").unwrap(), ModelRef::File("/m/x.gguf".into()));
        assert_eq!(ModelRef::parse("/m/x.gguf").unwrap(), ModelRef::File("/m/x.gguf".into()));
        assert!(matches!(ModelRef::parse("https://h/x.gguf").unwrap(), ModelRef::Url(_)));
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in
            ["", "hf:", "hf:norepo", "hf:a/b/c", "hf:../x", "hf:o/r:../../etc/passwd", "hf:o/r:", "ftp://x", "hf:o/r\n"]
        {
            assert!(ModelRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_derived_from_the_file_or_repository() {
        let name = |r: &str| ModelRef::parse(r).unwrap().default_name();
        assert_eq!(name("hf:o/SmolLM2-135M-Instruct-GGUF:SmolLM2-135M-Instruct.Q4_1.gguf"), "SmolLM2-135M-Instruct");
        assert_eq!(name("hf:o/SmolLM2-135M-Instruct-GGUF"), "SmolLM2-135M-Instruct");
        assert_eq!(name("https://h/a/b/tiny+model.gguf?x=1"), "tinymodel");
        assert_eq!(name("/m/x.y.gguf"), "x");
    }
}
