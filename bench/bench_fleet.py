#!/usr/bin/env python3
"""Benchmark (issue 16): a fleet of simulated leaves on one real root: idle cost, detection, storms, listings.

Stands up a root cluster (auth + proxy, one real ``gatehouse start`` process on free
127.0.0.1 ports, SQLite) and, in this process, ``--leaves`` simulated leaves. Each leaf
has its own host CA and name (``simNNNN.fleet.test``), joins through the root proxy's
public trust handshake (``/webapi/trustedclusters/validate`` with a real token), and
holds a real reverse tunnel with the leaf proxy's own code (``tunnel.agent.RootLink``:
the same dialling, SSH server end and heartbeats as a leaf proxy), presenting a proxy
host certificate signed by its host CA. What a leaf proxy would otherwise get from its
own auth service (its cluster cache, audit log, status reports) is a small stand-in
here: this simulates the network side of a leaf, not its auth. asyncssh is tuned as in
the agent (``sshtuning.install``), so the bytes on the wire are a leaf proxy's.

Measured, per heartbeat mode (``default``, then ``low_bandwidth``, the same leaves
redialling in the other mode):

* ``idle_bytes_per_leaf_day``: bytes at the IP level (IP and TCP headers included) on
  the tunnel port, both directions, counted by two iptables rules in ``OUTPUT`` on
  ``lo`` (comment ``gatehouse-bench-fleet-PID``), over ``--idle-seconds`` of idle
  fleet split into ``--windows`` equal windows (reported as min / median / max of the
  windows), scaled to a day and divided by the number of leaves;
* ``backend_writes_per_s``: the root's storage revision counter (SQLite ``meta``) over
  the same windows: every write auth made (presence reports, the proxy's own liveness
  heartbeat, expiries), the figure that per-heartbeat reporting made grow with the
  fleet;
* the root process's RSS and CPU (percent of one core) over the windows, and this
  simulator's own CPU and RSS, so the root's figures can be read apart from it;
  the load average at the start and end of each mode.

Then, once per run:

* ``offline_detection_s`` per mode: one leaf's tunnel goes silent (its packets dropped
  both ways by iptables, so neither end says goodbye) until the root's API shows it
  offline (polled every 0.5 s);
* ``list_clusters_s``: the whole remote cluster listing through the API in pages of
  1,000, one filtered search, and ``gatectl get rc`` as a process (min / median / max of 3);
* ``reconnect_all_s``: the fleet online, the root process restarted (SIGTERM, start):
  seconds from the new root being ready until every leaf is online again.

Leaves dial ``--addresses`` loopback addresses in turn (127.0.0.1 … 127.0.0.N; the root's
tunnel listener then takes every address), so no address runs out of ports.

* ``snapshot``: what a proxy member receives: the JSON body of a full snapshot (first
  sync, or after a gap) and of the delta after one change (a leaf's labels set through
  the API), with the root's CPU per answer (a node gets no remote cluster at all:
  ``auth/snapshots.py``, ``member_needs``).

* ``real_leaf``: a real leaf site (auth, proxy and SSH node in one process, joined with
  ``gatectl create trusted_cluster``) among the simulated ones, started after the idle
  windows (its bytes are not in theirs): three ``gate ssh --cluster=real.fleet.test``
  as a root user, the whole chain (root proxy, the leaf's tunnel, its node);
* ``reconnect.gate_ssh_during_storm``: that ``gate ssh`` tried again and again during
  the reconnect storm, from the moment the real leaf is back: how many worked, how long
  they took, and the first failures with their errors.

``--forward-audit``: the leaves' trusted clusters say ``forward_audit: true`` (the root
then long-polls each over its tunnel); without it they keep their audit, and their
heartbeats say so, which costs the root nothing.

Usage: python3 bench/bench_fleet.py [--leaves N] [--idle-seconds S] [--windows W]
                                    [--modes default,low_bandwidth] [--addresses K] [--forward-audit]
                                    [--keep]
Prints one JSON document on stdout, progress on stderr. Needs root (iptables).
Targets (issue 16): <= 5 MB/day per leaf by default, <= 1 MB/day in low-bandwidth mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "agent" / "src"
sys.path.insert(0, str(SRC))

import asyncssh  # noqa: E402
import requests  # noqa: E402
import urllib3  # noqa: E402

from gatehouse import __version__, pki, sshtuning  # noqa: E402
from gatehouse.fdlimit import raise_open_files  # noqa: E402
from loopback_harness import UnixLogin  # noqa: E402
from gatehouse.member.cache import key_only  # noqa: E402
from gatehouse.sshserver import ListenerLimits  # noqa: E402
from gatehouse.tunnel.agent import RootLink  # noqa: E402
from gatehouse.wire import EXT_MEMBER_KIND, TUNNEL_PRINCIPAL, VALIDATE_PATH  # noqa: E402

ROOT = "root.fleet.test"
REAL_LEAF, REAL_NODE = "real.fleet.test", "realnode"
PASSWORD = "fleet-bench-password"
TARGETS_MB_DAY = {"default": 5.0, "low_bandwidth": 1.0}
TAG = f"gatehouse-bench-fleet-{os.getpid()}"


def log(msg: str) -> None:
    print(f"bench_fleet: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(SRC) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.pop("GATEHOUSE_CONFIG", None)
    return e


# ---------------------------------------------------------------- the sites
class Site:
    """One `gatehouse start` process with its config in TMP, and `gatectl` on it."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.data = tmp / "data"
        self.config = tmp / "gatehouse.yaml"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        logf = open(self.tmp / "gatehouse.log", "ab")  # noqa: SIM115 - the daemon keeps it
        ready = (self.tmp / "gatehouse.log").read_text(errors="replace").count("gatehouse is running") \
            if (self.tmp / "gatehouse.log").exists() else 0
        self.proc = subprocess.Popen([sys.executable, "-m", "gatehouse.cli.daemon", "start", "-c", str(self.config)],
                                     stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env=env())
        deadline = time.time() + 120
        while time.time() < deadline:
            if (self.tmp / "gatehouse.log").read_text(errors="replace").count("gatehouse is running") > ready:
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"gatehouse exited at start; see {self.tmp / 'gatehouse.log'}")
            time.sleep(0.3)
        raise SystemExit(f"gatehouse did not start within 120 s; see {self.tmp / 'gatehouse.log'}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def gatectl(self, *args, stdin: str | None = None) -> str:
        r = subprocess.run([sys.executable, "-m", "gatehouse.cli.gatectl", "-c", str(self.config), *args],
                           capture_output=True, text=True, env=env(), timeout=120, input=stdin,
                           stdin=None if stdin is not None else subprocess.DEVNULL)
        if r.returncode != 0:
            raise SystemExit(f"gatectl {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


class Root(Site):
    def __init__(self, tmp: Path, addresses: int = 1):
        super().__init__(tmp)
        self.web = f"127.0.0.1:{free_port()}"
        self.auth = f"127.0.0.1:{free_port()}"
        self.tunnel_port = free_port()
        # Several loopback addresses to dial (127.0.0.1, .2, …): the tunnel listener takes them all.
        tunnel_host = "0.0.0.0" if addresses > 1 else "127.0.0.1"
        self.tunnel_addrs = [f"127.0.0.{1 + i}:{self.tunnel_port}" for i in range(addresses)]
        self.config.write_text(
            f"gatehouse: {{nodename: rootproxy, data_dir: {self.data}, log: {{severity: INFO}}}}\n"
            f"auth_service: {{enabled: true, cluster_name: {ROOT}, listen_addr: '{self.auth}', "
            f"validate_rate: 100000}}\n"
            f"proxy_service: {{enabled: true, web_listen_addr: '{self.web}', listen_addr: '127.0.0.1:{free_port()}', "
            f"tunnel_listen_addr: '{tunnel_host}:{self.tunnel_port}'}}\n")
        self._api = None

    def api(self):
        """The root's auth API as its local admin (for listings and status polls without a process per call)."""
        if self._api is None:
            from gatehouse.client import APIClient
            from gatehouse.identity import IdentityFiles
            self._api = APIClient.for_identity(IdentityFiles(str(self.data / "admin")), [f"https://{self.auth}"])
        return self._api

    def statuses(self) -> dict[str, dict]:
        """{leaf: its status} from the API, page by page (auth/listing.py)."""
        out, after = {}, ""
        while True:
            page = self.api().get("/v1/resources/remote_cluster",
                                  params={"limit": "1000", **({"start_after": after} if after else {})})
            out.update({rc["metadata"]["name"]: rc["status"] for rc in page["items"]})
            after = page.get("next") or ""
            if not after:
                return out

    def online(self) -> dict[str, str]:
        return {name: st.get("heartbeat_mode", "") for name, st in self.statuses().items()
                if st["connection"] == "online"}

    def revision(self) -> int:
        conn = sqlite3.connect(f"file:{self.data / 'backend.sqlite'}?mode=ro", uri=True, timeout=30)
        try:
            return int(conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0])
        finally:
            conn.close()


class RealLeaf(Site):
    """A real leaf site among the simulated ones: auth, proxy and an SSH node in one process, joined
    with `gatectl create trusted_cluster`. A root user's `gate ssh` reaches its node through the
    root proxy and this leaf's tunnel, like any user's session to a leaf node."""

    def __init__(self, tmp: Path, root: Root, login: str):
        super().__init__(tmp)
        self.root, self.login = root, login
        self.gate_home = tmp / "gate"
        self.config.write_text(
            f"gatehouse: {{nodename: {REAL_NODE}, data_dir: {self.data}, insecure: true, log: {{severity: INFO}}}}\n"
            f"auth_service: {{enabled: true, cluster_name: {REAL_LEAF}, listen_addr: '127.0.0.1:{free_port()}'}}\n"
            f"proxy_service: {{enabled: true, web_listen_addr: '127.0.0.1:{free_port()}', "
            f"listen_addr: '127.0.0.1:{free_port()}', tunnel_listen_addr: '127.0.0.1:{free_port()}'}}\n"
            f"ssh_service: {{enabled: true, listen_addr: '127.0.0.1:{free_port()}'}}\n")

    def join(self, token: str, forward_audit: bool) -> None:
        """Trust the root (its role access maps to access here), and log a root user in with gate."""
        tc = self.tmp / "tc.yaml"
        tc.write_text(json.dumps({"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT}, "spec": {
            "enabled": True, "token": token, "web_proxy_addr": self.root.web, "tunnel_addr": self.root.tunnel_addrs[0],
            "forward_audit": forward_audit, "role_map": [{"remote": "access", "local": ["access"]}]}}))
        self.gatectl("create", str(tc))
        self.root.gatectl("users", "add", "fleetuser", "--roles=access", f"--logins={self.login}",
                          "--password-stdin", stdin=PASSWORD + "\n")
        r = self.gate("login", f"--proxy={self.root.web}", "--user=fleetuser", "--insecure", "--password-stdin",
                      stdin=PASSWORD + "\n")
        if r.returncode != 0:
            raise SystemExit(f"gate login at the root failed: {r.stderr.strip()}")

    def gate(self, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gatehouse.cli.gate", *args], capture_output=True, text=True,
                              env={**env(), "GATE_HOME": str(self.gate_home)}, timeout=120, input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL)

    def ssh(self) -> tuple[bool, float, str]:
        """One `gate ssh --cluster=LEAF login@node echo`: (worked, seconds, the error's last line)."""
        t0 = time.monotonic()
        r = self.gate("ssh", f"--cluster={REAL_LEAF}", f"{self.login}@{REAL_NODE}", "echo fleet-ok")
        worked = r.returncode == 0 and r.stdout.strip() == "fleet-ok"
        return worked, time.monotonic() - t0, "" if worked else (r.stderr.strip().splitlines() or ["?"])[-1][:200]


