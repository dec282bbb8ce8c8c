#!/usr/bin/env python3
"""Pages of SQLite log written per stored webhook (BENCHMARKS.md, "The log
flushed after the write turn"): copies a mapper database, stores 100
batches of 30 webhooks copied from its own events (new dedup keys) with
the inbox's statement, and counts the log's frames. VARIANT `old-heads`
puts back the head upsert of migration 0008 (a rewrite for every webhook);
`no-customer-index` also drops events_customer_key.

Usage: scripts/log-pages.py DATABASE [current|old-heads|no-customer-index]
  (DATABASE: a mapper SQLite file with a few thousand events, e.g. the one
  scripts/load-ingest.sh fills; it is not changed)
"""
import os, random, shutil, sqlite3, sys, tempfile, time

source, variant = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "current")
work = tempfile.mkdtemp()
copy = os.path.join(work, "copy.db")
shutil.copy(source, copy)
c = sqlite3.connect(copy, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL"); c.execute("PRAGMA wal_autocheckpoint=0")
if variant == "old-heads":
    # The trigger as migration 0008 made it, read from the migration itself.
    migration = open(os.path.join(os.path.dirname(__file__), "..", "migrations", "sqlite", "0008_claim_heads.sql")).read()
    start = migration.index("CREATE TRIGGER inbox_heads_stored")
    trigger = migration[start:migration.index("\nEND;", start) + len("\nEND;")]
    c.executescript("DROP TRIGGER inbox_heads_stored;\n" + trigger)
if variant == "no-customer-index":
    c.execute("DROP INDEX events_customer_key")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
rows = c.execute("SELECT connection, source, event_type, event_id, dedup_key, received_at, occurred_at, headers, body, "
                 "state, next_attempt_at, customer_key, last_error FROM events ORDER BY random() LIMIT 3000").fetchall()
batches, per_batch = 100, 30
if len(rows) < batches * per_batch:
    sys.exit(f"{source} holds {len(rows)} events; {batches * per_batch} are needed")
began = time.perf_counter()
for b in range(batches):
    values = []
    for r in rows[b * per_batch:(b + 1) * per_batch]:
        r = list(r); r[4] = f"{r[4]}-copy{random.randrange(10**9)}"; r[9] = "received"; values.append(r)
    sql = ("INSERT INTO events (connection, source, event_type, event_id, dedup_key, received_at, occurred_at, headers, "
           "body, state, attempts, next_attempt_at, customer_key, last_error) VALUES "
           + ", ".join(["(?,?,?,?,?,?,?,?,?,?,0,?,?,?)"] * len(values))
           + " ON CONFLICT (connection, source, dedup_key) DO NOTHING RETURNING id")
    c.execute(sql, [x for v in values for x in v]).fetchall()
elapsed = time.perf_counter() - began
frames = c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
print(f"{variant}: {frames / (batches * per_batch):.2f} log pages per webhook, "
      f"{elapsed * 1000 / batches:.2f} ms per batch of {per_batch}")
c.close()
shutil.rmtree(work)
