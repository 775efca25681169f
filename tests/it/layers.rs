//! The layers of `pipeline/` hold: no module imports a layer above its own, so the import
//! graph has no cycle between layers. Read from the sources, as a reviewer would.
//!
//! Bottom to top: storage, sources, state, jobs, publish, serve, config, app, then the CLI
//! (`main.rs`, `cli/`). The generator stands beside them: it imports storage only, and only
//! the application and the CLI import it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const LAYERS: [&str; 9] = [
    "storage", "sources", "state", "jobs", "publish", "serve", "config", "app", "cli",
];
const GENERATOR: &str = "generate";

/// The top module of a file under `pipeline/`: its first folder, or the file's own name.
fn top_module(relative: &Path) -> String {
    let first = relative.components().next().expect("a path under pipeline/");
    let name = first.as_os_str().to_string_lossy();
    let name = name.strip_suffix(".rs").unwrap_or(&name);
    match name {
        "main" => "cli".into(),
        other => other.into(),
    }
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module)
}

/// Every `crate::x` / `tagflow::x` a file names outside comments: the top modules it uses.
fn imports(source: &str, in_binary: bool) -> BTreeSet<String> {
    let prefix = if in_binary { "tagflow::" } else { "crate::" };
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != "Error" {
                found.insert(name);
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The import edges of `pipeline/` that break the layering, as `file -> module`.
fn violations(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(root).unwrap();
        if relative == Path::new("lib.rs") {
            continue;
        }
        let own = top_module(relative);
        let in_binary = own == "cli";
        for target in imports(&std::fs::read_to_string(&file).unwrap(), in_binary) {
            let allowed = match (own.as_str(), target.as_str()) {
                (GENERATOR, target) => target == GENERATOR || target == "storage",
                (own, GENERATOR) => rank(own) >= rank("app"),
                (own, target) => match (rank(own), rank(target)) {
                    (Some(own), Some(target)) => target <= own,
                    _ => false,
                },
            };
            if !allowed {
                found.push(format!("{} -> {target}", relative.display()));
            }
        }
    }
    found
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let found = violations(&root);
    assert!(found.is_empty(), "imports that point up a layer:\n{}", found.join("\n"));
}

/// The check itself catches an upward import and an unknown top module.
#[test]
fn the_layer_check_catches_an_upward_import() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("storage")).unwrap();
    std::fs::create_dir_all(dir.path().join("app")).unwrap();
    std::fs::write(
        dir.path().join("storage/mod.rs"),
        "// crate::app in a comment is fine\nuse crate::config::Settings;\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("app/mod.rs"),
        "use crate::storage::Location;\nuse crate::nowhere::X;\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("main.rs"), "use tagflow::app::run;\n").unwrap();
    assert_eq!(
        violations(dir.path()),
        ["app/mod.rs -> nowhere", "storage/mod.rs -> config"]
    );
}
