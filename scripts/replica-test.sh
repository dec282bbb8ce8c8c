#!/usr/bin/env bash
# Replica test (issue #11, docs/replicas.md): R `mapper serve` replicas on one
# PostgreSQL database, one GHL location with GHL's real rate limit on the
# simulator, P people each arriving from two sources at once on two
# replicas, E webhooks in all, one replica SIGKILLed midway and restarted;
# then 429s, duplicate contacts, events applied twice or lost, and
# per-customer order are counted.
#
#   scripts/replica-test.sh [--people 300] [--events 3000] [--replicas 3] [--seed S]
#
# Builds the release binary and the simulators' process (examples/crash_sims)
# unless MAPPER_BIN and MAPPER_SIMS name existing ones. PostgreSQL: the server
# of MAPPER_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1/test);
# a database of its own is created and dropped. Exit 1 on any failed figure,
# 2 when it cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MAPPER_BIN:-}" ] || [ -z "${MAPPER_SIMS:-}" ]; then
  cargo build --release --locked --bin mapper --example crash_sims >&2
  MAPPER_BIN=target/release/mapper
  MAPPER_SIMS=target/release/examples/crash_sims
fi
exec python3 scripts/replica_test.py --bin "$MAPPER_BIN" --sims "$MAPPER_SIMS" --root . "$@"