# ---------------------------------------------------------------- byte counters
class Counters:
    """Two iptables rules on lo counting the tunnel port's packets (IP level), removed at exit."""

    def __init__(self, port: int):
        self.rules = [["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port)],
                      ["OUTPUT", "-o", "lo", "-p", "tcp", "--sport", str(port)]]

    def add(self) -> None:
        for rule in self.rules:
            subprocess.run(["iptables", "-w", "-I", *rule, "-m", "comment", "--comment", TAG], check=True)

    def remove(self) -> None:
        for rule in self.rules:
            subprocess.run(["iptables", "-w", "-D", *rule, "-m", "comment", "--comment", TAG],
                           stderr=subprocess.DEVNULL, check=False)

    def bytes(self) -> int:
        out = subprocess.run(["iptables", "-w", "-L", "OUTPUT", "-v", "-n", "-x"], capture_output=True, text=True,
                             check=True).stdout
        return sum(int(line.split()[1]) for line in out.splitlines() if TAG in line)


# ---------------------------------------------------------------- simulated leaves
class _Cache:
    """What RootLink reads of a leaf proxy's cluster cache: the root's user CA, no revoked proxies, no nodes."""

    def __init__(self, name: str, root_user_ca: str, forward_audit: bool = False):
        self.cluster_name = name
        self._root_user_ca = key_only(root_user_ca)
        self._forward_audit = forward_audit

    def trusted_roots(self):
        return [{"metadata": {"name": ROOT}, "spec": {"enabled": True, "forward_audit": self._forward_audit}}]

    def user_ca(self, line: str):
        return {"cluster_name": ROOT, "local": False} if key_only(line) == self._root_user_ca else None

    def revoked_keys(self, _kind):
        return []

    def nodes(self):
        return []

    def node(self, _name):
        return None


class _Quiet:
    def emit(self, *_a, **_k):
        return None

    async def call(self, *_a, **_k):  # the leaf's own auth, which a simulated leaf does not have
        return {}


class SimLeaf:
    """One leaf: its host CA, its proxy's host key and certificate, a RootLink per run."""

    def __init__(self, name: str):
        self.name = name
        self.host_ca = pki.new_ssh_key(comment=f"{name} host CA")
        self.key = pki.new_ssh_key()
        now = int(time.time())
        cert = pki.sign_ssh_cert(self.host_ca.private_openssh, self.key.public_line, cert_type="host",
                                 key_id="proxy:simproxy", principals=[TUNNEL_PRINCIPAL, "simproxy"],
                                 valid_after=now - 60, valid_before=now + 86400,
                                 extensions={EXT_MEMBER_KIND: json.dumps("proxy")})
        self.host_keypair = (asyncssh.import_private_key(self.key.private_openssh), asyncssh.import_certificate(cert))
        self.cache: _Cache | None = None
        self.limits = ListenerLimits("simulated leaf tunnels", "proxy_service", max_startups=10, max_channels=10,
                                     max_sessions=100)
        self.audit = self.client = _Quiet()
        self.summary_interval = 30.0
        self.link: RootLink | None = None

    def join(self, web: str, token: str, forward_audit: bool = False) -> None:
        r = requests.post(f"https://{web}{VALIDATE_PATH}", verify=False, timeout=60,
                          json={"token": token, "cluster_name": self.name, "expected_root": ROOT,
                                "host_cas": [self.host_ca.public_line], "version": __version__})
        if r.status_code != 200:
            raise SystemExit(f"the handshake of {self.name} failed: {r.text[:300]}")
        self.cache = _Cache(self.name, r.json()["user_ca"], forward_audit)

    def start(self, tunnel_addr: str, mode: str) -> None:
        self.link = RootLink(self, ROOT, tunnel_addr, mode=mode)
        self.link.start()

    async def stop(self) -> None:
        if self.link:
            await self.link.stop()
            self.link = None


def own_usage() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def spread(values: list) -> dict:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}


