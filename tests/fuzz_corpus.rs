//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) on stable,
//! through the very functions the cargo-fuzz targets call
//! (`mapper::fuzzing`): what the fuzzers found interesting once keeps
//! being run by `cargo test`, no nightly needed. A panic, or an input over
//! the fuzzers' 1 s budget (here 10 s: a debug build, on a shared machine),
//! fails the test with the file named.

use mapper::fuzzing::{CheckTarget, EvalTarget, FormTarget, ReceiveTarget};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    let slow = Duration::from_secs(10);
    let files = corpus(target);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
        assert!(outcome.is_ok(), "{} panicked", file.display());
        assert!(
            started.elapsed() < slow,
            "{} took {:?}",
            file.display(),
            started.elapsed()
        );
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

fn mappings() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

#[test]
fn check_yaml() {
    let target = CheckTarget::new(&mappings());
    replay("check_yaml", |d| target.run(d));
}

#[test]
fn evaluate() {
    let target = EvalTarget::new(&mappings());
    replay("evaluate", |d| target.run(d));
}

#[test]
fn receive() {
    let target = ReceiveTarget::new(&mappings());
    replay("receive", |d| target.run(d));
}

#[test]
fn slicktext_form() {
    let target = FormTarget::new(&mappings());
    replay("slicktext_form", |d| target.run(d));
}

#[test]
fn resync_import() {
    replay("resync_import", mapper::fuzzing::resync_import);
}
