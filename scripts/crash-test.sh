#!/usr/bin/env bash
# Crash test (issue #14, RELIABILITY.md): 20,000 mixed webhooks at full
# speed, `mapper serve` SIGKILLed at 5 random moments and restarted, then
# acknowledged vs stored vs delivered vs applied on the simulators.
#
#   scripts/crash-test.sh [sqlite|postgres] [--events N] [--kills K] [--seed S]
#
# Builds the release binary and the simulators' process (examples/crash_sims)
# unless MAPPER_BIN and MAPPER_SIMS name existing ones. PostgreSQL: the server
# of MAPPER_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1/test);
# a database of its own is created and dropped. Exit 1 on any loss or
# duplicate, 2 when it cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
db="${1:-sqlite}"
shift || true
if [ -z "${MAPPER_BIN:-}" ] || [ -z "${MAPPER_SIMS:-}" ]; then
  cargo build --release --locked --bin mapper --example crash_sims >&2
  MAPPER_BIN=target/release/mapper
  MAPPER_SIMS=target/release/examples/crash_sims
fi
exec python3 scripts/crash_test.py "$db" --bin "$MAPPER_BIN" --sims "$MAPPER_SIMS" --root . "$@"