def start_leaves(root: Root, leaves: list, mode: str) -> None:
    """Every leaf dials one of the root's loopback addresses in turn (ports per address stay plenty)."""
    for i, leaf in enumerate(leaves):
        leaf.start(root.tunnel_addrs[i % len(root.tunnel_addrs)], mode)


async def wait_online(root: Root, leaves: list, mode: str, limit: float = 600) -> float:
    """Seconds until the root shows every leaf online in MODE (polled every second through the API)."""
    t0 = time.monotonic()
    while True:
        online = await asyncio.to_thread(root.online)
        ready = sum(1 for leaf in leaves if online.get(leaf.name) == mode)
        if ready == len(leaves):
            return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            raise SystemExit(f"only {ready} of {len(leaves)} leaves came online in mode {mode} within {limit:.0f} s")
        await asyncio.sleep(1)


async def offline_detection(root: Root, leaf: SimLeaf) -> float:
    """Seconds from the moment LEAF's tunnel goes silent (its packets dropped both ways by iptables, so
    neither end says goodbye) until the root shows it offline."""
    conn = next(iter(leaf.link.links.values()))
    port = conn.get_extra_info("sockname")[1]
    # No redial meanwhile: a leaf that gave up on the silent connection would come back on a new port
    # before the root noticed; its dialling loop stops, the silent connection stays as it is.
    leaf.link._task.cancel()
    rules = [["OUTPUT", "-o", "lo", "-p", "tcp", flag, str(port), "-j", "DROP"] for flag in ("--sport", "--dport")]
    for rule in rules:
        subprocess.run(["iptables", "-w", "-I", *rule[:-2], "-m", "comment", "--comment", TAG, *rule[-2:]],
                       check=True)
    t0 = time.monotonic()
    try:
        while (await asyncio.to_thread(root.statuses))[leaf.name]["connection"] == "online":
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"{leaf.name} still online 600 s after its tunnel went silent")
            await asyncio.sleep(0.5)
        return time.monotonic() - t0
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-w", "-D", *rule[:-2], "-m", "comment", "--comment", TAG, *rule[-2:]],
                           check=False, stderr=subprocess.DEVNULL)


