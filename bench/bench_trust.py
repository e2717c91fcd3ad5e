#!/usr/bin/env python3
"""Benchmark: trusted clusters (root, leaf, reverse tunnel) against the same shape in OpenSSH.

Stands up, in a temporary directory on free 127.0.0.1 ports:

* Gatehouse: a root cluster (auth + proxy, one ``gatehouse start`` process) and a
  leaf cluster (auth + proxy + node ``leafnode``, another process); user ``alice``
  (role ``access``, login ``ghtrustPID``) on the root, logged in with ``gate login``;
  the leaf maps the root role ``access`` to its own ``access``. Default settings
  (tunnel heartbeat 3 s, offline after 3 missed, log severity INFO).
* OpenSSH, the same topology: a node ``sshd``, a jump ``sshd`` on the "root", and a
  reverse tunnel ``ssh -N -R RP:127.0.0.1:NODEPORT`` from the "leaf" to the jump host;
  the client runs ``ssh -J jump -p RP ghtrustPID@127.0.0.1``. Throwaway ed25519 keys.
* The Unix account ``ghtrustPID`` (PID: the benchmark's) is created for the run and
  deleted at exit.

Both sides use aes128-gcm@openssh.com on every hop and no compression; key exchange
is left at each side's default and recorded.

Measures, in one run:

1. trust establishment: from starting ``gatectl create trusted_cluster.yaml`` on the
   leaf (fresh ``--ttl=15m`` token each run) until the root's auth API reports the
   remote cluster ``online`` (polled every ``--poll-ms`` ms with the root's admin
   identity, as ``gatectl get rc`` would); median of ``--trust-runs``, trust removed
   on both sides in between; target <= 1 s. Reference: ``ssh -N -R`` start until the
   jump host listens on the forwarded port (OpenSSH has no trust exchange).
2. session setup through the tunnel: ``gate ssh --cluster=LEAF ghtrustPID@leafnode true``
   vs ``ssh -J ... true`` through the reverse tunnel (median of ``--runs``, fresh
   client process each, one unmeasured warm-up, clients interleaved); target
   gate/openssh <= 0.6.
3. throughput: ``--mib`` MiB of zeros piped into ``... 'cat >/dev/null'`` through
   both chains (median of ``--throughput-runs``, setup included); target
   gate/openssh >= 1.5.
4. offline detection, target <= 15 s, both variants must meet it:
   * ``kill -9`` of the leaf process until the root reports the leaf offline.
     Reference: ``kill -9`` of ``ssh -R`` until the jump host stops listening on the
     forwarded port.
   * silent loss (skip with ``--no-drop``): the tunnel's packets are dropped by
     iptables rules on ``lo`` for the tunnel port (comment
     ``gatehouse-bench-trust-PID``), as when the leaf host dies or its network goes:
     only heartbeats can notice. The jump sshd uses ``ClientAliveInterval`` =
     Gatehouse's default ``tunnel_heartbeat_interval`` (3 s) and
     ``ClientAliveCountMax 3`` (``ssh -R``: ``ServerAliveInterval`` likewise);
     OpenSSH's own defaults never notice a silent peer short of TCP keepalive (hours).

Gatehouse runs from a byte-compiled copy of ``agent/src`` in the temporary directory,
as a pip-installed agent would (and unaffected by edits to ``agent/src`` during the
run); ``--from-source`` runs ``agent/src`` itself.

Usage: python3 bench/bench_trust.py [--runs N] [--mib M] [--throughput-runs K]
                                   [--trust-runs T] [--poll-ms MS] [--no-drop]
                                   [--from-source] [--quick]
Prints one JSON document on stdout; progress and a summary go to stderr. Needs root.
Exits non-zero only when it could not measure, never because a target was missed.
Server CPU time is read from one cgroup per daemon (CPU accounting only, made below
this process's own cgroup).

Everything it started (daemons, clients, their children) is stopped, the iptables
rules and cgroups it added are removed, its account is deleted and the temporary
directory is removed: at exit, on error, on Ctrl-C, SIGTERM and SIGHUP. What a run
killed with SIGKILL leaves (processes, found by its cgroups; rules; temporary
directory; account; all tagged with its pid) is removed by the next run. The machinery
it shares with bench_ssh.py (processes, cleanup, the OpenSSH baseline, the account) is in
loopback_harness.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loopback_harness as lh  # noqa: E402
from loopback_harness import AGENT_SRC, CIPHER, PASSWORD, REPO, median, r3  # noqa: E402

LOGIN_PREFIX = "ghtrust"
# An account of the run's own, deleted at exit: tests and demos on this machine manage "visitor",
# and two runs at once (or bench_ssh.py's "ghbench") never share or delete each other's account.
LOGIN = f"{LOGIN_PREFIX}{os.getpid()}"
ROOT, LEAF, NODE = "root.bench", "leaf.bench", "leafnode"
# Tags what a run makes with its pid: iptables rules (comment), temporary directory /tmp/TAG-PID-*, cgroups.
IPT_COMMENT = "gatehouse-bench-trust"
MISSED = 3                 # Gatehouse: offline after 3 missed heartbeats; OpenSSH: ClientAliveCountMax

TRUST_TARGET_S = 1.0       # absolute, lower is better
SETUP_TARGET = 0.6         # gate / openssh, lower is better
THROUGHPUT_TARGET = 1.5    # gate / openssh MB/s, higher is better
OFFLINE_TARGET_S = 15.0    # absolute, lower is better


def log(msg: str) -> None:
    print(f"bench_trust: {msg}", file=sys.stderr, flush=True)


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc/net/tcp.

    Deliberately not a connect(): every connection to the forwarded port wakes the jump sshd
    and opens a channel over the tunnel, and that activity alone postpones sshd's
    ClientAlive checks (they run only when its poll() times out), so probing by connecting
    would keep a dead tunnel "alive".
    """
    needle = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if fields[1] == needle and fields[3] == "0A":   # TCP_LISTEN
                return True
    return False


