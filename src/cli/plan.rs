//! `mapper plan`.

use crate::config::compile::compile_dir;
use crate::engine::decode::decode;
use crate::engine::plan::PlanInput;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

pub fn run(mappings: &Path, source: &str, payload: &Path) -> ExitCode {
    let compiled = compile_dir(mappings);
    let Some(program) = compiled.program else {
        for d in &compiled.diagnostics {
            eprint!(
                "{}",
                d.render(compiled.texts.get(&d.file).map(String::as_str))
            );
        }
        eprintln!(
            "the mapping folder {} has errors; fix them first (`mapper check`)",
            mappings.display()
        );
        return ExitCode::from(1);
    };
    let Some(src) = program.sources.get(source) else {
        eprintln!(
            "error: unknown source `{source}`; sources: {}",
            program
                .sources
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::from(2);
    };
    let body = if payload == Path::new("-") {
        let mut buf = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
            eprintln!("error: cannot read standard input: {e}");
            return ExitCode::from(2);
        }
        buf
    } else {
        match std::fs::read(payload) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", payload.display());
                return ExitCode::from(2);
            }
        }
    };
    let value = match decode(&body, &src.body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {}: {e}", payload.display());
            return ExitCode::from(1);
        }
    };
    let mut input = PlanInput {
        mask_secrets: true,
        ..Default::default()
    };
    for target in program.targets.values() {
        for name in target.env.keys() {
            if let Ok(v) = std::env::var(name) {
                input.env.insert(name.clone(), v);
            }
        }
    }
    match program.plan(source, &value, &input) {
        Ok(plan) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan).unwrap_or_default()
            );
            if plan.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
