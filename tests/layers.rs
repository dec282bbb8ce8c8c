//! The import rules ARCHITECTURE.md states, checked on the source tree: a
//! layer that starts naming a module above it fails here, before the
//! dependency hardens into a cycle.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let entries =
            std::fs::read_dir(&next).unwrap_or_else(|e| panic!("{}: {e}", next.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    assert!(!found.is_empty(), "no sources under {}", dir.display());
    found
}

/// The lines of files under `layer` (a folder or one file of `src/`) that
/// name one of `forbidden`, as `file:line: text`.
fn offences(layer: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(layer);
    let files = if root.is_dir() {
        sources(&root)
    } else {
        vec![root]
    };
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if let Some(name) = forbidden.iter().find(|name| code.contains(*name)) {
                found.push(format!(
                    "{}:{}: names {name}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    found
}

const SIDE_EFFECTS: &[&str] = &[
    "crate::store",
    "crate::targets",
    "crate::server",
    "crate::worker",
    "crate::app",
    "crate::cli",
    "crate::sandbox",
    "tokio",
    "reqwest",
    "sqlx",
    "std::fs",
    "std::net",
];

#[test]
fn the_engine_runs_a_program_and_never_names_config_or_io() {
    let mut forbidden = vec!["crate::config"];
    forbidden.extend(SIDE_EFFECTS);
    let found = offences("engine", &forbidden);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn config_compiles_a_program_and_never_names_the_engine() {
    let mut forbidden = vec!["crate::engine"];
    forbidden.extend(SIDE_EFFECTS.iter().filter(|name| **name != "std::fs"));
    let found = offences("config", &forbidden);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_template_language_stands_alone() {
    let mut forbidden = vec!["crate::config", "crate::engine", "crate::program"];
    forbidden.extend(SIDE_EFFECTS);
    let found = offences("template", &forbidden);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_program_is_data_between_config_and_engine() {
    let mut forbidden = vec![
        "crate::engine",
        "crate::config::compile",
        "crate::config::load",
    ];
    forbidden.extend(SIDE_EFFECTS);
    let found = offences("program.rs", &forbidden);
    assert!(found.is_empty(), "{}", found.join("\n"));
}
