#!/usr/bin/env python3
"""Benchmark: a highly available root (issue 15) -- failover times and throughput, on loopback.

One invocation stands up, in temporary directories on free 127.0.0.1 ports, with the
helpers the HA tests use (agent/tests/hasite.py, agent/tests/integration/pgserver.py):

* PostgreSQL 15 from Debian (``initdb``/``pg_ctl`` as an unprivileged account), with
  ``fsync=on`` as operators run it;
* the root: 2 auth servers on that database, 2 proxies behind haproxy, node ``rootnode``;
* a leaf (auth + proxy + node ``leafnode``, one process, SQLite) trusting the root through
  haproxy, with a tunnel to each proxy;
* for the SQLite comparison, a second root of the same shape with one auth server on its
  embedded SQLite file and one proxy (its own haproxy);
* the Unix account ``ghhaPID`` that sessions log in as, deleted at exit.

Measures, in one run (JSON keys in brackets):

1. ``watch_latency_p99_ms``: ``--watch-writes`` roles written on auth0, one every 50 ms, and a
   member (rootnode's identity) long-polling auth1 for deltas: from sending the write until
   the watcher holds the change; target <= 1000 ms.
2. Throughput, each for ``--seconds`` s with ``--threads`` client threads, in ``--rounds``
   interleaved rounds (a change in the machine's load falls on every configuration alike),
   medians: password logins/s (``POST /v1/login`` with a proxy's identity, as the proxy sends
   it for ``gate login``: password check, login limits in the backend, two certificates) and
   resource writes/s (``PUT /v1/resources``, a new role each) against
   ``pg_one`` (every thread on auth0), ``pg_two`` (half on each auth server) and
   ``sqlite_one`` (the SQLite root's auth server); ratios ``two_vs_one`` and
   ``postgresql_vs_sqlite``; target PostgreSQL writes/s >= 0.5 x SQLite's. Each thread logs
   in its own user from 250 rotating client addresses, so the login limits (600 a minute per
   user and per address here) never refuse. For reference, not for the target:
   ``pg_one_async_commit``, writes with ``synchronous_commit=off``, the durability SQLite's
   WAL with ``synchronous=NORMAL`` gives (no flush at each commit).
3. ``failover.*`` with ``--sessions`` sessions running (half ``gate ssh --cluster=leaf`` to
   leafnode, half to rootnode, each waiting for a line on its input):
   * ``auth_kill_to_login_ok_s``: kill -9 of auth0 (the server every member uses first) until
     a ``gate login`` through haproxy has succeeded (attempts back to back, each a new
     process; ``login_s_before`` is one such login before the kill, for scale); target <= 5 s;
   * ``sessions_survived_auth_kill``: the fraction of sessions that answer afterwards;
     target 1.0;
   * ``leaf_online_after_auth_kill``: the root (asked through auth1) reports the leaf online
     within 30 s of the kill, with no new trust handshake;
   * ``proxy_kill_to_ssh_ok_s``: auth0 back, then kill -9 of proxy0 until
     ``gate ssh --cluster=leaf ... true`` through haproxy has succeeded (``ssh_s_before``:
     the same before the kill); target <= 5 s.
4. ``kill9_during_writes``: a writer thread on each auth server, each putting roles through its
   own server only; kill -9 of auth1 after ``--storm-seconds``; ``writes`` acknowledged,
   ``lost_acknowledged`` of them missing from the database afterwards; target 0.

Usage: .venv/bin/python bench/bench_ha.py [--rounds R] [--seconds S] [--threads T]
                                         [--sessions N] [--watch-writes W] [--quick]
(the worktree's venv: it imports gatehouse and psycopg). Needs root, PostgreSQL and haproxy.
Prints one JSON document on stdout; progress goes to stderr. Exits non-zero only when it
could not measure, never because a target was missed. Run it under
``flock /tmp/gatehouse-netns.lock``. Everything it started is stopped and its temporary
directories, database cluster and account are removed, also on Ctrl-C, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "agent", "tests")]
import loopback_harness as lh  # noqa: E402
from loopback_harness import median, r3  # noqa: E402
from conftest import Cluster  # noqa: E402
from hasite import PASSWORD, ROOT, HARoot, RoleWriters, haproxy_missing, trust_leaf  # noqa: E402
from integration.pgserver import PgServer  # noqa: E402

LEAF = "leaf.bench"
LOGIN_PREFIX = "ghha"
LOGIN = f"{LOGIN_PREFIX}{os.getpid()}"
MARKER = "gatehouse bench_ha"
HANDSHAKE = f"trust: handshake with {ROOT} succeeded"

FAILOVER_TARGET_S = 5.0
WATCH_P99_TARGET_MS = 1000.0
PG_WRITES_TARGET = 0.5      # PostgreSQL writes/s at least this fraction of SQLite's


def log(msg: str) -> None:
    print(f"[bench_ha {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank Q-th percentile (q in 0..100); None if there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))]


class Site:
    """The HA root on PostgreSQL, the leaf, and the SQLite root for the comparison."""

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.pg = PgServer(fsync=True)
        self.root: HARoot | None = None
        self.sqlite: HARoot | None = None
        self.leaf = Cluster(os.path.join(tmp, "leaf"), extra_auth=", login_rate: 600", cluster_name=LEAF,
                            node_name="leafnode", extra_general=", insecure: true")
        self.sessions: list[subprocess.Popen] = []

    def start(self, users: int) -> None:
        log("starting PostgreSQL (fsync=on)")
        self.pg.init()
        self.pg.start()
        self.dbname = self.pg.create_database()
        log("starting the root: 2 auth servers, 2 proxies, haproxy, rootnode")
        self.root = HARoot(os.path.join(self.tmp, "root"), self.pg.conn_string(self.dbname), severity="INFO").start()
        log("starting the SQLite root: 1 auth server, 1 proxy, haproxy")
        self.sqlite = HARoot(os.path.join(self.tmp, "sqlite"), "", auth_count=1, proxy_count=1, node=False,
                             severity="INFO").start()
        log("starting the leaf and its trust in the root")
        self.leaf.start()
        trust_leaf(self.root, self.leaf, os.path.join(self.tmp, "tc.yaml"))
        self.root.add_user("alice", "access", LOGIN)
        for name in [f"load{i}" for i in range(users)]:
            for root in (self.root, self.sqlite):
                root.add_user(name, "access", LOGIN)
        if lh.wait_for(lambda: self.leaf_online(1) and self.tunnels() == 2, 90, 0.2) is None:
            raise RuntimeError("the leaf did not come online with a tunnel to each root proxy within 90 s")

    def stop(self) -> None:
        for session in self.sessions:
            if session.poll() is None:
                session.kill()
        for part in (self.leaf, self.sqlite, self.root):
            if part is not None:
                part.stop()
        self.pg.destroy(mode="immediate")

    # ------------------------------------------------------------------ state
    def leaf_online(self, auth: int) -> bool:
        r = self.root.gatectl(auth, "get", "rc", "--format", "json", auth_server=self.root.auth_addrs[auth])
        items = json.loads(r.stdout) if r.returncode == 0 else []
        rc = next((i for i in items if i["metadata"]["name"] == LEAF), {})
        return rc.get("status", {}).get("connection") == "online"

    def tunnels(self) -> int:
        r = self.leaf.run_gatectl("get", f"tc/{ROOT}", "--format", "json")
        status = json.loads(r.stdout)[0]["status"] if r.returncode == 0 else {}
        return status.get("tunnels", 0) if status.get("connection") == "online" else 0

    def home(self, name: str) -> str:
        return os.path.join(self.tmp, "gate", name)

    def login(self, home: str) -> bool:
        return self.root.login(home, "alice").returncode == 0

    def ssh_leaf(self, home: str) -> bool:
        return self.root.gate(home, "ssh", f"--cluster={LEAF}", f"{LOGIN}@leafnode", "true").returncode == 0


# ---------------------------------------------------------------------- 1. watch latency
def watch_latency(root: HARoot, writes: int) -> dict:
    """Roles written on auth0, seen by a member long-polling auth1: seconds from each write's start."""
    watcher = root.member_api("node", 1)
    revision = watcher.get("/v1/snapshot")["revision"]
    started: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        nonlocal revision
        while not done.is_set():
            answer = watcher.get("/v1/snapshot", params={"since": revision, "timeout": 5, "delta": "1"}, timeout=15)
            now = time.monotonic()
            names = ([c["id"] for c in answer["changes"] if c["section"] == "roles"] if answer.get("delta")
                     else [r["metadata"]["name"] for r in answer.get("roles", [])])
            for name in names:
                seen.setdefault(name, now)
            revision = answer["revision"]
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    time.sleep(0.5)       # the watcher is waiting on auth1
    writer = root.admin_api(0)
    for i in range(writes):
        name = f"watch-{i}"
        started[name] = time.monotonic()
        writer.put("/v1/resources", {"resource": RoleWriters.role(name, i)})
        time.sleep(0.05)
    lh.wait_for(lambda: all(n in seen for n in started), 10, 0.05)
    done.set()
    thread.join(20)
    latencies = [(seen[n] - t) * 1000 for n, t in started.items() if n in seen]
    return {"writes": writes, "missed": writes - len(latencies), "p50_ms": r3(percentile(latencies, 50)),
            "p99_ms": r3(percentile(latencies, 99)), "max_ms": r3(max(latencies) if latencies else None)}


