#!/usr/bin/env python3
"""Reload under load (issue #14): `mapper serve` receives a steady stream of
webhooks while its mapping folder is rewritten R times, alternating a valid
set and a broken one. Run through scripts/reload-under-load.sh.

Each rewrite waits until serve has reacted (`mapper_config_reloads_total`
on /metrics grew by one) before the next, and checks the outcome: a valid
set applied (`result="ok"`), a broken set refused (`result="failed"`) while
the previous set keeps serving. The broken sets take turns: a YAML syntax
error, a selector the payload schema does not have, an operation the target
does not declare. Valid sets differ from each other (a description with the
reload's number), so every rewrite is a change of content. Files are
written in place or by rename, as editors do.

At the end: requests that failed (anything but 202/200, or no answer),
events acknowledged vs stored vs delivered vs applied once on the simulated
GHL (markers on notes, as in crash_test.py). One line; exit 1 on any failed
request, lost or duplicated event, or reload with the wrong outcome.
"""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crash_test import (  # noqa: E402  (the sibling script, not a package)
    TOKENS, Serve, copy_mappings, fail, free_port, status, webhook)

MAPPING_FILE = os.path.join("stickycards-ghl", "engagement.yaml")
DESCRIPTION = "    description: The customer left feedback → a note with the rating and comment, and last_activity.\n"

BROKEN = [
    # YAML that does not parse.
    ("yaml", lambda text, k: text + f"\n  - name: broken-{k}\n    source: [unclosed\n"),
    # A selector the FeedbackCreatedEvent schema does not declare.
    ("selector", lambda text, k: text.replace('      comment: "@comment"\n',
                                              f'      comment: $.feedback.coment_{k}\n', 1)),
    # An operation GHL's profile does not declare.
    ("operation", lambda text, k: text.replace("      - op: add_note\n", f"      - op: add_note_{k}\n", 1)),
]


