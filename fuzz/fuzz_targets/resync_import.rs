#![no_main]
//! See fuzz/README.md; the same function replays the corpus in tests/fuzz_corpus.rs.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mapper::fuzzing::resync_import(data));