# ---------------------------------------------------------------------- 2. throughput
def rate(workers: list, seconds: float) -> tuple[float, int]:
    """(successful calls per second, errors) of the WORKERS (each a function of a call number),
    one thread each, for SECONDS."""
    counts, errors = [0] * len(workers), [0] * len(workers)
    deadline = time.monotonic() + seconds

    def run(k: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            try:
                workers[k](n)
                counts[k] += 1
            except Exception:   # noqa: BLE001 - counted, reported
                errors[k] += 1
            n += 1
    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0), sum(errors)


def login_worker(root: HARoot, auth: int, thread: int, users: int):
    from gatehouse import pki
    api = root.member_api("proxy", auth)
    ssh_pub, tls_pub = pki.new_ssh_key().public_line, pki.new_tls_key()[1]

    def one(n: int) -> None:
        api.post("/v1/login", {"user": f"load{thread % users}", "password": PASSWORD,
                               "ssh_public_key": ssh_pub, "tls_public_key": tls_pub, "ttl": 3600,
                               "client_addr": f"192.0.2.{(thread * 31 + n) % 250 + 1}"})
    return one


def write_worker(root: HARoot, auth: int, tag: str):
    api = root.admin_api(auth)

    def one(n: int) -> None:
        api.put("/v1/resources", {"resource": RoleWriters.role(f"{tag}-{n}", n)})
    return one