def metric(port, name, label=None):
    """A sample of /metrics (0 when absent)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    want = name + (f'{{result="{label}"}}' if label else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def write(path, text, by_rename):
    if by_rename:
        tmp = path + ".tmp-save"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("database", choices=["sqlite", "postgres"], nargs="?", default="sqlite")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--sims", required=True)
    ap.add_argument("--root", default=".")
    ap.add_argument("--reloads", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0, help="webhooks per second, steady")
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--postgres-url", default=os.environ.get(
        "MAPPER_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1/test"))
    args = ap.parse_args()
    started = time.time()

    work = tempfile.mkdtemp(prefix="mapper-reload-")
    mappings = copy_mappings(args.root, work)
    target = os.path.join(mappings, MAPPING_FILE)
    with open(target, encoding="utf-8") as f:
        original = f.read()
    if DESCRIPTION not in original:
        fail(f"the feedback mapping's description in {target} changed; update DESCRIPTION")
    sims = subprocess.Popen([args.sims], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sim_env = json.loads(sims.stdout.readline())
    if args.database == "sqlite":
        database = f"sqlite://{work}/mapper.db"
    else:
        name = f"mapper_reload_{os.getpid()}"
        admin = args.postgres_url.rsplit("/", 1)[0] + "/postgres"
        for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
            subprocess.run(["psql", "-q", admin, "-c", sql], check=True, capture_output=True)
        database = args.postgres_url.rsplit("/", 1)[0] + "/" + name
    env = dict(os.environ)
    env.update(TOKENS)
    env.update(sim_env)
    env.setdefault("RUST_LOG", "warn")
    port = free_port()
    serve = Serve(args.bin, mappings, database, port, env, os.path.join(work, "serve.log"))
    serve.start()

    # Enough distinct people that the stream is never one customer's queue.
    n_max = 10_000_000
    sc_customers, sm_people = 500, 200
    lock = threading.Lock()
    acked, answers, failed = set(), {}, []
    next_index = [0]
    stop = threading.Event()
    pause = args.senders / args.rate

    def sender():
        conn = None
        while not stop.is_set():
            t0 = time.time()
            with lock:
                i = next_index[0]
                next_index[0] += 1
            path, ctype, body = webhook(i, sc_customers, sm_people)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", path, body=body, headers={"content-type": ctype})
                r = conn.getresponse()
                r.read()
                code = r.status
            except OSError as e:
                code, conn = 0, None
                with lock:
                    failed.append((i, repr(e)))
            with lock:
                answers[code] = answers.get(code, 0) + 1
                if code in (200, 202):
                    acked.add(i)
                elif code:
                    failed.append((i, code))
            time.sleep(max(0.0, pause - (time.time() - t0)))

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(args.senders)]
    for t in threads:
        t.start()

    outcomes = {"valid applied": 0, "broken refused": 0, "wrong outcome": 0, "no reaction": 0}
    wrong = []
    for k in range(args.reloads):
        before_ok = metric(port, "mapper_config_reloads_total", "ok")
        before_failed = metric(port, "mapper_config_reloads_total", "failed")
        valid = k % 2 == 0
        if valid:
            text = original.replace(DESCRIPTION, DESCRIPTION.replace(
                "last_activity.", f"last_activity (set {k})."), 1)
            kind = "valid"
        else:
            kind, breaker = BROKEN[(k // 2) % len(BROKEN)]
            text = breaker(original, k)
            if text == original:
                fail(f"the {kind} breakage no longer applies to {target}")
        write(target, text, by_rename=(k % 4) >= 2)
        deadline = time.time() + 15
        while time.time() < deadline:
            ok = metric(port, "mapper_config_reloads_total", "ok") - before_ok
            bad = metric(port, "mapper_config_reloads_total", "failed") - before_failed
            if ok + bad >= 1:
                break
            time.sleep(0.02)
        if ok + bad == 0:
            outcomes["no reaction"] += 1
            wrong.append((k, kind, "no reload within 15 s"))
        elif valid and ok >= 1 and bad == 0:
            outcomes["valid applied"] += 1
        elif not valid and bad >= 1 and ok == 0:
            outcomes["broken refused"] += 1
        else:
            outcomes["wrong outcome"] += 1
            wrong.append((k, kind, f"ok +{ok:.0f}, failed +{bad:.0f}"))
    # The last set written is the one that must serve from now on.
    if args.reloads % 2 == 0:
        write(target, original, by_rename=False)
        time.sleep(1)
    last_ok = metric(port, "mapper_config_last_reload_ok")
    stop.set()
    for t in threads:
        t.join()

    deadline = time.time() + 600
    states, others = status(args.bin, database, env) or ({}, {})
    final = ("delivered", "dead", "unmapped", "echo", "stale")
    while time.time() < deadline:
        states, others = status(args.bin, database, env) or (states, others)
        if states and all(s in final for s in states):
            break
        time.sleep(1)
    sims.stdin.write("report\n")
    sims.stdin.flush()
    report = json.loads(sims.stdout.readline())
    serve.stop()
    sims.stdin.write("quit\n")
    sims.stdin.flush()
    sims.wait(timeout=10)

    stored = sum(states.values())
    delivered = states.get("delivered", 0)
    applied = set(report["markers"])
    lost = sorted(i for i in acked if i not in applied)
    duplicated = len(report["duplicates"])
    print(
        f"reload-under-load {args.database}: {args.reloads} reloads ({outcomes['valid applied']} valid "
        f"applied, {outcomes['broken refused']} broken refused, {outcomes['wrong outcome']} wrong, "
        f"{outcomes['no reaction']} unseen), {sum(answers.values())} webhooks posted, "
        f"{len(failed)} failed, acknowledged {len(acked)}, stored {stored}, delivered {delivered}, "
        f"applied {len(applied)}, lost {len(lost)}, duplicated {duplicated}, "
        f"last_reload_ok {last_ok:.0f}, states {states}, {time.time() - started:.0f} s"
    )
    bad = []
    if wrong:
        bad.append(f"reloads with the wrong outcome: {wrong[:20]}")
    if failed:
        bad.append(f"failed requests: {failed[:20]}")
    if lost:
        bad.append(f"lost: {lost[:20]}")
    if duplicated:
        bad.append(f"applied twice: {dict(list(report['duplicates'].items())[:20])}")
    if stored != len(acked) or delivered != len(acked):
        bad.append(f"stored {stored} / delivered {delivered} differ from acknowledged {len(acked)}")
    if n_max <= next_index[0]:
        bad.append("ran out of markers")
    for line in bad:
        print(f"  {line}", file=sys.stderr)
    if bad:
        print(f"  serve's log: {work}/serve.log", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if args.database == "postgres":
        subprocess.run(["psql", "-q", admin, "-c", f"DROP DATABASE IF EXISTS {name}"],
                       check=False, capture_output=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
