#!/usr/bin/env bash
# Runs one fuzz target (fuzz/README.md) for SECONDS with libFuzzer, then
# minimises its corpus in fuzz/corpus/TARGET (committed, and replayed on
# stable by tests/fuzz_corpus.rs). Needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). Crashes land in fuzz/artifacts/.
#
#   scripts/fuzz.sh TARGET SECONDS     # e.g. scripts/fuzz.sh receive 1800
#
# It runs at `nice 19` (the machine is shared); FUZZ_NICE=0 runs it at the
# normal priority, for check_yaml on a loaded machine: its inputs cost
# ~0.2 s each, and at nice 19 beside other builds they starve past the 1 s
# timeout (a "timeout" the input does not have alone).
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: scripts/fuzz.sh TARGET SECONDS (targets: check_yaml evaluate receive slicktext_form resync_import)"
target=${1:?$usage}
seconds=${2:?$usage}
# No sanitizer (the code under test is safe Rust; 3-10x the executions),
# debug assertions on (integer overflow panics), a hang is > 1 s.
flags=(-s none -a)
niceness=${FUZZ_NICE:-19}
log="fuzz/artifacts/$target.log"
# The targets' temporary folders (the receive target's SQLite file, the
# check target's copy of mappings/) in memory when there is /dev/shm: a
# durable commit per accepted webhook on disk would be most of the time.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi
mkdir -p "fuzz/corpus/$target" fuzz/artifacts

nice -n "$niceness" cargo +nightly fuzz build "${flags[@]}" "$target"
status=0
nice -n "$niceness" cargo +nightly fuzz run "${flags[@]}" "$target" "fuzz/corpus/$target" -- \
  -max_total_time="$seconds" -timeout=1 -rss_limit_mb=4096 -print_final_stats=1 \
  >"$log" 2>&1 || status=$?
grep -E '^Done|stat::number_of_executed_units|ERROR|panicked|SUMMARY' "$log" || true
if [ "$status" -ne 0 ]; then
  echo "fuzz: $target stopped with status $status (see $log and fuzz/artifacts/$target/)" >&2
  exit "$status"
fi
# Keep only the inputs that add coverage: the committed corpus stays small.
nice -n "$niceness" cargo +nightly fuzz cmin "${flags[@]}" "$target" "fuzz/corpus/$target" >/dev/null 2>&1
echo "fuzz: $target: $(grep -E '^Done' "$log" | tail -1); corpus $(ls "fuzz/corpus/$target" | wc -l) files, $(du -sh "fuzz/corpus/$target" | cut -f1)"