def log_times(path: str, pattern: str) -> list[float]:
    """Epoch times of the log lines (default text format, local time, ms) that contain `pattern`."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if pattern in line:
                    m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line)
                    if m:
                        out.append(time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
                                   + int(m.group(2)) / 1000)
    except OSError:
        pass
    return out


class Bench(lh.BenchRun):
    run_timeout = 300

    def __init__(self, poll_s: float) -> None:
        super().__init__(IPT_COMMENT, log, lh.UnixLogin(LOGIN, log, own=True,
                                                        comment="gatehouse bench_trust.py, deleted at exit"))
        self.poll_s = poll_s
        self.ipt_rules: list[list[str]] = []
        self._api = None
        self.trust_gen = 0

    def prepare(self, from_source: bool) -> None:
        """The agent code to run, the clients' environment, CPU accounting, Gatehouse's default heartbeat."""
        super().prepare(from_source)
        # This process reads the root's status with the agent's own API client, from the same code.
        sys.path.insert(0, self.agent_src)
        import gatehouse
        from gatehouse.config import ProxyConfig
        if not gatehouse.__file__.startswith(self.agent_src + os.sep):
            raise RuntimeError(f"gatehouse is imported from {gatehouse.__file__!r}, not from {self.agent_src}")
        self.heartbeat_s = ProxyConfig().tunnel_heartbeat_interval   # the default; OpenSSH mirrors it

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)   # the process itself, as a crash would
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # anything it left in its session (none expected)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)   # reaped only now: until then its pid (and group id) cannot be reused

    def release(self) -> None:
        """At cleanup, before the daemons are stopped: the iptables rules."""
        self.undrop()

    # ------------------------------------------------------------------ OpenSSH topology
    def setup_openssh(self) -> None:
        self.o_node, self.o_jump, self.o_rport = lh.free_ports(3)
        # sshd takes whole seconds: Gatehouse's default heartbeat, rounded up.
        self.alive_s = max(1, int(-(-self.heartbeat_s // 1)))
        base = super().setup_openssh([("sshd_node", self.o_node, ""),
                                      ("sshd_jump", self.o_jump,
                                       f"ClientAliveInterval {self.alive_s}\nClientAliveCountMax {MISSED}\n")])
        self.ssh_tunnel = base + ["-J", f"{LOGIN}@127.0.0.1:{self.o_jump}", "-p", str(self.o_rport),
                                  f"{LOGIN}@127.0.0.1"]
        self.ssh_direct = base + ["-p", str(self.o_node), f"{LOGIN}@127.0.0.1"]
        self.ssh_reverse = base + ["-N", "-o", "ExitOnForwardFailure=yes", "-o", f"ServerAliveInterval={self.alive_s}",
                                   "-o", f"ServerAliveCountMax={MISSED}",
                                   "-R", f"127.0.0.1:{self.o_rport}:127.0.0.1:{self.o_node}",
                                   "-p", str(self.o_jump), f"{LOGIN}@127.0.0.1"]

    def openssh_tunnel_up(self) -> float:
        """Start `ssh -N -R` (the leaf dialling out); seconds until the jump host accepts on the port."""
        if listening(self.o_rport):
            raise RuntimeError(f"port {self.o_rport} already accepts before the reverse tunnel started")
        t0 = time.perf_counter()
        proc = self.start("ssh_reverse", self.ssh_reverse)
        deadline = t0 + 30
        while not listening(self.o_rport):
            if proc.poll() is not None:
                raise RuntimeError(f"ssh -R exited with {proc.returncode}: {self.log_tail('ssh_reverse')}")
            if time.perf_counter() > deadline:
                raise RuntimeError("the reverse tunnel never came up")
            time.sleep(0.005)
        return time.perf_counter() - t0

    def openssh_tunnel_gone(self, timeout: float) -> float | None:
        """Seconds (from now) until the jump host stops accepting on the forwarded port."""
        return lh.wait_for(lambda: not listening(self.o_rport), timeout, self.poll_s)

    # ------------------------------------------------------------------ Gatehouse topology
    def setup_gatehouse(self) -> None:
        ra, rw, rs, rt, la, lw, ls_, lt, ln = lh.free_ports(9)
        self.root_web, self.root_tunnel_port = f"127.0.0.1:{rw}", rt
        self.root_cfg = self.path("root.yaml")
        self.leaf_cfg = self.path("leaf.yaml")
        self.write(self.root_cfg, f"""gatehouse: {{nodename: rootproxy, data_dir: {self.path('root-data')}, \
log: {{severity: INFO}}}}
auth_service: {{enabled: true, cluster_name: {ROOT}, listen_addr: 127.0.0.1:{ra}}}
proxy_service: {{enabled: true, web_listen_addr: 127.0.0.1:{rw}, listen_addr: 127.0.0.1:{rs}, \
tunnel_listen_addr: 127.0.0.1:{rt}}}
""")
        self.write(self.leaf_cfg, f"""gatehouse: {{nodename: {NODE}, data_dir: {self.path('leaf-data')}, \
insecure: true, log: {{severity: INFO}}}}
auth_service: {{enabled: true, cluster_name: {LEAF}, listen_addr: 127.0.0.1:{la}}}
proxy_service: {{enabled: true, web_listen_addr: 127.0.0.1:{lw}, listen_addr: 127.0.0.1:{ls_}, \
tunnel_listen_addr: 127.0.0.1:{lt}}}
ssh_service: {{enabled: true, listen_addr: 127.0.0.1:{ln}}}
""")
        self.start_gatehouse("root", self.root_cfg)
        self.start_gatehouse("leaf", self.leaf_cfg)
        self.wait_running("root", 0)
        self.wait_running("leaf", 0)
        self.gatectl(self.root_cfg, ["users", "add", "alice", "--roles=access", f"--logins={LOGIN}",
                                     "--password-stdin"], stdin=PASSWORD + "\n")
        with open(self.path("tc.yaml"), "w", encoding="utf-8") as f:
            json.dump({"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
                       "spec": {"enabled": True, "token": "", "web_proxy_addr": self.root_web,
                                "role_map": [{"remote": "access", "local": ["access"]}]}}, f)
        self.gate_ssh = [self.python, "-m", "gatehouse.cli.gate", "ssh", f"--cluster={LEAF}", f"{LOGIN}@{NODE}"]

    def log_count(self, name: str, pattern: str) -> int:
        """How many lines of NAME.log contain `pattern`."""
        return len(log_times(self.path(f"{name}.log"), pattern))

    def wait_running(self, name: str, seen_before: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.log_count(name, "gatehouse is running") <= seen_before:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.procs[name].returncode}:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self.log_tail(name)}")
            time.sleep(0.05)

    def gatectl(self, cfg: str, args: list[str], stdin: str | None = None) -> str:
        return self.gatemod(["gatehouse.cli.gatectl", "-c", cfg, *args], stdin)

    def api(self):
        """The root's auth API with its admin identity: what `gatectl get rc` uses, minus a process per poll."""
        if self._api is None:
            from gatehouse.client import APIClient
            from gatehouse.identity import IdentityFiles
            self._api = APIClient.for_identity(IdentityFiles(self.path("root-data", "admin")), timeout=5)
        return self._api

    def rc_connection(self) -> str | None:
        api = self.api()
        from gatehouse.errors import NotFound
        try:
            items = api.get(f"/v1/resources/remote_cluster/{LEAF}")["items"]
        except NotFound:
            return None
        return items[0]["status"]["connection"] if items else None

    def wait_rc(self, want: str | None, timeout: float) -> float | None:
        """Seconds (from now) until the root reports `want` for the leaf; None on timeout."""
        return lh.wait_for(lambda: self.rc_connection() == want, timeout, self.poll_s)

    def establish_trust(self) -> dict:
        """One `gatectl create` on the leaf with a fresh token; times until online at the root."""
        token = json.loads(self.gatectl(self.root_cfg, ["tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                                                        "--format", "json"]))["token"]
        with open(self.path("tc.yaml"), encoding="utf-8") as f:
            tc = json.load(f)
        tc["spec"]["token"] = token
        self.trust_gen += 1
        tc_path = self.path(f"tc-{self.trust_gen}.yaml")
        with open(tc_path, "w", encoding="utf-8") as f:
            json.dump(tc, f)
        if self.rc_connection() is not None:
            raise RuntimeError("the leaf is still registered at the root before the trust run")
        argv = [self.python, "-m", "gatehouse.cli.gatectl", "-c", self.leaf_cfg, "create", tc_path]
        wall0 = time.time()
        t0 = time.perf_counter()
        proc = self.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=self.env)
        created_s = None
        online_s = None
        deadline = t0 + 60
        while True:
            now = time.perf_counter()
            if created_s is None and proc.poll() is not None:
                created_s = now - t0
                if proc.returncode != 0:
                    err = self.finish(proc, 10)[1].decode(errors="replace").strip()
                    raise RuntimeError(f"gatectl create failed: {err}")
            if self.rc_connection() == "online":
                online_s = time.perf_counter() - t0
                break
            if now > deadline:
                raise RuntimeError("the leaf never came online at the root")
            time.sleep(self.poll_s)
        self.finish(proc, 60)
        if created_s is None:
            created_s = time.perf_counter() - t0   # the process exited after online was seen (an upper bound)
        # A breakdown from the daemons' own log lines (millisecond timestamps, same clock).
        def after(name: str, pattern: str) -> float | None:
            times = [t for t in log_times(self.path(f"{name}.log"), pattern) if t >= wall0 - 0.002]
            return round(times[0] - wall0, 3) if times else None
        return {"online_s": online_s, "gatectl_exit_s": created_s,
                "root_validated_s": after("root", f"trust: leaf cluster {LEAF} registered"),
                "leaf_starts_tunnel_s": after("leaf", f"tunnel: starting tunnels to root {ROOT}"),
                "leaf_tunnel_connected_s": after("leaf", f"tunnel: connected to root {ROOT}"),
                "root_tunnel_registered_s": after("root", f"tunnel: leaf {LEAF} is connected")}

    def remove_trust(self) -> None:
        waits = (("root", f"tunnel: leaf {LEAF} is disconnected", "the tunnel was not dropped after rm"),
                 ("leaf", f"tunnel: closing the tunnels to root {ROOT}", "the leaf did not stop its tunnel agent"))
        seen = [self.log_count(name, pattern) for name, pattern, _ in waits]
        self.gatectl(self.root_cfg, ["rm", f"rc/{LEAF}"])
        self.gatectl(self.leaf_cfg, ["rm", f"tc/{ROOT}"])
        for (name, pattern, failure), before in zip(waits, seen):
            if lh.wait_for(lambda: self.log_count(name, pattern) > before, 15, 0.05) is None:
                raise RuntimeError(f"{failure}:\n{self.log_tail(name)}")
        time.sleep(0.5)   # let both caches settle before the next handshake

    def gate_login(self) -> None:
        self.gatemod(["gatehouse.cli.gate", "login", f"--proxy={self.root_web}", "--user=alice", "--insecure",
                      "--password-stdin"], stdin=PASSWORD + "\n")
        cfg_text = self.gatemod(["gatehouse.cli.gate", "config"])
        with open(self.path("gate_ssh_config"), "w", encoding="utf-8") as f:
            f.write(cfg_text)
        # Stock OpenSSH through the Gatehouse proxy and tunnel (`gate config`): separates the
        # `gate` client's own cost from the servers' cost.
        self.ssh_via_gatehouse = ["ssh", "-F", self.path("gate_ssh_config"), "-o", "BatchMode=yes",
                                  "-c", CIPHER, f"{LOGIN}@{NODE}.{LEAF}"]

    # ------------------------------------------------------------------ iptables (drop variant)
    def drop_port(self, port: int) -> None:
        for direction in ("--dport", "--sport"):
            rule = ["INPUT", "-i", "lo", "-p", "tcp", direction, str(port), "-m", "comment",
                    "--comment", f"{IPT_COMMENT}-{os.getpid()}", "-j", "DROP"]
            self.ipt_rules.append(rule)   # first: an interruption right after -I must still remove it
            subprocess.run(["iptables", "-w", "-I", *rule[:1], "1", *rule[1:]], check=True, capture_output=True)

    def remove_stale_runs(self) -> None:
        """What a run killed with SIGKILL left: its temp dir and account (named after its pid, which is
        gone; its processes were stopped with its cgroups, see CpuGroups), and its iptables rules."""
        self.remove_stale_tmpdirs()
        lh.UnixLogin.remove_stale(LOGIN_PREFIX, "bench_trust", log)
        self.remove_stale_rules()

    @staticmethod
    def remove_stale_rules() -> None:
        """Drop rules a killed earlier run left behind (tagged with its pid, which is gone)."""
        res = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True)
        for line in res.stdout.splitlines():
            m = re.search(rf'--comment "?{IPT_COMMENT}-(\d+)"?', line)
            if m and line.startswith("-A INPUT ") and not os.path.exists(f"/proc/{m.group(1)}"):
                log(f"removing a rule left by an earlier run: {line}")
                subprocess.run(["iptables", "-w", "-D", *line.split()[1:]], capture_output=True, check=False)

    def undrop(self) -> None:
        for rule in reversed(self.ipt_rules):
            subprocess.run(["iptables", "-w", "-D", *rule], capture_output=True, check=False)
        self.ipt_rules.clear()

    # ------------------------------------------------------------------ clients
    def with_cpu(self, groups: dict[str, str], run):
        """(run(), CPU seconds used meanwhile): per server part (its cgroup), and by this script's
        children (the client, and `head` in throughput runs) as client_and_head."""
        before = {k: self.cg.cpu(g) for k, g in groups.items()}
        sizes = {k: len(self.cg.members(g)) for k, g in groups.items()}
        cpu0 = lh.children_cpu()
        result = run()
        # The servers' per-connection processes (sshd's, the node's session shell) may still be
        # finishing: wait until each group is back to the processes it had before the run.
        settle = time.monotonic() + 5
        while any(len(self.cg.members(g)) > sizes[k] for k, g in groups.items()) and time.monotonic() < settle:
            time.sleep(0.01)
        client_cpu = lh.children_cpu() - cpu0
        after = {k: self.cg.cpu(g) for k, g in groups.items()}
        used = {k: None if before[k] is None or after[k] is None else after[k] - before[k] for k in groups}
        used["client_and_head"] = client_cpu
        return result, used

    def openssh_negotiated(self) -> list[dict]:
        """Key exchange and cipher of each OpenSSH hop of the tunnel chain (from `ssh -v`)."""
        return self.negotiated(self.ssh_tunnel, 60)

    def gate_params(self) -> dict:
        """What the Gatehouse side offers: cipher first in its list, asyncssh's default key exchange."""
        try:
            import asyncssh
            from asyncssh.kex import get_default_kex_algs
            from gatehouse.sshparams import ENCRYPTION_ALGS
            kex = next(a.decode() for a in get_default_kex_algs() if not a.startswith(b"gss-"))
            return {"cipher": ENCRYPTION_ALGS[0], "kex": kex, "asyncssh": asyncssh.__version__}
        except Exception:   # noqa: BLE001 - informational only
            return {"cipher": "unknown"}

    def agent_code(self) -> dict:
        """Which agent code was measured: commit, whether agent/src differed from it, digest of the copy."""
        import hashlib

        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True).stdout.strip()
        digest = hashlib.sha256()
        for top, dirs, files in sorted(os.walk(self.agent_src)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(top, name)
                    digest.update(os.path.relpath(path, self.agent_src).encode() + b"\0")
                    with open(path, "rb") as fh:
                        digest.update(fh.read())
        return {"commit": git("rev-parse", "--short", "HEAD") or None,
                "agent_src_modified": bool(git("status", "--porcelain", "--", "agent/src")),
                "source_sha256": digest.hexdigest()[:12],
                "run_from": "agent/src" if self.agent_src == AGENT_SRC else "byte-compiled copy of agent/src"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="session-setup runs per client (default 10)")
    ap.add_argument("--mib", type=int, default=1024, help="MiB pushed per throughput run (default 1024)")
    ap.add_argument("--throughput-runs", type=int, default=3, help="throughput runs per client (default 3)")
    ap.add_argument("--trust-runs", type=int, default=3,
                    help="trust establishments, removed in between (default 3, at most 10)")
    ap.add_argument("--poll-ms", type=float, default=20, help="status poll interval in ms (default 20)")
    ap.add_argument("--no-drop", action="store_true", help="skip the silent-loss (iptables) offline variant")
    ap.add_argument("--from-source", action="store_true",
                    help="run gate and the daemons from agent/src as it is, not from a byte-compiled copy")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 runs, 64 MiB, 1 throughput run, 1 trust run")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.mib, args.throughput_runs, args.trust_runs = 3, 64, 1, 1
    if min(args.runs, args.mib, args.throughput_runs, args.trust_runs) < 1 or args.poll_ms <= 0:
        ap.error("--runs, --mib, --throughput-runs, --trust-runs and --poll-ms must be positive")
    if args.trust_runs > 10:
        ap.error("--trust-runs is at most 10: the root accepts 10 trust validations a minute per client "
                 "(auth_service.validate_rate)")
    if os.geteuid() != 0:
        ap.error("run as root: the OpenSSH baseline needs its own sshd and account, the silent-loss variant iptables")

    lh.stop_on_signals(log)
    bench = Bench(args.poll_ms / 1000)
    started = time.monotonic()
    load_start = lh.loadavg()
    try:
        bench.prepare(args.from_source)
        agent = bench.agent_code()
        gate_params = bench.gate_params()
        bench.remove_stale_runs()
        bench.login.ensure()
        log("starting the OpenSSH topology (node sshd, jump sshd)")
        bench.setup_openssh()
        log("starting the Gatehouse root and leaf")
        bench.setup_gatehouse()

        # 1. trust establishment (and the OpenSSH reverse tunnel coming up, for reference)
        log(f"trust establishment: {args.trust_runs} run(s)")
        trust_runs, ossh_up = [], []
        for i in range(args.trust_runs):
            if i:
                bench.remove_trust()
                bench.kill9("ssh_reverse")
                if bench.openssh_tunnel_gone(10) is None:
                    raise RuntimeError("the jump host still accepts on the forwarded port after ssh -R was killed")
            trust_runs.append(bench.establish_trust())
            ossh_up.append(bench.openssh_tunnel_up())
            log(f"  run {i + 1}: online after {trust_runs[-1]['online_s']:.3f} s "
                f"(gatectl exited at {trust_runs[-1]['gatectl_exit_s']:.3f} s); ssh -R up in {ossh_up[-1]:.3f} s")
        # For reference: what one gatectl process costs (interpreter, imports, one API call).
        t0 = time.perf_counter()
        bench.gatectl(bench.leaf_cfg, ["get", f"tc/{ROOT}"])
        gatectl_one_call_s = time.perf_counter() - t0

        # 2. session setup through the tunnel
        bench.gate_login()
        clients = {"gate": (bench.gate_ssh, bench.env), "openssh_tunnel": (bench.ssh_tunnel, None),
                   "openssh_via_gatehouse": (bench.ssh_via_gatehouse, None), "openssh_direct": (bench.ssh_direct, None)}
        for argv_, env in clients.values():   # warm-up, unmeasured
            bench.time_cmd(argv_, env)
        gh = {"root": "root", "leaf": "leaf"}   # part -> the daemon's cgroup
        parts = {"gate": gh, "openssh_via_gatehouse": gh,
                 "openssh_tunnel": {"jump_sshd": "sshd_jump", "ssh_R": "ssh_reverse", "node_sshd": "sshd_node"},
                 "openssh_direct": {"node_sshd": "sshd_node"}}
        log(f"session setup: {args.runs} runs per client")
        samples = lh.interleaved(args.runs, clients, lambda name, argv_, env: bench.with_cpu(
            parts[name], lambda: bench.time_cmd(argv_, env)))
        setup = {k: [dt for dt, _ in v] for k, v in samples.items()}
        setup_cpu = {k: [used for _, used in v] for k, v in samples.items()}
        log("  medians: " + ", ".join(f"{k} {median(v):.3f} s" for k, v in setup.items()))
        negotiated = bench.openssh_negotiated()

        # 3. throughput
        nbytes = args.mib * 1024 * 1024
        tclients = {k: v for k, v in clients.items() if k != "openssh_direct"}
        log(f"throughput: {args.mib} MiB x {args.throughput_runs} run(s) per client")

        def throughput_run(name: str, argv_: list[str], env: dict | None) -> tuple[float, dict]:
            dt, used = bench.with_cpu(parts[name], lambda: bench.time_pipe(argv_, nbytes, env))
            log(f"  {name}: {nbytes / dt / 1e6:.1f} MB/s, CPU s: "
                + ", ".join(f"{k} {'?' if v is None else f'{v:.2f}'}" for k, v in used.items()))
            return nbytes / dt / 1e6, used
        samples = lh.interleaved(args.throughput_runs, tclients, throughput_run)
        tput = {k: [mbps for mbps, _ in v] for k, v in samples.items()}
        cpu = {k: [used for _, used in v] for k, v in samples.items()}

        # 4. offline detection: kill -9
        log("offline detection: kill -9 of the leaf, then of ssh -R")
        if bench.rc_connection() != "online":
            raise RuntimeError("the leaf is not online before the kill")
        t0 = time.perf_counter()
        bench.kill9("leaf")
        gone = bench.wait_rc("offline", 60)
        g_kill = None if gone is None else time.perf_counter() - t0
        t0 = time.perf_counter()
        bench.kill9("ssh_reverse")
        gone = bench.openssh_tunnel_gone(60)
        o_kill = None if gone is None else time.perf_counter() - t0
        log(f"  gatehouse: {r3(g_kill)} s, openssh: {r3(o_kill)} s")

        # recovery: restart the leaf (a crash and restart); the trust persists
        seen = bench.log_count("leaf", "gatehouse is running")
        t0 = time.perf_counter()
        bench.start_gatehouse("leaf", bench.leaf_cfg)
        back = bench.wait_rc("online", 90)
        recovery_s = None if back is None else time.perf_counter() - t0
        bench.wait_running("leaf", seen)
        ossh_restart = bench.openssh_tunnel_up()
        log(f"  leaf restart to online at the root: {r3(recovery_s)} s; ssh -R restart {ossh_restart:.3f} s")

        # 4b. offline detection: silent loss, only heartbeats can tell
        g_drop = o_drop = None
        if not args.no_drop:
            log("offline detection: tunnel packets silently dropped (iptables on lo), Gatehouse then OpenSSH")
            t0 = time.perf_counter()
            bench.drop_port(bench.root_tunnel_port)
            gone = bench.wait_rc("offline", 60)
            g_drop = None if gone is None else time.perf_counter() - t0
            bench.undrop()
            t0 = time.perf_counter()
            bench.drop_port(bench.o_jump)
            gone = bench.openssh_tunnel_gone(90)
            o_drop = None if gone is None else time.perf_counter() - t0
            bench.undrop()
            log(f"  gatehouse: {r3(g_drop)} s, openssh: {r3(o_drop)} s")
    except Exception as exc:   # noqa: BLE001 - report and clean up
        log(f"FAILED: {exc}")
        for name in ("root", "leaf"):
            tail = bench.log_tail(name, 15)
            if tail:
                log(f"last lines of {name}.log:\n{tail}")
        return 1
    finally:
        bench.cleanup()

    med = {k: median(v) for k, v in setup.items()}
    mbps = {k: median(v) for k, v in tput.items()}
    trust_online = median(r["online_s"] for r in trust_runs)
    ossh_up_med = median(ossh_up)
    setup_ratio = med["gate"] / med["openssh_tunnel"]
    tput_ratio = mbps["gate"] / mbps["openssh_tunnel"]
    breakdown_keys = [k for k in trust_runs[0] if k != "online_s"]
    trust_ok = trust_online <= TRUST_TARGET_S
    setup_ok = setup_ratio <= SETUP_TARGET
    tput_ok = tput_ratio >= THROUGHPUT_TARGET
    kill_ok = g_kill is not None and g_kill <= OFFLINE_TARGET_S
    drop_ok = None if args.no_drop else (g_drop is not None and g_drop <= OFFLINE_TARGET_S)
    offline_ok = kill_ok and drop_ok is not False
    hb = bench.heartbeat_s
    per_gib = lambda x: None if x is None else round(x * 1024 / args.mib, 2)   # noqa: E731
    def total(run):
        return None if None in run.values() else sum(run.values())
    setup_cpu_report = {name: {**{k: r3(median(run[k] for run in runs)) for k in runs[0]},
                               "total": r3(median(total(run) for run in runs))}
                        for name, runs in setup_cpu.items()}
    cpu_report = {name: {**{k: per_gib(median(run[k] for run in runs)) for k in runs[0]},
                         "total": per_gib(median(total(run) for run in runs))}
                  for name, runs in cpu.items()}
    report = {
        "summary": {
            "trust_establishment": {"gate_s": r3(trust_online), "openssh_reverse_tunnel_up_s": r3(ossh_up_med),
                                    "target": f"<={TRUST_TARGET_S} s", "meets_target": trust_ok},
            "session_setup": {"gate_s": r3(med["gate"]), "openssh_s": r3(med["openssh_tunnel"]),
                              "ratio": r3(setup_ratio), "target": f"<={SETUP_TARGET}", "meets_target": setup_ok},
            "throughput": {"gate_MBps": round(mbps["gate"], 1), "openssh_MBps": round(mbps["openssh_tunnel"], 1),
                           "ratio": r3(tput_ratio), "target": f">={THROUGHPUT_TARGET}", "meets_target": tput_ok},
            "offline_detection": {"kill9_gate_s": r3(g_kill), "kill9_openssh_s": r3(o_kill),
                                  "silent_loss_gate_s": r3(g_drop), "silent_loss_openssh_s": r3(o_drop),
                                  "target": f"<={OFFLINE_TARGET_S} s (both variants)", "meets_target": offline_ok},
            "all_targets_met": trust_ok and setup_ok and tput_ok and offline_ok},
        "trust_establishment": {
            "gate_s": r3(trust_online), "openssh_reverse_tunnel_up_s": r3(ossh_up_med),
            "ratio": r3(trust_online / ossh_up_med),
            "target": f"<={TRUST_TARGET_S} s", "meets_target": trust_ok,
            "samples_s": [r3(r["online_s"]) for r in trust_runs],
            "breakdown_median_s": {k: r3(median(r[k] for r in trust_runs)) for k in breakdown_keys},
            "gatectl_one_api_call_s": r3(gatectl_one_call_s),
            "baseline_note": "OpenSSH has no trust exchange: its number is `ssh -N -R` start until the jump host "
                             "listens on the forwarded port, keys distributed beforehand; the ratio is for reference",
            "poll_ms": args.poll_ms, "runs": args.trust_runs},
        "session_setup": {
            "gate_s": r3(med["gate"]), "openssh_tunnel_s": r3(med["openssh_tunnel"]), "ratio": r3(setup_ratio),
            "target": f"<={SETUP_TARGET}", "meets_target": setup_ok,
            "min_s": {k: r3(min(v)) for k, v in setup.items()},
            "reference_s": {"openssh_via_gatehouse": r3(med["openssh_via_gatehouse"]),
                            "openssh_direct_to_node": r3(med["openssh_direct"])},
            "cpu_s_median": setup_cpu_report,
            "runs": args.runs,
            "samples_s": {k: [r3(x) for x in v] for k, v in setup.items()}},
        "throughput": {
            "bytes": nbytes, "gate_MBps": round(mbps["gate"], 1),
            "openssh_tunnel_MBps": round(mbps["openssh_tunnel"], 1), "ratio": r3(tput_ratio),
            "target": f">={THROUGHPUT_TARGET}", "meets_target": tput_ok,
            "reference_MBps": {"openssh_via_gatehouse": round(mbps["openssh_via_gatehouse"], 1)},
            "cpu_s_per_GiB": cpu_report,
            "cpu_source": ("servers: one cgroup per daemon, children included "
                           f"({bench.cg.kind}); client_and_head: getrusage of this script's children"),
            "runs": args.throughput_runs, "includes_setup": True,
            "samples_MBps": {k: [round(x, 1) for x in v] for k, v in tput.items()}},
        "offline_detection": {
            "kill9": {"gate_s": r3(g_kill), "openssh_s": r3(o_kill),
                      "ratio": r3(g_kill / o_kill) if g_kill and o_kill else None,
                      "target": f"<={OFFLINE_TARGET_S} s", "meets_target": kill_ok},
            "silent_loss": None if args.no_drop else {
                "gate_s": r3(g_drop), "openssh_s": r3(o_drop),
                "ratio": r3(g_drop / o_drop) if g_drop and o_drop else None,
                "target": f"<={OFFLINE_TARGET_S} s", "meets_target": drop_ok,
                "how": "iptables -I INPUT -i lo -p tcp --dport/--sport PORT -j DROP for the tunnel's server port "
                       "(Gatehouse: the root proxy's tunnel listener; OpenSSH: the jump sshd)"},
            "meets_target": offline_ok,
            "heartbeat": {"gate": f"tunnel_heartbeat_interval {hb:g} s (default), offline after {MISSED} missed",
                          "openssh": f"ClientAliveInterval {bench.alive_s} / ClientAliveCountMax {MISSED} on the "
                                     f"jump sshd, ServerAliveInterval {bench.alive_s} / ServerAliveCountMax "
                                     f"{MISSED} on ssh -R (OpenSSH default: off)"}},
        "recovery": {"leaf_restart_to_online_s": r3(recovery_s), "openssh_reverse_tunnel_restart_s": r3(ossh_restart)},
        "crypto": {"openssh_hops": negotiated,
                   "openssh_reverse_tunnel": f"ssh -R with the same client config: Ciphers {CIPHER} only, "
                                             f"default key exchange",
                   "gate": gate_params, "compression": "none"},
        "agent": agent,
        "cpus": os.cpu_count(),
        "loadavg_at_start": load_start,
        "loadavg_at_end": lh.loadavg(),
        "python": sys.version.split()[0],
        "openssh": lh.openssh_version(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=2))
    met = lambda ok: "met" if ok else "NOT met"   # noqa: E731
    summary = [
        f"trust establishment   {trust_online:.3f} s (target <= {TRUST_TARGET_S} s): {met(trust_ok)}; "
        f"ssh -R up {ossh_up_med:.3f} s",
        f"session setup         gate {med['gate']:.3f} s vs openssh {med['openssh_tunnel']:.3f} s = "
        f"{setup_ratio:.2f} (target <= {SETUP_TARGET}): {met(setup_ok)}",
        f"throughput            gate {mbps['gate']:.1f} MB/s vs openssh {mbps['openssh_tunnel']:.1f} MB/s = "
        f"{tput_ratio:.2f} (target >= {THROUGHPUT_TARGET}): {met(tput_ok)}",
        f"offline after kill -9 gate {r3(g_kill)} s vs openssh {r3(o_kill)} s (target <= {OFFLINE_TARGET_S} s): "
        f"{met(kill_ok)}",
    ]
    if not args.no_drop:
        summary.append(f"offline, silent loss  gate {r3(g_drop)} s vs openssh {r3(o_drop)} s "
                       f"(target <= {OFFLINE_TARGET_S} s): {met(drop_ok)}")
    log("summary\n  " + "\n  ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