def throughput(site: Site, rounds: int, seconds: float, threads: int, users: int) -> dict:
    configs = {"pg_one": (site.root, lambda k: 0), "sqlite_one": (site.sqlite, lambda k: 0),
               "pg_two": (site.root, lambda k: k % 2)}
    out: dict = {kind: {name: [] for name in configs} for kind in ("logins_per_s", "writes_per_s")}
    out["writes_per_s"]["pg_one_async_commit"] = []
    errors = 0
    for rnd in range(rounds):
        for name, (root, auth_of) in configs.items():
            logins, e1 = rate([login_worker(root, auth_of(k), k, users) for k in range(threads)], seconds)
            writes, e2 = rate([write_worker(root, auth_of(k), f"tp-{name}-{rnd}-{k}") for k in range(threads)],
                              seconds)
            out["logins_per_s"][name].append(round(logins, 1))
            out["writes_per_s"][name].append(round(writes, 1))
            errors += e1 + e2
            log(f"  round {rnd + 1} {name}: {logins:.1f} logins/s, {writes:.1f} writes/s ({e1 + e2} errors)")
        # SQLite (WAL, synchronous=NORMAL) does not flush the log at each commit; PostgreSQL with
        # synchronous_commit=off is the same promise (a crash of the machine may lose the last
        # commits, never tears one), for comparing like with like. Not what the targets use.
        site.pg.query("postgres", "ALTER SYSTEM SET synchronous_commit = off")
        site.pg.query("postgres", "SELECT pg_reload_conf()")
        try:
            writes, e3 = rate([write_worker(site.root, 0, f"tp-async-{rnd}-{k}") for k in range(threads)], seconds)
        finally:
            site.pg.query("postgres", "ALTER SYSTEM RESET synchronous_commit")
            site.pg.query("postgres", "SELECT pg_reload_conf()")
        out["writes_per_s"]["pg_one_async_commit"].append(round(writes, 1))
        errors += e3
        log(f"  round {rnd + 1} pg_one with synchronous_commit=off: {writes:.1f} writes/s ({e3} errors)")
    result: dict = {"threads": threads, "seconds": seconds, "rounds": rounds, "errors": errors}
    for kind, by_config in out.items():
        med = {name: median(values) for name, values in by_config.items()}
        result[kind] = {**{name: {"median": med[name], "runs": values} for name, values in by_config.items()},
                        "two_vs_one": r3(med["pg_two"] / med["pg_one"]) if med["pg_one"] else None,
                        "postgresql_vs_sqlite": r3(med["pg_one"] / med["sqlite_one"]) if med["sqlite_one"] else None}
    writes = result["writes_per_s"]
    writes["postgresql_async_commit_vs_sqlite"] = r3(writes["pg_one_async_commit"]["median"] /
                                                     writes["sqlite_one"]["median"]) \
        if writes["sqlite_one"]["median"] else None
    return result


