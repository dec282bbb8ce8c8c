#!/usr/bin/env bash
# Durable ingest as users meet it (BENCHMARKS.md, issue #10): wrk POSTs
# distinct Sticky Cards webhooks (scripts/ingest.lua) at 64 connections to
#   1. a bare axum handler that answers 200 (examples/bare_axum.rs), then
#   2. the release `mapper` binary, `mapper demo --keep-running`: `serve` on
#      a fresh SQLite file with its worker delivering to the GHL and Sticky
#      Cards simulators (in the same process) at the shipped GHL rate limit,
#   3. the same mapper again once BACKLOG events (default 50,000) wait.
# For each: webhooks/s, as % of bare axum, p99, and the server process's CPU
# (utime + stime from /proc/<pid>/stat) per acknowledged (2xx) webhook.
#
# Usage: scripts/load-ingest.sh [seconds per run, default 15]
# Env: CONNECTIONS (64), THREADS (2), BACKLOG (50000), INGEST_CUSTOMERS (5000),
#      MAPPER_BIN (default target/release/mapper: another build to compare),
#      MAPPER_DATABASE (default: a SQLite file in a temporary folder),
#      SKIP_BUILD=1 to use the binaries already in target/release.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-15}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
BACKLOG=${BACKLOG:-50000}
TOKEN=demo-token # what `mapper demo` configures for Sticky Cards

if ! command -v wrk >/dev/null; then
    echo "wrk is missing: installing it" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk; else sudo apt-get update -qq && sudo apt-get install -y -qq wrk; fi
fi
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --bin mapper --example bare_axum
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks=$(getconf CLK_TCK)
# utime + stime of a process, in milliseconds (fields 14 and 15, after the name).
cpu_ms() { awk -v t="$ticks" '{ sub(/^.*\) /, ""); print ($12 + $13) * 1000 / t }' "/proc/$1/stat"; }

# Seconds each SQLite writer of mapper has held the write turn, as
# "writer seconds" lines (empty for the bare handler or on PostgreSQL).
writer_busy() {
    curl -sf "http://127.0.0.1:$mapper_port/metrics" 2>/dev/null |
        sed -n 's/^mapper_sqlite_writer_busy_seconds{writer="\([a-z]*\)"} \([0-9.e+-]*\)$/\1 \2/p' || true
}
writer_notes=()

# run LABEL URL PID -> prints a table row; sets RATE
run() {
    local label=$1 url=$2 pid=$3 before after out busy_before busy_after
    busy_before=$(writer_busy)
    before=$(cpu_ms "$pid")
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s scripts/ingest.lua "$url")
    after=$(cpu_ms "$pid")
    busy_after=$(writer_busy)
    if [ "$pid" = "${mapper_pid:-}" ] && [ -n "$busy_after" ]; then
        writer_notes+=("$label: SQLite write turn held $(join -a2 <(echo "$busy_before" | sort) <(echo "$busy_after" | sort) |
            awk -v s="$SECONDS_PER_RUN" 'NF == 3 { t += $3 - $2; parts = parts sprintf("%s %.0f%%, ", $1, 100 * ($3 - $2) / s) }
                NF == 2 { t += $2; parts = parts sprintf("%s %.0f%%, ", $1, 100 * $2 / s) }
                END { printf "%.0f%% of the run (%s)", 100 * t / s, substr(parts, 1, length(parts) - 2) }')")
    fi
    echo "$out" > "$work/$label.wrk"
    local total non2xx secs p50 p99
    total=$(echo "$out" | awk '/requests in/ { print $1 }')
    secs=$(echo "$out" | awk '/requests in/ { sub(/s,$/, "", $4); print $4 }')
    non2xx=$(echo "$out" | awk '/Non-2xx/ { print $NF }')
    non2xx=${non2xx:-0}
    p50=$(echo "$out" | awk '$1 == "50%" { print $2 }')
    p99=$(echo "$out" | awk '$1 == "99%" { print $2 }')
    local acked=$((total - non2xx))
    RATE=$(awk -v a="$acked" -v s="$secs" 'BEGIN { printf "%.0f", a / s }')
    local cpu
    cpu=$(awk -v b="$before" -v a="$after" -v n="$acked" 'BEGIN { printf "%.3f", (a - b) / (n > 0 ? n : 1) }')
    local ratio="-"
    if [ -n "${BARE_RATE:-}" ]; then ratio=$(awk -v r="$RATE" -v b="$BARE_RATE" 'BEGIN { printf "%.1f%%", 100 * r / b }'); fi
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$RATE" "$ratio" "$p50" "$p99" "$cpu" "$non2xx"
}

waiting() {
    sqlite3 "$db_file" "SELECT COUNT(*) FROM events WHERE state IN ('received', 'retrying', 'processing')" 2>/dev/null || echo 0
}

bare_port=$(free_port)
./target/release/examples/bare_axum "127.0.0.1:$bare_port" > "$work/bare.log" 2>&1 &
bare_pid=$!
pids+=("$bare_pid")

db_file="$work/ingest.db"
database=${MAPPER_DATABASE:-sqlite://$db_file}
mapper_port=$(free_port)
RUST_LOG=${RUST_LOG:-warn} "${MAPPER_BIN:-./target/release/mapper}" demo --keep-running --listen "127.0.0.1:$mapper_port" \
    --database "$database" > "$work/mapper.log" 2>&1 &
mapper_pid=$!
pids+=("$mapper_pid")
# The demo posts its examples and waits for them to be delivered first.
for _ in $(seq 1 120); do
    grep -q "still serving on" "$work/mapper.log" && break
    sleep 1
done
grep -q "still serving on" "$work/mapper.log" || { echo "mapper did not start:" >&2; cat "$work/mapper.log" >&2; exit 1; }

echo "wrk: $THREADS threads, $CONNECTIONS connections, ${SECONDS_PER_RUN}s per run; $(nproc) cores shared with the load generator"
echo
echo "| server | webhooks/s | % of bare axum | p50 | p99 | CPU ms per acknowledged webhook | non-2xx |"
echo "|---|---|---|---|---|---|---|"
run "bare axum" "http://127.0.0.1:$bare_port/webhooks/stickycards" "$bare_pid"
BARE_RATE=$RATE
run "mapper serve + worker, empty inbox" "http://127.0.0.1:$mapper_port/webhooks/stickycards?token=$TOKEN" "$mapper_pid"
if [[ $database == sqlite://* ]]; then
    # Fill the inbox up to the backlog (the worker drains ~10 events/s at GHL's limit).
    while [ "$(waiting)" -lt "$BACKLOG" ]; do
        wrk -t"$THREADS" -c"$CONNECTIONS" -d5s -s scripts/ingest.lua \
            "http://127.0.0.1:$mapper_port/webhooks/stickycards?token=$TOKEN" > /dev/null
    done
    run "mapper serve + worker, $(waiting) waiting" "http://127.0.0.1:$mapper_port/webhooks/stickycards?token=$TOKEN" "$mapper_pid"
    echo
    for note in "${writer_notes[@]}"; do echo "$note"; done
    echo "after the runs: $(waiting) events waiting; delivered so far: $(sqlite3 "$db_file" "SELECT COUNT(*) FROM events WHERE state = 'delivered'")"
fi
