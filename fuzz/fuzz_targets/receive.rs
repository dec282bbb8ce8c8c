#![no_main]
//! See fuzz/README.md; the same function replays the corpus in tests/fuzz_corpus.rs.

use libfuzzer_sys::fuzz_target;
use mapper::fuzzing::ReceiveTarget;
use std::sync::OnceLock;

static TARGET: OnceLock<ReceiveTarget> = OnceLock::new();

fn target() -> &'static ReceiveTarget {
    let mappings = concat!(env!("CARGO_MANIFEST_DIR"), "/../mappings");
    TARGET.get_or_init(|| ReceiveTarget::new(std::path::Path::new(mappings)))
}

fuzz_target!(
    // Compiling the mapping set takes longer than an input may (1 s): once, before the first.
    init: {
        target();
    },
    |data: &[u8]| target().run(data)
);