# ---------------------------------------------------------------------- 3. failover
def open_sessions(site: Site, count: int) -> list[subprocess.Popen]:
    home = site.home("sessions")
    if not site.login(home):
        raise RuntimeError("alice could not log in before the sessions")
    command = "echo started; read line; echo survived"
    for i in range(count):
        target = [f"--cluster={LEAF}", f"{LOGIN}@leafnode"] if i % 2 == 0 else [f"{LOGIN}@rootnode"]
        site.sessions.append(site.root.gate_popen(home, "ssh", *target, command, stdin=subprocess.PIPE))
    for session in site.sessions:
        if session.stdout.readline() != "started\n":
            raise RuntimeError(f"a session did not start: {session.stderr.read()[:300]}")
    return site.sessions


def survived(sessions: list[subprocess.Popen]) -> float:
    alive = 0
    for session in sessions:
        try:
            out, _ = session.communicate("go\n", timeout=30)
            alive += session.returncode == 0 and out == "survived\n"
        except subprocess.TimeoutExpired:
            session.kill()
    return alive / len(sessions)


def attempts_until(attempt, timeout: float) -> tuple[float | None, int]:
    """(seconds from now until ATTEMPT() first returned True, attempts made); None on timeout."""
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < timeout:
        n += 1
        if attempt():
            return time.monotonic() - t0, n
    return None, n


def failover(site: Site, sessions: int) -> dict:
    root = site.root
    handshakes = site.leaf.log_text().count(HANDSHAKE)
    t0 = time.monotonic()
    site.login(site.home("before"))
    login_before = time.monotonic() - t0
    running = open_sessions(site, sessions)
    log(f"kill -9 auth0 with {len(running)} sessions running")
    root.kill(root.auths[0])
    killed = time.monotonic()
    n = iter(range(10 ** 6))
    login_ok, login_attempts = attempts_until(lambda: site.login(site.home(f"after-auth-kill-{next(n)}")), 60)
    online = lh.wait_for(lambda: site.leaf_online(1), max(0.0, 30 - (time.monotonic() - killed)), 0.2) is not None
    fraction = survived(running)
    log(f"  login ok after {login_ok} s ({login_attempts} attempts), leaf online: {online}, "
        f"sessions survived: {fraction}")
    root.auths[0].start()
    home = site.home("ssh")
    site.login(home)
    t0 = time.monotonic()
    site.ssh_leaf(home)
    ssh_before = time.monotonic() - t0
    log("kill -9 proxy0")
    root.kill(root.proxies[0])
    ssh_ok, ssh_attempts = attempts_until(lambda: site.ssh_leaf(home), 60)
    log(f"  gate ssh --cluster=leaf ok after {ssh_ok} s ({ssh_attempts} attempts)")
    root.proxies[0].start()
    return {"auth_kill_to_login_ok_s": r3(login_ok), "login_attempts": login_attempts,
            "login_s_before": r3(login_before),
            "sessions": len(running), "sessions_survived_auth_kill": fraction,
            "leaf_online_after_auth_kill": online and site.leaf.log_text().count(HANDSHAKE) == handshakes,
            "proxy_kill_to_ssh_ok_s": r3(ssh_ok), "ssh_attempts": ssh_attempts, "ssh_s_before": r3(ssh_before)}


