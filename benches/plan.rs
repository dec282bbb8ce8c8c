//! Plan evaluation per event against parsing the same payload with serde_json
//! alone, measured in the same run (see BENCHMARKS.md).
//!
//! `cargo bench --bench plan`

use criterion::{Criterion, criterion_group, criterion_main};
use mapper::config::compile::compile_dir;
use mapper::engine::plan::PlanInput;
use serde_json::Value;
use std::hint::black_box;
use std::path::Path;

fn bench(c: &mut Criterion) {
    let compiled = compile_dir(Path::new("mappings"));
    let Some(program) = compiled.program else {
        panic!("the shipped mapping set has errors: run `mapper check mappings`");
    };
    let input = PlanInput::default();
    // A small and a large Sticky Cards mapping, two mappings on one event, a
    // large SlickText payload, and a GHL contact webhook.
    let cases = [
        (
            "stickycards",
            "examples/payloads/stickycards/CardScannedEvent.json",
        ),
        (
            "stickycards",
            "examples/payloads/stickycards/CardInstalledEvent.json",
        ),
        (
            "stickycards",
            "examples/payloads/stickycards/PaymentCompletedSuccessfulEvent.json",
        ),
        (
            "slicktext",
            "examples/payloads/slicktext/LoyaltyEventCreated.debit-reward.json",
        ),
        ("ghl", "examples/payloads/ghl/ContactTagUpdate.json"),
    ];
    for (source, file) in cases {
        let body = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let name = Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(file);
        let mut group = c.benchmark_group(name);
        group.bench_function("baseline: serde_json parse", |b| {
            b.iter(|| black_box(serde_json::from_slice::<Value>(black_box(&body)).ok()))
        });
        let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        group.bench_function("plan (payload already parsed)", |b| {
            b.iter(|| black_box(program.plan(source, black_box(&payload), &input).ok()))
        });
        group.bench_function("parse + plan", |b| {
            b.iter(|| {
                let v: Value = serde_json::from_slice(black_box(&body)).unwrap_or(Value::Null);
                black_box(program.plan(source, &v, &input).ok())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