async def measure_mode(root: Root, leaves: list, mode: str, counters: Counters, idle: float, windows: int) -> dict:
    start_leaves(root, leaves, mode)
    online_s = await wait_online(root, leaves, mode)
    log(f"{mode}: {len(leaves)} leaves online after {online_s:.1f} s; settling 35 s (first summary), "
        f"then {idle:.0f} s idle in {windows} windows")
    await asyncio.sleep(35)
    load_start = os.getloadavg()
    per_window = idle / windows
    bytes_day, writes, root_cpu, sim_cpu = [], [], [], []
    for w in range(windows):
        b0, r0, c0, s0, t = counters.bytes(), root.revision(), root.cpu_s(), own_usage()[0], time.monotonic()
        await asyncio.sleep(per_window)
        dt = time.monotonic() - t
        b1, r1, c1, s1 = counters.bytes(), root.revision(), root.cpu_s(), own_usage()[0]
        bytes_day.append((b1 - b0) / len(leaves) / dt * 86400)
        writes.append((r1 - r0) / dt)
        root_cpu.append(100 * (c1 - c0) / dt)
        sim_cpu.append(100 * (s1 - s0) / dt)
        log(f"{mode}: window {w + 1}/{windows}: {bytes_day[-1] / 1e6:.3f} MB/day per leaf, "
            f"{writes[-1]:.2f} writes/s, root {root_cpu[-1]:.1f}% CPU")
    load_end = os.getloadavg()
    detection = await offline_detection(root, leaves[0])
    log(f"{mode}: a silent leaf shown offline after {detection:.1f} s")
    for leaf in leaves:
        await leaf.stop()
    await asyncio.sleep(3)
    return {"online_after_s": round(online_s, 1), "offline_detection_s": round(detection, 1),
            "idle_bytes_per_leaf_day": spread(bytes_day),
            "idle_mb_per_leaf_day_median": round(statistics.median(bytes_day) / 1e6, 3),
            "target_mb_per_leaf_day": TARGETS_MB_DAY.get(mode),
            "backend_writes_per_s": spread(writes),
            "root_proxy_idle_cpu_pct": spread(root_cpu),
            "simulator_cpu_pct": spread(sim_cpu),
            "root_proxy_rss_mib": round(root.rss_mib(), 1),
            "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in load_end],
            "window_s": round(per_window, 1)}