# ---------------------------------------------------------------------- 4. kill -9 during writes
def kill9_during_writes(site: Site, seconds: float) -> dict:
    root = site.root
    with RoleWriters(root, prefix="k9") as writers:
        time.sleep(seconds)
        log("kill -9 auth1 during the writes")
        root.kill(root.auths[1])
        time.sleep(1.0)
    acked = writers.snapshot()
    stored = {key for (key,) in site.pg.query(site.dbname, "SELECT key FROM gatehouse_items WHERE key LIKE %s",
                                              ("roles/k9-%",))}
    lost = [name for name in acked if f"roles/{name}" not in stored]
    root.auths[1].start()
    return {"writes": len(acked), "lost_acknowledged": len(lost), "failed": writers.failed,
            "by_auth1": writers.acked_by(1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved throughput rounds (default 2)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per throughput measurement (default 6)")
    ap.add_argument("--threads", type=int, default=8, help="client threads for throughput (default 8)")
    ap.add_argument("--sessions", type=int, default=6, help="sessions running through the auth kill (default 6)")
    ap.add_argument("--watch-writes", type=int, default=100, help="writes timed by the watcher (default 100)")
    ap.add_argument("--storm-seconds", type=float, default=2.0, help="writes before the kill -9 (default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s, 2 sessions, 20 watched writes")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.sessions, args.watch_writes = 1, 2.0, 2, 20
    if min(args.rounds, args.threads, args.sessions, args.watch_writes) < 1 or \
            min(args.seconds, args.storm_seconds) <= 0:
        ap.error("every count and duration must be positive")
    if os.geteuid() != 0:
        ap.error("run as root: sessions switch to the run's own Unix account")
    if haproxy_missing():
        ap.error("haproxy is not installed: apt-get install -y haproxy")

    lh.stop_on_signals(log)
    load_start = lh.loadavg()
    started = time.monotonic()
    PgServer.remove_stale()
    lh.UnixLogin.remove_stale(LOGIN_PREFIX, MARKER, log)
    login = lh.UnixLogin(LOGIN, log, own=True, comment=MARKER)
    tmp = tempfile.mkdtemp(prefix=f"gatehouse-bench-ha-{os.getpid()}-")
    users = args.threads
    site = Site(tmp)
    try:
        login.ensure()
        site.start(users)
        log(f"watch latency: {args.watch_writes} writes on auth0, a watcher on auth1")
        watch = watch_latency(site.root, args.watch_writes)
        log(f"  p99 {watch['p99_ms']} ms")
        log(f"throughput: {args.rounds} round(s), {args.threads} threads, {args.seconds} s each")
        rates = throughput(site, args.rounds, args.seconds, args.threads, users)
        fo = failover(site, args.sessions)
        storm = kill9_during_writes(site, args.storm_seconds)
    finally:
        site.stop()
        login.remove()
        shutil.rmtree(tmp, ignore_errors=True)
    writes = rates["writes_per_s"]
    result = {
        "backend": "postgresql", "postgresql": site.pg.bindir.split("/")[-2], "postgresql_fsync": True,
        "auth_servers": 2, "proxies": 2, "failover": fo, "kill9_during_writes": storm,
        "watch_latency_p99_ms": watch["p99_ms"], "watch": watch, "throughput": rates,
        "targets": {
            "failover_s": FAILOVER_TARGET_S,
            "auth_failover_met": fo["auth_kill_to_login_ok_s"] is not None
            and fo["auth_kill_to_login_ok_s"] <= FAILOVER_TARGET_S,
            "proxy_failover_met": fo["proxy_kill_to_ssh_ok_s"] is not None
            and fo["proxy_kill_to_ssh_ok_s"] <= FAILOVER_TARGET_S,
            "every_session_survived": fo["sessions_survived_auth_kill"] == 1.0,
            "no_acknowledged_write_lost": storm["lost_acknowledged"] == 0,
            "watch_p99_met": watch["p99_ms"] is not None and watch["missed"] == 0
            and watch["p99_ms"] <= WATCH_P99_TARGET_MS,
            "pg_writes_vs_sqlite_target": PG_WRITES_TARGET,
            "pg_writes_met": (writes["postgresql_vs_sqlite"] or 0) >= PG_WRITES_TARGET,
        },
        "elapsed_s": round(time.monotonic() - started, 1),
        "loadavg_start": load_start, "loadavg_end": lh.loadavg(), "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
