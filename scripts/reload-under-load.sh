#!/usr/bin/env bash
# Reload under load (issue #14, RELIABILITY.md): 1,000 rewrites of the
# mapping folder, valid and broken sets in turn, under a steady stream of
# webhooks; 0 failed requests, 0 events dropped, each broken set refused.
#
#   scripts/reload-under-load.sh [sqlite|postgres] [--reloads N] [--rate PER_SECOND]
#
# Builds the release binary and the simulators' process unless MAPPER_BIN
# and MAPPER_SIMS name existing ones. Exit 1 on any failure, 2 when it
# cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
db="${1:-sqlite}"
shift || true
if [ -z "${MAPPER_BIN:-}" ] || [ -z "${MAPPER_SIMS:-}" ]; then
  cargo build --release --locked --bin mapper --example crash_sims >&2
  MAPPER_BIN=target/release/mapper
  MAPPER_SIMS=target/release/examples/crash_sims
fi
exec python3 scripts/reload_under_load.py "$db" --bin "$MAPPER_BIN" --sims "$MAPPER_SIMS" --root . "$@"
