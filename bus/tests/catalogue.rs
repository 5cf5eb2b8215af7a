//! The error catalogue is the one place codes are spelled: no source file names a code as a string,
//! `docs/errors.md` is generated from it, and the README's table agrees with it.

use std::path::{Path, PathBuf};

use rbee_bus::Code;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Names of environment variables: the one other kind of SCREAMING_SNAKE string in the tree.
const ENVIRONMENT_PREFIXES: [&str; 9] =
    ["RBEE_", "HF_", "CARGO_", "RUST_", "XDG_", "PG_", "CUDA_", "RAYON_", "NO_COLOR"];

/// The string literals of `line` that name a code, or are shaped like one (capitals and digits
/// with an underscore).
fn code_shaped_literals(line: &str) -> Vec<&str> {
    line.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            let shaped = s.contains('_')
                && s.starts_with(|c: char| c.is_ascii_uppercase())
                && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            shaped || Code::parse(s).is_some()
        })
        .collect()
}

#[test]
fn no_source_file_spells_a_code_as_a_string() {
    let catalogue = workspace().join("bus/src/code.rs");
    let mut files = Vec::new();
    rust_files(&workspace(), &mut files);
    let mut found = Vec::new();
    for file in files.iter().filter(|f| **f != catalogue) {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for literal in code_shaped_literals(line) {
                if !ENVIRONMENT_PREFIXES.iter().any(|p| literal.starts_with(p)) {
                    found.push(format!("{}:{}: \"{literal}\"", file.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "code-like strings outside bus/src/code.rs (use a Code):\n{}", found.join("\n"));
}

/// The catalogue as Markdown: what `docs/errors.md` holds.
fn catalogue_markdown() -> String {
    let mut text = String::from(
        "# Error codes\n\nEvery failure rbee reports has one of these codes: in HTTP error bodies (with the status \
         shown), in events (`worker.start_failed`, `download.failed`, ...), in token frames and in the CLI's \
         `error[CODE]: ...` line (exit 1; `INTERRUPTED` exits 130).\n\n\
         Generated from `bus/src/code.rs` by `RBEE_BLESS=1 cargo test -p rbee-bus --test catalogue`; \
         a test fails when the two differ.\n\n| code | HTTP | meaning |\n|---|---|---|\n",
    );
    for code in Code::ALL {
        text.push_str(&format!("| `{code}` | {} | {} |\n", code.http_status(), code.meaning()));
    }
    text
}

#[test]
fn docs_errors_md_is_the_catalogue() {
    let path = workspace().join("docs/errors.md");
    let expected = catalogue_markdown();
    if std::env::var_os("RBEE_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(actual == expected, "docs/errors.md is not the catalogue: regenerate it with RBEE_BLESS=1");
}

#[test]
fn the_readme_names_codes_with_their_catalogue_status() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let mut rows = 0;
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(status) = cells[2].split_whitespace().next().unwrap_or("").parse::<u16>() else { continue };
        for name in cells[1].split('/').map(|c| c.trim().trim_matches('`')) {
            let code = Code::parse(name).unwrap_or_else(|| panic!("README names {name}, which is not a code"));
            assert_eq!(code.http_status(), status, "README gives {name} status {status}");
            rows += 1;
        }
    }
    assert!(rows >= 5, "the README's code table was not found");
}

/// `docs/ARCHITECTURE.md` lists every event type of today's schema with every one of its fields
/// (the fields read from the schema's fixtures, which are checked against the code in `schemas.rs`).
#[test]
fn the_architecture_lists_every_event_with_its_fields() {
    let doc = std::fs::read_to_string(workspace().join("docs/ARCHITECTURE.md")).unwrap();
    let fixtures = workspace().join(format!("bus/tests/fixtures/schema{}", rbee_bus::envelope::SCHEMA_VERSION));
    let mut events = 0;
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let kind = path.file_stem().unwrap().to_str().unwrap().to_string();
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{kind}` |")))
            .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has no row for {kind}"));
        let fields_cell = row.split('|').nth(3).unwrap();
        let listed: Vec<&str> = fields_cell.split(',').map(|f| f.split_whitespace().next().unwrap_or("")).collect();
        let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let body = fixture["event"].as_object().unwrap().values().next().unwrap().as_object().unwrap();
        let actual: Vec<&str> = body.keys().map(String::as_str).collect();
        assert_eq!(listed, actual, "docs/ARCHITECTURE.md lists other fields for {kind}");
        events += 1;
    }
    assert_eq!(events, 26);
}
