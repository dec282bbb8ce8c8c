#!/usr/bin/env python3
"""Replica test of `mapper serve` (issue #11): several `serve` processes on
one PostgreSQL database, one GHL location with GHL's real rate limit, each
person arriving from two sources at once on different replicas, one replica
SIGKILLed midway and restarted, then everything counted.

Run through scripts/replica-test.sh, which builds the binaries. Python 3.11
standard library only.

What it does:
1. starts the simulators as a process of their own (examples/crash_sims
   --ghl-limit --allow-duplicates): GHL answers 429 beyond 100 requests per
   10 s, and its location allows duplicate contacts, so a person created
   twice shows as two contacts (instead of the second create being refused
   with the first's id);
2. starts R `mapper serve` on one PostgreSQL database (a database of its
   own, created and dropped) with the shipped mappings unchanged: GHL's
   client-side pace (100 per 10 s per location) stays on, and is shared by
   the replicas through the database;
3. posts E webhooks for P people (phone +1 415 7xx xxxx, email
   rep<p>@example.com). Each person first arrives from two sources at the
   same moment on two different replicas: a Sticky Cards FeedbackCreatedEvent
   (customer cus_rep<p>) to one, a SignalMind form submission with the same
   phone and email to another. Then the person's other events (Sticky Cards
   feedback and failed payments, one in five a SignalMind form) go to
   random replicas, one after the other: each is posted once the previous
   one of that person is acknowledged, so their order is known. Every
   webhook carries a marker `cm-<i>` that the shipped mappings put into a
   GHL note; posting is paced (--post-rate);
4. SIGKILLs one replica once half the webhooks are acknowledged and
   restarts it on the same address; a webhook that got no answer, or a
   refusal to store (503/429), is posted again to the next replica until it
   is acknowledged (202, or 200 `duplicate`: stored before);
5. waits until every stored event is final, then counts: acknowledged,
   stored, delivered, dead (`mapper status`); on the simulator: requests by
   status (429s), contacts sharing a phone or email (people created twice),
   markers on more than one note (applied twice), acknowledged markers on
   no note (lost), and per contact whether the Sticky Cards markers come in
   the order they were posted (per-customer order).

Prints the figures and exits 1 on any failed figure, 2 when it cannot run.
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
    "STICKYCARDS_WEBHOOK_TOKEN": "replica-sc-token",
    "SIGNALMIND_WEBHOOK_TOKEN": "replica-sm-token",
    "SLICKTEXT_WEBHOOK_SECRET": "replica-st-secret",
    "GHL_WORKFLOW_WEBHOOK_TOKEN": "replica-wf-token",
}

RUN_START = int(time.time())
WEBHOOK_SOURCES = ("stickycards", "signalmind")
FINAL = ("delivered", "dead", "unmapped", "echo", "stale")


def fail(message):
    print(f"replica-test: {message}", file=sys.stderr)
    sys.exit(2)


def phone_of(p):
    return f"+1 415 {700 + p // 10000:03d} {p % 10000:04d}"


def e164_of(p):
    return f"+1415{700 + p // 10000:03d}{p % 10000:04d}"


def email_of(p):
    return f"rep{p}@example.com"


def webhook(i, p, kind):
    """Webhook i of person p: (path, body). Its marker is cm-<i>.

    kind: "feedback" or "failed" (Sticky Cards), "form" (SignalMind)."""
    mark = f"cm-{i}"
    # A distinct time per webhook (Sticky Cards' de-duplication key is
    # customer, card and time), increasing with i, recent: an old last
    # activity would make the shipped inactivity schedule add events.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(RUN_START - 86_400 + i))
    if kind == "form":
        body = {
            "PageId": 100 + p,
            "DomainId": 7,
            "PageName": f"contact page {mark}",
            "DomainName": "shop.example.com",
            "Fields": [
                {"Name": "Name", "Value": f"Rep{p} Person"},
                {"Name": "Email", "Value": email_of(p)},
                {"Name": "Phone", "Value": phone_of(p)},
            ],
            "SubmitDateUtc": stamp,
            "EventTypeCode": "F",
            "EventTypeDescription": "Form submit",
        }
        return f"/webhooks/signalmind?token={TOKENS['SIGNALMIND_WEBHOOK_TOKEN']}", body
    body = {
        "timestamp": stamp,
        "customer_id": f"cus_rep{p}",
        "card_id": f"card_rep{p}",
        "email": email_of(p),
        "phone_number": phone_of(p),
        "first_name": f"Rep{p}",
        "last_name": "Person",
        "card": {"id": f"card_rep{p}", "status": "installed", "balance": 100 + i % 50,
                 "installed_date": "2025-03-03T14:10:45Z"},
    }
    if kind == "feedback":
        body["event_type"] = "FeedbackCreatedEvent"
        body["feedback"] = {"rating": 1 + i % 5, "comment": f"comment {mark}"}
    else:
        body["event_type"] = "PaymentCompletedFailedEvent"
        body["payment"] = {"id": f"pay_{i}", "amount": 10 + i % 90, "currency": "USD",
                           "description": f"order {mark}", "failure_reason": "card_declined"}
    return f"/webhooks/stickycards?token={TOKENS['STICKYCARDS_WEBHOOK_TOKEN']}", body


def plan(people, events, rng):
    """Every webhook: [(i, person, kind, round)], i in posting order.

    Round 0: each person's pair (Sticky Cards feedback, SignalMind form).
    Then the other events, one round at a time, spread over the people."""
    out = []
    order = list(range(people))
    rng.shuffle(order)
    for p in order:
        out.append((len(out), p, "feedback", 0))
        out.append((len(out), p, "form", 0))
    extra = max(0, events - 2 * people)
    rounds = {}
    for k in range(extra):
        p = rng.randrange(people)
        rounds[p] = rounds.get(p, 0) + 1
    by_round = {}
    for p, n in rounds.items():
        for r in range(1, n + 1):
            by_round.setdefault(r, []).append(p)
    for r in sorted(by_round):
        ps = by_round[r]
        rng.shuffle(ps)
        for p in ps:
            roll = rng.random()
            kind = "form" if roll < 0.2 else ("feedback" if roll < 0.6 else "failed")
            out.append((len(out), p, kind, r))
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """One `mapper serve` replica, restarted on the same address."""

    def __init__(self, name, binary, mappings, database, port, workers, env, log_path):
        self.name = name
        self.args = [binary, "serve", "--mappings", mappings, "--listen", f"127.0.0.1:{port}",
                     "--database", database, "--workers", str(workers)]
        self.env = env
        self.port = port
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=self.log)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                fail(f"{self.name} exited with {self.proc.returncode} at start; see {self.log_path}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        fail(f"{self.name} did not answer within 120 s; see {self.log_path}")

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
    """Stored events by state, from `mapper status`: (webhooks', others')."""
    out = subprocess.run([binary, "status", "--database", database, "--format", "json"],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    by_state, others = {}, {}
    for c in json.loads(out.stdout)["by_event"]:
        into = by_state if c["source"] in WEBHOOK_SOURCES else others
        into[c["state"]] = into.get(c["state"], 0) + c["count"]
    return by_state, others


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="the mapper binary")
    ap.add_argument("--sims", required=True, help="the crash_sims example binary")
    ap.add_argument("--root", default=".", help="the checkout (mappings/, schemas/)")
    ap.add_argument("--people", type=int, default=300)
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8, help="--workers of each replica")
    ap.add_argument("--senders", type=int, default=32, help="posting threads")
    ap.add_argument("--post-rate", type=float, default=20.0,
                    help="webhooks posted per second (a pair counts two)")
    ap.add_argument("--kill-at", type=float, default=0.5,
                    help="SIGKILL a replica once this share of the webhooks is acknowledged")
    ap.add_argument("--down", type=float, default=2.0, help="seconds the killed replica stays down")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--postgres-url", default=os.environ.get(
        "MAPPER_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1/test"))
    ap.add_argument("--settle-timeout", type=int, default=3600,
                    help="seconds to wait for every event to be final")
    ap.add_argument("--keep-database", action="store_true",
                    help="keep the database after a failed run (to look into it)")
    args = ap.parse_args()
    if args.replicas < 2:
        fail("--replicas must be at least 2 (two sources at once on different replicas)")
    if args.events < 2 * args.people:
        fail("--events must be at least 2 × --people (each person's pair)")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    if shutil.which("psql") is None:
        fail("psql not found")
    work = tempfile.mkdtemp(prefix="mapper-replica-")
    mappings = os.path.join(os.path.abspath(args.root), "mappings")
    name = f"mapper_replica_{os.getpid()}"
    base = args.postgres_url.rsplit("/", 1)[0]
    admin = base + "/postgres"
    for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
        r = subprocess.run(["psql", "-q", admin, "-c", sql], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"PostgreSQL at {base}: {r.stderr.strip()}")
    database = base + "/" + name

    sims = subprocess.Popen([args.sims, "--ghl-limit", "--allow-duplicates"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sim_env = json.loads(sims.stdout.readline())

    env = dict(os.environ)
    env.update(TOKENS)
    env.update(sim_env)
    env.setdefault("RUST_LOG", "warn")
    replicas = [Serve(f"replica {k}", args.bin, mappings, database, free_port(), args.workers, env,
                      os.path.join(work, f"serve-{k}.log"))
                for k in range(args.replicas)]
    # The first one migrates the database; the others then start at once.
    for s in replicas:
        s.start()

    webhooks = plan(args.people, args.events, rng)
    n = len(webhooks)
    acked = [False] * n
    done = [threading.Event() for _ in range(n)]  # acknowledged (or given up)
    previous = {}  # i → the index the person's webhook i waits for
    last_of = {}
    sc_markers = {}  # person → Sticky Cards markers in posting order
    for i, p, kind, r in webhooks:
        if r > 0:
            previous[i] = last_of[p]
        last_of[p] = i
        if kind != "form":
            sc_markers.setdefault(p, []).append(i)
    answers = {}
    unexpected = []
    lock = threading.Lock()
    reposts = [0]
    acked_count = [0]
    posted_slots = [0]
    t0 = time.time()

    def pace(count):
        """Waits for `count` posting slots of --post-rate."""
        with lock:
            slot = posted_slots[0]
            posted_slots[0] += count
        wait = t0 + slot / args.post_rate - time.time()
        if wait > 0:
            time.sleep(wait)

    def post(i, first_replica, conns, barrier=None):
        """Posts webhook i until acknowledged, from `first_replica` on."""
        _, p, kind, _ = webhooks[i]
        path, body = webhook(i, p, kind)
        data = json.dumps(body).encode()
        k = first_replica
        tries = 0
        if barrier is not None:
            barrier.wait()
        while True:
            tries += 1
            s = replicas[k]
            try:
                conn = conns.get(k)
                if conn is None:
                    conn = conns[k] = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
                conn.request("POST", path, body=data, headers={"content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except OSError:
                code = 0
                conns.pop(k, None)
            with lock:
                answers[code] = answers.get(code, 0) + 1
                if tries > 1:
                    reposts[0] += 1
            if code in (200, 202):
                with lock:
                    acked[i] = True
                    acked_count[0] += 1
                break
            if code not in (0, 429, 503):
                with lock:
                    unexpected.append((i, code))
                break
            # No answer or no room: the next replica (a load balancer's retry).
            k = (k + 1) % len(replicas)
            time.sleep(0.05)
        done[i].set()

    jobs = []  # ("pair", i) or ("one", i)
    for i, p, kind, r in webhooks:
        if r == 0 and kind == "feedback":
            jobs.append(("pair", i))
        elif r > 0:
            jobs.append(("one", i))
    next_job = [0]

    def sender(seed_k):
        local = random.Random(seed_k)
        conns = {}
        while True:
            with lock:
                j = next_job[0]
                next_job[0] += 1
            if j >= len(jobs):
                return
            what, i = jobs[j]
            if what == "pair":
                # Two sources at the same moment on two different replicas.
                a = local.randrange(len(replicas))
                b = (a + 1 + local.randrange(len(replicas) - 1)) % len(replicas)
                pace(2)
                barrier = threading.Barrier(2)
                other = threading.Thread(target=post, args=(i + 1, b, {}, barrier), daemon=True)
                other.start()
                post(i, a, conns, barrier)
                other.join()
            else:
                done[previous[i]].wait()
                pace(1)
                post(i, local.randrange(len(replicas)), conns)

    senders = [threading.Thread(target=sender, args=(seed + k,), daemon=True)
               for k in range(args.senders)]
    for t in senders:
        t.start()

    # One replica SIGKILLed midway, restarted on the same address.
    victim = rng.randrange(len(replicas))
    killed_at = None
    while acked_count[0] < args.kill_at * n and any(t.is_alive() for t in senders):
        time.sleep(0.05)
    killed_at = time.time() - t0
    replicas[victim].kill()
    time.sleep(args.down)
    replicas[victim].start()
    restarted_at = time.time() - t0
    for t in senders:
        t.join()
    posted_s = time.time() - t0

    deadline = time.time() + args.settle_timeout
    states, others = status(args.bin, database, env) or ({}, {})
    while time.time() < deadline:
        states, others = status(args.bin, database, env) or (states, others)
        if (sum(states.values()) >= sum(acked) and all(s in FINAL for s in states)
                and all(s in FINAL for s in others)):
            break
        time.sleep(1)
    drained_s = time.time() - t0
    sims.stdin.write("report\n")
    sims.stdin.flush()
    report = json.loads(sims.stdout.readline())
    # The drain as GHL saw it: its last request, from the first post. (The
    # wait above may end late when `mapper status` finds no free connection.)
    last_call_s = time.time() - t0 - (report["now_ms"] - report["last_request_ms"]) / 1000.0
    for s in replicas:
        s.stop()
    sims.stdin.write("quit\n")
    sims.stdin.flush()
    sims.wait(timeout=10)

    acknowledged = sum(acked)
    stored = sum(states.values())
    delivered = states.get("delivered", 0)
    dead = states.get("dead", 0)
    requests = report["requests"]
    ghl_calls = sum(requests.values())
    throttled = requests.get("429", 0)
    floor_s = ghl_calls / 10.0
    applied = set(report["markers"])
    lost = [i for i in range(n) if acked[i] and i not in applied]
    twice = report["duplicates"]
    # People created more than once: contacts sharing the person's phone or
    # email, and people whose markers sit on more than one contact.
    person_of = {i: p for i, p, _, _ in webhooks}
    contacts_of = {}
    order_violations = []
    stray = []
    for c in report["by_contact"]:
        ps = {person_of[m] for m in c["markers"] if m in person_of}
        for p in ps:
            contacts_of.setdefault(p, []).append(c["id"])
        if len(ps) > 1:
            stray.append((c["id"], sorted(ps)))
        # Per-customer order: the Sticky Cards markers of each person on
        # this contact, in note order, must be in posting order.
        for p in ps:
            seen = [m for m in c["markers"] if person_of.get(m) == p and webhooks[m][2] != "form"]
            if seen != sorted(seen):
                order_violations.append((p, c["id"], seen))
    duplicated_people = sorted(p for p, cs in contacts_of.items() if len(cs) > 1)
    same_phone = report["same_phone"]
    same_email = report["same_email"]

    print(f"replica-test: {args.replicas} replicas on PostgreSQL, {args.people} people, "
          f"{n} webhooks, seed {seed}")
    print(f"  posted in {posted_s:.0f} s (re-posted {reposts[0]} times after no answer or "
          f"503/429), answers {dict(sorted(answers.items()))}")
    print(f"  replica {victim} SIGKILLed at {killed_at:.1f} s, restarted at {restarted_at:.1f} s")
    print(f"  acknowledged {acknowledged}, stored {stored}, delivered {delivered}, dead {dead}, "
          f"states {states}, other events {others}")
    print(f"  drain {last_call_s:.0f} s from the first post to GHL's last call ({last_call_s - posted_s:.0f} s "
          f"after the last post; all final seen at {drained_s:.0f} s); GHL calls {ghl_calls} → rate-limit floor {floor_s:.0f} s "
          f"(100 per 10 s); GHL answers {dict(sorted(requests.items()))}")
    print(f"  429s {throttled}, contacts {report['contacts']} for {args.people} people, "
          f"people created twice {len(duplicated_people)} (phones on >1 contact {len(same_phone)}, "
          f"emails {len(same_email)}), applied twice {len(twice)}, lost {len(lost)}, "
          f"order violations {len(order_violations)}, unmarked notes {report['unmarked']}")
    bad = []
    if throttled:
        bad.append(f"{throttled} × 429 from GHL, the first: {report['throttled'][:5]}")
    if duplicated_people or same_phone or same_email or report["contacts"] != args.people:
        bad.append(f"people created twice: {duplicated_people[:20]}; phones {dict(list(same_phone.items())[:10])}; "
                   f"emails {dict(list(same_email.items())[:10])}; {report['contacts']} contacts")
    if twice:
        bad.append(f"applied more than once: {dict(list(twice.items())[:20])}")
    if lost:
        bad.append(f"lost (acknowledged, never applied): markers {lost[:20]}")
    if order_violations:
        bad.append(f"order violations (person, contact, markers): {order_violations[:5]}")
    if stray:
        bad.append(f"contacts holding several people's notes: {stray[:5]}")
    if unexpected:
        bad.append(f"unexpected answers: {unexpected[:20]}")
    if acknowledged != n:
        bad.append(f"{n - acknowledged} webhooks never acknowledged")
    if stored != acknowledged or delivered != acknowledged or dead:
        bad.append(f"stored {stored} / delivered {delivered} / dead {dead} against acknowledged {acknowledged}")
    if report.get("refused"):
        print(f"  other GHL refusals (not failures by themselves), the first: {report['refused'][:3]}")
    if report["unmarked"]:
        bad.append(f"{report['unmarked']} notes without a marker")
    for line in bad:
        print(f"  FAIL {line}", file=sys.stderr)
    if bad:
        with open(os.path.join(work, "report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f)
        print(f"  replicas' logs: {work}/serve-*.log, the simulator's report: {work}/report.json"
              + (f", database {database} kept" if args.keep_database else ""), file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if not (bad and args.keep_database):
        subprocess.run(["psql", "-q", admin, "-c", f"DROP DATABASE IF EXISTS {name}"],
                       check=False, capture_output=True)
    print("replica-test: " + ("FAILED" if bad else "passed"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