async def main_async(args, root: Root, counters: Counters, real: RealLeaf) -> dict:
    rss_before = root.rss_mib()  # the root with no tunnel yet: what each idle tunnel adds is measured from here
    token = json.loads(root.gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=2h", "--format", "json"))["token"]
    leaves = [SimLeaf(f"sim{i:04d}.fleet.test") for i in range(args.leaves)]
    t0 = time.monotonic()
    for leaf in leaves:
        await asyncio.to_thread(leaf.join, root.web, token, args.forward_audit)
    join_s = time.monotonic() - t0
    log(f"{len(leaves)} leaves joined through the handshake in {join_s:.1f} s")
    out = {"leaves": args.leaves, "forward_audit": args.forward_audit, "join_all_s": round(join_s, 1),
           "idle_seconds_per_mode": args.idle_seconds, "windows": args.windows, "modes": {}}
    for mode in args.modes.split(","):
        out["modes"][mode] = await measure_mode(root, leaves, mode, counters, args.idle_seconds, args.windows)
    out["root_proxy_rss_mib_no_tunnels"] = round(rss_before, 1)
    out["root_rss_kib_per_idle_tunnel"] = {
        m: round((v["root_proxy_rss_mib"] - rss_before) * 1024 / len(leaves), 1) for m, v in out["modes"].items()}
    out["real_leaf"] = await join_real_leaf(root, real, token, args.forward_audit)
    out["list_clusters_s"] = await asyncio.to_thread(measure_listings, root, leaves)
    out["snapshot"] = await asyncio.to_thread(measure_snapshots, root, leaves)
    log(f"snapshot: full {out['snapshot']['full_bytes']['median']} B, delta per change "
        f"{out['snapshot']['delta_bytes_per_change']['median']} B")
    out["reconnect"] = await reconnect_storm(root, leaves, real)
    out["reconnect_all_s"] = out["reconnect"]["all_online_after_ready_s"]
    out["offline_detection_s"] = {m: v["offline_detection_s"] for m, v in out["modes"].items()}
    out["backend_writes_per_s_idle"] = {m: v["backend_writes_per_s"]["median"] for m, v in out["modes"].items()}
    out["root_proxy_rss_mib"] = round(root.rss_mib(), 1)
    out["root_proxy_idle_cpu_pct"] = {m: v["root_proxy_idle_cpu_pct"]["median"] for m, v in out["modes"].items()}
    out["loopback_addresses"] = len(root.tunnel_addrs)
    cpu, rss = own_usage()
    out["simulator_rss_mib_max"] = round(rss, 1)
    out["simulator_cpu_s_total"] = round(cpu, 1)
    out["idle_bytes_per_leaf_day"] = {m: v["idle_bytes_per_leaf_day"]["median"] for m, v in out["modes"].items()}
    out["cpu_count"] = os.cpu_count()
    return out


def measure_snapshots(root: Root, leaves: list, changes: int = 20, fulls: int = 3) -> dict:
    """What a proxy member receives (the admin identity gets the same sections): the JSON body of a
    full snapshot (first sync, or after a gap) and of the delta after one change (a leaf's labels set
    through the API, as `gatectl update rc` does), with the root process's CPU per answer (per delta:
    the write and the delta together)."""
    api = root.api()
    c0 = root.cpu_s()
    full_bytes = []
    for _ in range(fulls):
        full_bytes.append(len(json.dumps(api.get("/v1/snapshot"))))
    full_cpu = (root.cpu_s() - c0) / fulls
    rev = api.get("/v1/snapshot")["revision"]
    delta_bytes, full_answers = [], 0
    c0 = root.cpu_s()
    for i in range(changes):
        api.put(f"/v1/remote_clusters/{leaves[i % len(leaves)].name}/labels", {"labels": {"bench": str(i)}})
        answer = api.get("/v1/snapshot", params={"since": str(rev), "delta": "1", "timeout": "10"})
        full_answers += not answer.get("delta")
        delta_bytes.append(len(json.dumps(answer)))
        rev = answer["revision"]
    delta_cpu = (root.cpu_s() - c0) / changes
    return {"full_bytes": spread(full_bytes), "full_root_cpu_ms": round(full_cpu * 1000, 1),
            "delta_bytes_per_change": spread(delta_bytes), "delta_root_cpu_ms_per_change": round(delta_cpu * 1000, 1),
            "changes": changes, "full_answers_among_deltas": full_answers}


def measure_listings(root: Root, leaves: list, runs: int = 3) -> dict:
    """Seconds for the whole remote cluster listing through the API (pages of 1,000), for one filtered
    search, and for `gatectl get rc` as a user runs it (a process, TLS and all): min / median / max of RUNS."""
    def timed(func) -> list:
        out = []
        for _ in range(runs):
            t0 = time.monotonic()
            func()
            out.append(time.monotonic() - t0)
        return out
    target = leaves[len(leaves) // 2].name
    api_all = timed(root.statuses)
    search = timed(lambda: root.api().get("/v1/resources/remote_cluster", params={"search": target, "limit": "10"}))
    cli = timed(lambda: root.gatectl("get", "rc", "--format", "json"))
    result = {"api_all_pages": spread(api_all), "api_search": spread(search), "gatectl_get_rc": spread(cli)}
    log(f"listings: {result}")
    return result


async def reconnect_storm(root: Root, leaves: list, real: RealLeaf) -> dict:
    """The fleet online (default mode), then the root process restarted: seconds until every leaf is back,
    from the moment the new root is ready (and from the stop), with the load average around it. All the
    while, a root user's `gate ssh` to the real leaf's node is tried again and again: how many tries
    worked once that leaf was back, and how many did not (and why)."""
    start_leaves(root, leaves, "default")
    await wait_online(root, leaves, "default")
    load_start = os.getloadavg()
    t_stop = time.monotonic()
    await asyncio.to_thread(root.stop)
    await asyncio.to_thread(root.start)
    t_ready = time.monotonic()
    storm_over = asyncio.Event()
    tries: list[dict] = []

    async def probe():
        back = None
        while not storm_over.is_set():
            if back is None and (await asyncio.to_thread(root.statuses)).get(REAL_LEAF, {}).get("connection") \
                    == "online":
                back = time.monotonic() - t_ready
            if back is not None:
                worked, took, err = await asyncio.to_thread(real.ssh)
                tries.append({"at_s": round(time.monotonic() - t_ready, 1), "ok": worked, "s": round(took, 2),
                              **({"error": err} if err else {})})
            await asyncio.sleep(0.5)
        return back

    prober = asyncio.create_task(probe())
    back = await wait_online(root, leaves, "default")
    storm_over.set()
    real_back = await prober
    failed = [t for t in tries if not t["ok"]]
    out = {"all_online_after_ready_s": round(back, 1), "all_online_after_stop_s": round(time.monotonic() - t_stop, 1),
           "root_restart_s": round(t_ready - t_stop, 1), "root_proxy_rss_mib_after": round(root.rss_mib(), 1),
           "gate_ssh_during_storm": {"real_leaf_back_after_ready_s": None if real_back is None else round(real_back, 1),
                                     "tries_after_it_was_back": len(tries), "worked": len(tries) - len(failed),
                                     "seconds": spread([t["s"] for t in tries]) if tries else None,
                                     "failed": failed[:10]},
           "loadavg_start": [round(x, 2) for x in load_start],
           "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    log(f"reconnect storm: {out}")
    for leaf in leaves:
        await leaf.stop()
    return out


async def join_real_leaf(root: Root, real: RealLeaf, token: str, forward_audit: bool, tries: int = 3) -> dict:
    """The real leaf started, joined and online at the root; then TRIES `gate ssh` to its node, idle fleet."""
    await asyncio.to_thread(real.start)
    await asyncio.to_thread(real.join, token, forward_audit)
    t0 = time.monotonic()
    while REAL_LEAF not in await asyncio.to_thread(root.online):
        if time.monotonic() - t0 > 120:
            raise SystemExit(f"the real leaf {REAL_LEAF} did not come online at the root within 120 s")
        await asyncio.sleep(1)
    results = [await asyncio.to_thread(real.ssh) for _ in range(tries)]
    if not all(worked for worked, _s, _e in results):
        raise SystemExit(f"gate ssh through the real leaf failed: {[e for _w, _s, e in results if e]}")
    out = {"gate_ssh_s": spread([took for _w, took, _e in results])}
    log(f"real leaf: {out}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leaves", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=600.0, help="idle time measured per mode")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--modes", default="default,low_bandwidth")
    parser.add_argument("--addresses", type=int, default=4,
                        help="loopback addresses the leaves dial in turn (127.0.0.1 … 127.0.0.N)")
    parser.add_argument("--forward-audit", action="store_true",
                        help="leaves forward their audit to the root (their trusted_cluster's forward_audit): the "
                             "root then long-polls each one over its tunnel; without it they keep their audit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_fleet: needs root (iptables counters)", file=sys.stderr)
        return 2
    urllib3.disable_warnings()
    raise_open_files()  # a socket per simulated tunnel, as in the agent
    # As in a leaf proxy (process.run): without it asyncssh sends an SSH_MSG_IGNORE before every packet.
    sshtuning.install()
    # SIGTERM and SIGHUP end the run through the clean-up below (root stopped, iptables rules removed).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    tmp = Path(tempfile.mkdtemp(prefix="gatehouse-bench-fleet-"))
    root = Root(tmp, args.addresses)
    counters = Counters(root.tunnel_port)
    login = UnixLogin("ghfleet", log)   # the real leaf's node logs the root user in as this account
    real = RealLeaf(tmp / "realleaf", root, login.name)
    try:
        counters.add()
        login.ensure()
        root.start()
        result = asyncio.run(main_async(args, root, counters, real))
    finally:
        real.stop()
        root.stop()
        login.remove()
        counters.remove()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
