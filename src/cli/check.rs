//! `mapper check`.

use super::{Format, same_file, set_root};
use crate::config::compile::check_dir;
use crate::config::diagnostic::{Code, Diagnostic, Pos};
use std::path::PathBuf;
use std::process::ExitCode;

/// Checks mapping folders (or files inside one): exit 0 valid, 1 invalid,
/// 2 when a path given does not exist (a usage error, not an invalid set).
pub fn run(paths: &[PathBuf], format: Format) -> ExitCode {
    let mut usage = false;
    let mut all: Vec<Diagnostic> = Vec::new();
    let mut texts = std::collections::BTreeMap::new();
    let mut summaries = Vec::new();
    for path in paths {
        if !path.exists() {
            usage = true;
            all.push(
                Diagnostic::error(Code::M021, path, Pos::UNKNOWN, "no such file or folder")
                    .with_hint("pass a mapping folder, e.g. `mapper check mappings`"),
            );
            continue;
        }
        let root = set_root(path);
        let compiled = check_dir(&root);
        let only_file = (!path.is_dir()).then(|| path.clone());
        let mut diags: Vec<Diagnostic> = compiled
            .diagnostics
            .into_iter()
            .filter(|d| only_file.as_ref().is_none_or(|f| same_file(&d.file, f)))
            .collect();
        if let Some(p) = &compiled.program {
            summaries.push(format!(
                "{}: {} mappings, {} sources, {} targets, {} tests",
                root.display(),
                p.mappings.len(),
                p.sources.len(),
                p.targets.len(),
                compiled.tests.len()
            ));
        }
        texts.extend(compiled.texts);
        all.append(&mut diags);
    }
    let errors = all.iter().filter(|d| d.is_error()).count();
    let warnings = all.len() - errors;
    match format {
        Format::Json => {
            let out = serde_json::json!({
                "valid": errors == 0,
                "errors": errors,
                "warnings": warnings,
                "diagnostics": all,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Format::Text => {
            for d in &all {
                eprint!("{}", d.render(texts.get(&d.file).map(String::as_str)));
                eprintln!();
            }
            for s in &summaries {
                eprintln!("checked {s}");
            }
            if errors == 0 {
                eprintln!("ok: no errors, {warnings} warning(s)");
            } else {
                eprintln!("invalid: {errors} error(s), {warnings} warning(s)");
            }
        }
    }
    if usage {
        ExitCode::from(2)
    } else if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
