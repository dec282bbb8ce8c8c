#!/usr/bin/env python3
"""Crash test of `mapper serve` (issue #14): webhooks at full speed, serve
SIGKILLed at random moments and restarted, then everything counted.

Run through scripts/crash-test.sh, which builds the binaries. Python 3.11
standard library only.

What it does:
1. starts the simulators as a process of their own (examples/crash_sims),
   so that they outlive every `serve` and count what it applied;
2. starts `mapper serve` on a copy of the shipped mappings (GHL's client-side
   rate limit lifted: the run measures crashes, not GHL's 10 requests/s);
3. posts N mixed webhooks (Sticky Cards feedback and failed payments,
   SignalMind form submissions; distinct bodies), each with its own marker
   `cm-<i>` that the shipped mappings put into one GHL note;
4. SIGKILLs `serve` K times at random moments (while posting and while
   delivering) and restarts it at once on the same address and database;
   a webhook that got no answer, or a refusal to store (503/429), is posted
   again until it is acknowledged (202, or 200 `duplicate`: stored before);
5. waits until every stored event is final, then counts: acknowledged,
   stored and delivered (`mapper status`), applied (distinct markers on
   GHL's notes) and duplicated (markers on more than one note).

Prints one line and exits 1 on any loss or duplicate, 2 when it cannot run.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

TOKENS = {
    "STICKYCARDS_WEBHOOK_TOKEN": "crash-sc-token",
    "SIGNALMIND_WEBHOOK_TOKEN": "crash-sm-token",
    "SLICKTEXT_WEBHOOK_SECRET": "crash-st-secret",
    "GHL_WORKFLOW_WEBHOOK_TOKEN": "crash-wf-token",
}

RUN_START = int(time.time())
WEBHOOK_SOURCES = ("stickycards", "signalmind")

GHL_RATE_LINE = "rate_limit: { requests: 100, per_seconds: 10, daily: 200000, per: location }"


def fail(message):
    print(f"crash-test: {message}", file=sys.stderr)
    sys.exit(2)


def copy_mappings(root, work):
    """The shipped mappings and schemas, GHL's client-side pace lifted."""
    for sub in ("mappings", "schemas"):
        shutil.copytree(os.path.join(root, sub), os.path.join(work, sub))
    path = os.path.join(work, "mappings", "targets", "ghl.yaml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if GHL_RATE_LINE not in text:
        fail(f"the rate limit line of {path} changed; update GHL_RATE_LINE")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(GHL_RATE_LINE, "rate_limit: { requests: 100000, per_seconds: 1, per: location }"))
    return os.path.join(work, "mappings")


