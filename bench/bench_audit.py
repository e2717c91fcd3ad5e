#!/usr/bin/env python3
"""Benchmark: the cost of the audit trail (issue 18, Benchmark section), in one invocation.

Three parts (``--part``, default all), every component a real process or real storage:

* ``recording``: the cost of session recording. bench_ssh.py's cluster (auth+proxy in
  one ``gatehouse start`` process, the node in a second, joined with a token), two users
  logged in with ``gate``: ``alice`` (role ``access``, recorded) and ``bob`` (a role with
  ``record_session: false``). Interleaved in the same run: session setup
  (``gate ssh … true``), upload throughput (``--mib`` MiB into ``cat >/dev/null``: input,
  which is not recorded) and download throughput (``--mib`` MiB of text out of
  ``head -c``: every byte is recorded to the node's spool and uploaded to auth). Wall
  time of fresh client processes, setup included; median of the runs.
* ``forwarding``: a root and a leaf (one ``gatehouse start`` each, the leaf's
  trusted_cluster with ``forward_audit: true``). Steady state: the leaf's node reports
  ``--steady`` events (real ``POST /v1/audit/events`` with the node's identity, 2,000 a
  call) while the root is up; events/s from the first report to the root holding the
  last one. Outage: the root is stopped, the leaf's node reports ``--buffered`` events
  (100,000 by default) and the root stays down ``--outage`` seconds more; then the root
  starts and the catch-up time is from its "gatehouse is running" line to its copy
  holding the leaf's head (read from the root's SQLite file, read only, every 0.2 s),
  split into ``tunnel_back_s`` (until the root logs the leaf's tunnel connected: the
  leaf's redial backoff, up to 30 s ±50 % after a long outage) and ``transfer_s``.
* ``search``: ``--events`` events (1,000,000 by default: 50 users, 40 event types,
  sessions of 20 events, 4 clusters' streams, spread over 30 days) linked into real
  hash chains and stored through the backend interface in SQLite (a fresh file), then
  ``--queries`` indexed searches of each kind through ``AuditStore.search`` (what the API
  runs for ``gatectl audit search``, without the HTTP hop): by user, by event, by
  session, by cluster and time range, and one page further with a cursor; p50/p99/max.

Prints one JSON document on stdout (progress on stderr), with the load average before
and after each part. Needs root (the ``recording`` part starts sshd-free gatehouse
daemons and creates the ``ghbench`` account; ``forwarding`` runs sessions-free daemons).
Run it under ``flock /tmp/gatehouse-netns.lock`` on a shared machine; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "agent", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "agent", "src"))

import loopback_harness as lh  # noqa: E402
from loopback_harness import PASSWORD, median, r3  # noqa: E402

LEAF, ROOT = "leaf.test", "root.test"


def log(msg: str) -> None:
    print(f"bench_audit: {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))]


# ======================================================================= recording
def part_recording(args) -> dict:
    import bench_ssh

    class Bench(bench_ssh.Bench):
        def time_down(self, argv: list[str], nbytes: int, env: dict) -> float:
            """Wall time of CLIENT 'yes … | head -c N' with its output thrown away (all of it recorded)."""
            t0 = time.perf_counter()
            proc = self.spawn(argv + [f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {nbytes}"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            out, err = self.finish(proc, self.run_timeout)
            dt = time.perf_counter() - t0
            if proc.returncode != 0 or len(out) != nbytes:
                raise RuntimeError(f"download failed ({proc.returncode}, {len(out)} bytes): {err.decode()[-300:]}")
            return dt

    lh.stop_on_signals(bench_ssh.log)
    bench = Bench(single_process=False)
    try:
        bench.prepare(from_source=False)
        bench.remove_stale_tmpdirs()
        bench.login.ensure()
        bench.setup_gatehouse()
        cfg = bench.path("gatehouse.yaml")
        role = bench.path("norec.json")
        bench.write(role, json.dumps({"kind": "role", "version": "v5", "metadata": {"name": "norec"},
                                      "spec": {"options": {"record_session": False},
                                               "allow": {"logins": [bench_ssh.LOGIN], "node_labels": {"*": "*"}}}}))
        bench.gatemod(["gatehouse.cli.gatectl", "-c", cfg, "create", role])
        bench.gatemod(["gatehouse.cli.gatectl", "-c", cfg, "users", "add", "bob", "--roles=norec",
                       f"--logins={bench_ssh.LOGIN}", "--password-stdin"], stdin=PASSWORD + "\n")
        env_bob = dict(bench.env, GATE_HOME=bench.path("gate-bob"))
        proxy = _proxy_of(cfg)
        subprocess.run([bench.python, "-m", "gatehouse.cli.gate", "login", f"--proxy={proxy}", "--user=bob",
                        "--insecure", "--password-stdin"], input=PASSWORD + "\n", text=True, env=env_bob,
                       check=True, capture_output=True)
        clients = {"recorded": (bench.gate_ssh, bench.env), "unrecorded": (bench.gate_ssh, env_bob)}
        for argv, env in clients.values():
            bench.time_cmd(argv, env)
        log(f"recording: setup {args.runs} runs per user")
        setup = lh.interleaved(args.runs, clients, lambda n, argv, env: bench.time_cmd(argv, env))
        nbytes = args.mib * 1024 * 1024
        log(f"recording: {args.mib} MiB up and down, {args.throughput_runs} runs per user")
        up = lh.interleaved(args.throughput_runs, clients, lambda n, argv, env: bench.time_pipe(argv, nbytes, env))
        down = lh.interleaved(args.throughput_runs, clients,
                              lambda n, argv, env: bench.time_down(argv, nbytes, env))
        spool = bench.path("data-node", "recording-spool")
        spooled = sum(os.path.getsize(os.path.join(spool, n)) for n in os.listdir(spool)) \
            if os.path.isdir(spool) else 0
    finally:
        bench.cleanup()
    mbps = {k: {c: [nbytes / w / 1e6 for w in v] for c, v in d.items()} for k, d in (("up", up), ("down", down))}
    out = {"setup_s": {c: r3(median(v)) for c, v in setup.items()},
           "setup_samples_s": {c: [r3(x) for x in v] for c, v in setup.items()}}
    for k in ("up", "down"):
        out[f"{k}_MBps"] = {c: round(median(v), 1) for c, v in mbps[k].items()}
        out[f"{k}_samples_MBps"] = {c: [round(x, 1) for x in v] for c, v in mbps[k].items()}
        out[f"{k}_cost"] = r3(1 - median(mbps[k]["recorded"]) / median(mbps[k]["unrecorded"]))
    out["setup_cost"] = r3(median(setup["recorded"]) / median(setup["unrecorded"]) - 1)
    out["spool_bytes_left_at_end"] = spooled
    out["bytes_per_run"] = nbytes
    return out


def _proxy_of(cfg_path: str) -> str:
    import yaml
    with open(cfg_path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)["proxy_service"]["web_listen_addr"]


# ======================================================================= forwarding
def part_forwarding(args) -> dict:
    from conftest import Cluster, ok, write_yaml
    from gatehouse.client import APIClient
    from gatehouse.identity import IdentityFiles

    tmp = tempfile.mkdtemp(prefix="gatehouse-bench-audit-")
    root = Cluster(os.path.join(tmp, "root"), extra_auth=", login_rate: 600", cluster_name=ROOT,
                   node_name="rootnode", ssh=False, extra_general="")
    leaf = Cluster(os.path.join(tmp, "leaf"), extra_auth=", login_rate: 600", cluster_name=LEAF,
                   node_name="leafnode", extra_general=", insecure: true")
    for c in (root, leaf):   # INFO (the readiness line), not DEBUG: the bench measures the trail, not logging
        with open(c.config_path, encoding="utf-8") as fh:
            write_yaml(c.config_path, fh.read().replace("severity: DEBUG", "severity: INFO"))
    db = os.path.join(root.data_dir, "backend.sqlite")

    def held() -> int:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                row = conn.execute("SELECT max(seq) FROM audit_events WHERE stream = ?", (LEAF,)).fetchone()
                return int(row[0] or 0)
        except sqlite3.Error:
            return 0

    def leaf_head() -> int:
        items = json.loads(ok(leaf.run_gatectl("audit", "search", "--format=json", "--limit=1",
                                               f"--cluster={LEAF}")))["items"]
        return items[0]["seq"] if items else 0

    def report(client, n: int) -> float:
        t0 = time.monotonic()
        for start in range(0, n, 2000):
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            batch = [{"event": "session.data", "uid": uuid.uuid4().hex, "time": now, "success": True,
                      "cluster_name": LEAF, "node": "leafnode", "user": f"user{i % 50}", "n": start + i}
                     for i in range(min(2000, n - start))]
            client.call("POST", "/v1/audit/events", {"events": batch})
        return time.monotonic() - t0

    def wait_held(target: int, timeout: float) -> float:
        t0 = time.monotonic()
        while held() < target:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the root held {held()} of the leaf's {target} events after {timeout}s")
            time.sleep(0.2)
        return time.monotonic() - t0

    try:
        root.start()
        leaf.start()
        token = json.loads(ok(root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                                               "--format", "json")))["token"]
        tc = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
              "spec": {"enabled": True, "token": token, "web_proxy_addr": root.web_addr, "forward_audit": True,
                       "role_map": [{"remote": "access", "local": ["access"]}]}}
        ok(leaf.run_gatectl("create", write_yaml(os.path.join(tmp, "tc.yaml"), json.dumps(tc))))
        client = APIClient.for_identity(IdentityFiles(os.path.join(leaf.data_dir, "identity", "node")),
                                        f"https://{leaf.auth_addr}")
        wait_held(1, 60)
        wait_held(leaf_head(), 60)
        log(f"forwarding: steady state, {args.steady} events")
        t0 = time.monotonic()
        report_s = report(client, args.steady)
        target = leaf_head()
        wait_held(target, 600)
        steady_s = time.monotonic() - t0
        log(f"forwarding: root down, {args.buffered} events buffered at the leaf, outage +{args.outage}s")
        root.daemon.stop()
        t_down = time.monotonic()
        buffered_report_s = report(client, args.buffered)
        time.sleep(args.outage)
        target = leaf_head()
        outage_s = time.monotonic() - t_down
        behind = target - held()
        connected = f"tunnel: leaf {LEAF} is connected"
        connects = root.log_text().count(connected)
        root.daemon.start()            # returns at its "gatehouse is running" line
        t_ready = time.monotonic()
        tunnel_back_s = None
        while held() < target:         # as wait_held, noting when the leaf's tunnel is back
            if tunnel_back_s is None and root.log_text().count(connected) > connects:
                tunnel_back_s = time.monotonic() - t_ready
            if time.monotonic() - t_ready > 1800:
                raise RuntimeError(f"the root held {held()} of the leaf's {target} events after 1800s")
            time.sleep(0.2)
        catch_up_s = time.monotonic() - t_ready
        tunnel_back_s = catch_up_s if tunnel_back_s is None else tunnel_back_s
        return {"steady": {"events": args.steady, "leaf_ingest_s": round(report_s, 2),
                           "delivered_s": round(steady_s, 2), "events_per_s": round(args.steady / steady_s)},
                "outage": {"buffered_events": behind, "outage_s": round(outage_s, 1),
                           "leaf_ingest_s": round(buffered_report_s, 1), "catch_up_s": round(catch_up_s, 1),
                           "catch_up_events_per_s": round(behind / catch_up_s),
                           "tunnel_back_s": round(tunnel_back_s, 1),
                           "transfer_s": round(catch_up_s - tunnel_back_s, 1),
                           "transfer_events_per_s": round(behind / max(catch_up_s - tunnel_back_s, 0.1))}}
    finally:
        leaf.stop()
        root.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# ======================================================================= search
async def _search(args) -> dict:
    from gatehouse import auditchain
    from gatehouse.auth.authz import Identity
    from gatehouse.auth.service import AuthService
    from gatehouse.config import parse

    tmp = tempfile.mkdtemp(prefix="gatehouse-bench-audit-search-")
    cfg = parse({"gatehouse": {"nodename": "a", "data_dir": os.path.join(tmp, "data"), "log": {"severity": "WARN"}},
                 "auth_service": {"enabled": True, "cluster_name": ROOT, "listen_addr": "127.0.0.1:3025"},
                 "audit": {"retention_interval": "8760h"}}, os.path.join(tmp, "gatehouse.yaml"))
    svc = await AuthService.open(cfg)
    rng = random.Random(18)
    streams = [ROOT, "leaf1.test", "leaf2.test", "leaf3.test"]
    events = [f"kind{i}.{verb}" for i in range(10) for verb in ("start", "end", "data", "denied")]
    users = [f"user{i}" for i in range(50)]
    t_end = time.time()
    t_start = t_end - 30 * 86400
    sids: list[str] = []
    try:
        t0 = time.monotonic()
        per_stream = args.events // len(streams)
        heads = {s: auditchain.Head() for s in streams}
        step = (t_end - t_start) / per_stream
        chunk = 5000
        for start in range(0, per_stream, chunk):
            for stream in streams:
                entries, sid = [], None
                for i in range(start, min(per_stream, start + chunk)):
                    if i % 20 == 0:
                        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                        if rng.random() < 0.01:
                            sids.append(sid)
                    ts = t_start + i * step
                    entries.append({"event": rng.choice(events), "uid": uuid.uuid4().hex,
                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".000Z",
                                    "cluster_name": stream, "success": True, "user": rng.choice(users),
                                    "sid": sid, "node": f"node{i % 200}", "login": "visitor"})
                records = auditchain.link(stream, heads[stream], entries)
                await svc.backend.audit_append(stream, heads[stream].seq, records)
                heads[stream] = auditchain.Head(records[-1].seq, records[-1].hash)
            if start % 50000 == 0:
                log(f"search: stored {start * len(streams)} events")
        build_s = time.monotonic() - t0
        admin = Identity("admin", "admin", ROOT)
        kinds = {
            "user": lambda: {"user": rng.choice(users)},
            "event": lambda: {"event": rng.choice(events)},
            "session": lambda: {"session": rng.choice(sids)},
            "cluster_since": lambda: {"cluster": rng.choice(streams), "since": "72h"},
            "user_event_range": lambda: {"user": rng.choice(users), "event": rng.choice(events),
                                         "since": "240h", "until": "120h"},
        }
        out = {}
        for name, make in kinds.items():
            times = []
            for _ in range(args.queries):
                params = dict(make(), limit="100")
                q0 = time.perf_counter()
                page = await svc.audit_store.search(admin, params)
                times.append(time.perf_counter() - q0)
                assert page["items"] or name == "user_event_range", (name, params)   # that one may match nothing
            out[name] = {"p50_ms": round(statistics.median(times) * 1000, 1),
                         "p99_ms": round(pct(times, 99) * 1000, 1), "max_ms": round(max(times) * 1000, 1)}
        times = []
        for _ in range(args.queries):
            first = await svc.audit_store.search(admin, {"user": rng.choice(users), "limit": "100"})
            q0 = time.perf_counter()
            await svc.audit_store.search(admin, {"user": first["items"][0]["user"], "limit": "100",
                                                 "cursor": first["next"]})
            times.append(time.perf_counter() - q0)
        out["next_page"] = {"p50_ms": round(statistics.median(times) * 1000, 1),
                            "p99_ms": round(pct(times, 99) * 1000, 1), "max_ms": round(max(times) * 1000, 1)}
        size = os.path.getsize(os.path.join(cfg.data_dir, "backend.sqlite"))
        return {"events": per_stream * len(streams), "backend": "sqlite", "build_s": round(build_s, 1),
                "db_MB": round(size / 1e6), "queries_per_kind": args.queries, "limit": 100, "latency": out}
    finally:
        await svc.close()
        shutil.rmtree(tmp, ignore_errors=True)


def part_search(args) -> dict:
    return asyncio.run(_search(args))


# ======================================================================= main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("recording", "forwarding", "search", "all"), default="all")
    ap.add_argument("--runs", type=int, default=10, help="session-setup runs per user (default 10)")
    ap.add_argument("--mib", type=int, default=64, help="MiB per throughput run (default 64)")
    ap.add_argument("--throughput-runs", type=int, default=5, help="throughput runs per user and way (default 5)")
    ap.add_argument("--steady", type=int, default=20000, help="events forwarded with the root up (default 20000)")
    ap.add_argument("--buffered", type=int, default=100000, help="events buffered at the leaf (default 100000)")
    ap.add_argument("--outage", type=float, default=0.0,
                    help="seconds the root stays down after the events are buffered (default 0)")
    ap.add_argument("--events", type=int, default=1000000, help="events stored for the search part (default 1e6)")
    ap.add_argument("--queries", type=int, default=200, help="searches per kind (default 200)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("run as root")
    parts = ("recording", "forwarding", "search") if args.part == "all" else (args.part,)
    result = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    for name in parts:
        before = lh.loadavg()
        t0 = time.monotonic()
        result[name] = globals()[f"part_{name}"](args)
        result[name]["elapsed_s"] = round(time.monotonic() - t0, 1)
        result[name]["load_avg"] = {"before": before, "after": lh.loadavg()}
        log(f"{name}: {json.dumps(result[name])}")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