def webhook(i, sc_customers, sm_people):
    """Webhook i: (path, content type, body). Its marker is cm-<i>."""
    mark = f"cm-{i}"
    kind = i % 3
    # A distinct time per webhook (Sticky Cards' de-duplication key is
    # customer, card and time), recent: an old last activity would make the
    # shipped inactivity schedule add events of its own.
    t = time.gmtime(RUN_START - 86_400 + i)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", t)
    if kind in (0, 1):
        c = (i // 3) % sc_customers
        body = {
            "timestamp": stamp,
            "customer_id": f"cus_crash{c}",
            "card_id": f"card_crash{c}",
            "email": f"crash{c}@example.com",
            "phone_number": f"+1 415 {500 + c // 10000:03d} {c % 10000:04d}",
            "first_name": f"Crash{c}",
            "last_name": "Test",
            "card": {"id": f"card_crash{c}", "status": "installed", "balance": 100 + i % 50,
                     "installed_date": "2025-03-03T14:10:45Z"},
        }
        if kind == 0:
            body["event_type"] = "FeedbackCreatedEvent"
            body["feedback"] = {"rating": 1 + i % 5, "comment": f"comment {mark}"}
        else:
            body["event_type"] = "PaymentCompletedFailedEvent"
            body["payment"] = {"id": f"pay_{i}", "amount": 10 + i % 90, "currency": "USD",
                               "description": f"order {mark}", "failure_reason": "card_declined"}
        path = f"/webhooks/stickycards?token={TOKENS['STICKYCARDS_WEBHOOK_TOKEN']}"
    else:
        p = (i // 3) % sm_people
        body = {
            "PageId": 100 + p,
            "DomainId": 7,
            "PageName": f"contact page {mark}",
            "DomainName": "shop.example.com",
            "Fields": [
                {"Name": "Name", "Value": f"Person{p} Form"},
                {"Name": "Email", "Value": f"form{p}@example.com"},
                {"Name": "Phone", "Value": f"+1 646 {600 + p // 10000:03d} {p % 10000:04d}"},
            ],
            "SubmitDateUtc": stamp,
            "EventTypeCode": "F",
            "EventTypeDescription": "Form submit",
        }
        path = f"/webhooks/signalmind?token={TOKENS['SIGNALMIND_WEBHOOK_TOKEN']}"
    return path, "application/json", json.dumps(body).encode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`mapper serve` as a child process, restarted on the same address."""

    def __init__(self, binary, mappings, database, port, env, log_path):
        self.args = [binary, "serve", "--mappings", mappings, "--listen", f"127.0.0.1:{port}",
                     "--database", database, "--workers", "8"]
        self.env = env
        self.port = port
        self.log = open(log_path, "ab")
        self.proc = None
        self.starts = 0

    def start(self):
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=self.log)
        self.starts += 1
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                fail(f"serve exited with {self.proc.returncode} at start; see {self.log.name}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        fail(f"serve did not answer within 60 s; see {self.log.name}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def status(binary, database, env):
    """Stored events by state, from `mapper status`."""
    out = subprocess.run([binary, "status", "--database", database, "--format", "json"],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    by_state, others = {}, {}
    for c in json.loads(out.stdout)["by_event"]:
        # Events of the posted sources; anything else (a schedule's) apart.
        into = by_state if c["source"] in WEBHOOK_SOURCES else others
        into[c["state"]] = into.get(c["state"], 0) + c["count"]
    return by_state, others


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("database", choices=["sqlite", "postgres"])
    ap.add_argument("--bin", required=True, help="the mapper binary")
    ap.add_argument("--sims", required=True, help="the crash_sims example binary")
    ap.add_argument("--root", default=".", help="the checkout (mappings/, schemas/)")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--senders", type=int, default=16)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--postgres-url", default=os.environ.get(
        "MAPPER_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1/test"))
    ap.add_argument("--settle-timeout", type=int, default=1200,
                    help="seconds to wait for every event to be final (PostgreSQL: a killed "
                         "process's claims wait out their 10-minute lease)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    started = time.time()

    work = tempfile.mkdtemp(prefix="mapper-crash-")
    mappings = copy_mappings(args.root, work)
    sims = subprocess.Popen([args.sims], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sim_env = json.loads(sims.stdout.readline())

    if args.database == "sqlite":
        database = f"sqlite://{work}/mapper.db"
    else:
        name = f"mapper_crash_{os.getpid()}"
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

    n = args.events
    sc_customers, sm_people = max(1, n // 40), max(1, n // 100)
    acked = [False] * n
    answers = {}  # status → count, every answer and connection failure
    unexpected = []
    lock = threading.Lock()
    next_index = [0]
    reposts = [0]
    serve_gate = threading.Event()
    serve_gate.set()

    def sender():
        conn = None
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= n:
                return
            path, ctype, body = webhook(i, sc_customers, sm_people)
            tries = 0
            while True:
                serve_gate.wait()
                tries += 1
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request("POST", path, body=body, headers={"content-type": ctype})
                    r = conn.getresponse()
                    r.read()
                    code = r.status
                except OSError:
                    code = 0
                    conn = None
                with lock:
                    answers[code] = answers.get(code, 0) + 1
                    if tries > 1:
                        reposts[0] += 1
                if code in (200, 202):
                    with lock:
                        acked[i] = True
                    break
                if code not in (0, 429, 503):
                    with lock:
                        unexpected.append((i, code))
                    break
                time.sleep(0.05)

    senders = [threading.Thread(target=sender, daemon=True) for _ in range(args.senders)]
    for t in senders:
        t.start()

    # Kills at random moments: spread over posting and delivering.
    kills = 0
    while kills < args.kills:
        time.sleep(rng.uniform(1.0, 6.0))
        serve.kill()
        kills += 1
        serve.start()
    for t in senders:
        t.join()
    posted_s = time.time() - started

    # Everything stored must end final.
    deadline = time.time() + args.settle_timeout
    states, others = status(args.bin, database, env) or ({}, {})
    final = ("delivered", "dead", "unmapped", "echo", "stale")
    while time.time() < deadline:
        states, others = status(args.bin, database, env) or (states, others)
        if states and all(s in final for s in states) and all(s in final for s in others):
            break
        time.sleep(1)
    sims.stdin.write("report\n")
    sims.stdin.flush()
    report = json.loads(sims.stdout.readline())
    serve.stop()
    sims.stdin.write("quit\n")
    sims.stdin.flush()
    sims.wait(timeout=10)

    acknowledged = sum(acked)
    stored = sum(states.values())
    delivered = states.get("delivered", 0)
    applied_markers = set(report["markers"])
    lost = [i for i in range(n) if acked[i] and i not in applied_markers]
    duplicated = len(report["duplicates"])
    extra_notes = report["unmarked"]
    customers = len({(i % 3 == 2, (i // 3) % (sm_people if i % 3 == 2 else sc_customers))
                     for i in range(n)})
    summary = (
        f"crash-test {args.database}: posted {n}, acknowledged {acknowledged} "
        f"(re-posted {reposts[0]} times after no answer or 503/429), serve SIGKILLed {kills} times, "
        f"stored {stored}, delivered {delivered}, applied {len(applied_markers)}, "
        f"lost {len(lost)}, duplicated {duplicated}, states {states}, "
        f"answers {dict(sorted(answers.items()))}, contacts {report['contacts']} of {customers}, "
        f"other events {others}, "
        f"posting {posted_s:.0f} s, total {time.time() - started:.0f} s, seed {seed}"
    )
    print(summary)
    bad = []
    if lost:
        bad.append(f"lost (acknowledged, never applied): markers {lost[:20]}")
    if duplicated:
        bad.append(f"applied more than once: {dict(list(report['duplicates'].items())[:20])}")
    if unexpected:
        bad.append(f"unexpected answers: {unexpected[:20]}")
    if acknowledged != n:
        bad.append(f"{n - acknowledged} webhooks never acknowledged")
    if stored != acknowledged or delivered != acknowledged:
        bad.append(f"stored {stored} / delivered {delivered} differ from acknowledged {acknowledged}")
    if report["contacts"] != customers:
        bad.append(f"{report['contacts']} GHL contacts for {customers} people")
    if extra_notes:
        bad.append(f"{extra_notes} notes without a marker")
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
