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
directory; account; all tagged with its pid) is removed by the next run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import resource
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT_SRC = os.path.join(REPO, "agent", "src")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
CIPHER = "aes128-gcm@openssh.com"
LOGIN_PREFIX = "ghtrust"
# An account of the run's own, deleted at exit: tests and demos on this machine manage "visitor",
# and two runs at once (or bench_ssh.py's "ghbench") never share or delete each other's account.
LOGIN = f"{LOGIN_PREFIX}{os.getpid()}"
ROOT, LEAF, NODE = "root.bench", "leaf.bench", "leafnode"
PASSWORD = "bench-password-123"
IPT_COMMENT = "gatehouse-bench-trust"
MISSED = 3                 # Gatehouse: offline after 3 missed heartbeats; OpenSSH: ClientAliveCountMax

TRUST_TARGET_S = 1.0       # absolute, lower is better
SETUP_TARGET = 0.6         # gate / openssh, lower is better
THROUGHPUT_TARGET = 1.5    # gate / openssh MB/s, higher is better
OFFLINE_TARGET_S = 15.0    # absolute, lower is better
RUN_TIMEOUT_S = 300


def log(msg: str) -> None:
    print(f"bench_trust: {msg}", file=sys.stderr, flush=True)


def wait_tcp(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.01)


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


class CpuGroups:
    """Exact CPU time of each side's servers: every daemon runs in a cgroup of its own.

    Per-process accounting from /proc loses the time of processes that die without
    being waited for by a process still in the tree (sshd's per-connection processes),
    a cgroup does not: it adds up the CPU time of everything that ever ran in it.
    The groups are made below this process's own cgroup in a CPU-accounting hierarchy
    (cgroup v1 ``cpuacct``, else v2), so no limit set above it is escaped; they only
    count, they limit nothing. Without a usable hierarchy, CPU is simply not reported.
    """

    def __init__(self) -> None:
        self.base: str | None = None
        self.stat = ""
        self.broken = False
        own = {}
        try:
            with open("/proc/self/cgroup", encoding="ascii") as fh:
                for line in fh:
                    num, ctrls, path = line.rstrip("\n").split(":", 2)
                    for c in ctrls.split(",") if ctrls else [""]:
                        own[c] = path
        except OSError:
            return
        candidates = [("/sys/fs/cgroup/cpuacct", own.get("cpuacct"), "cpuacct.usage"),
                      ("/sys/fs/cgroup/unified", own.get(""), "cpu.stat"),
                      ("/sys/fs/cgroup", own.get(""), "cpu.stat")]
        for mount, path, stat in candidates:
            if path is None or not os.path.exists(os.path.join(mount, "cgroup.procs")):
                continue
            base = os.path.join(mount + path.rstrip("/"), f"{IPT_COMMENT}-{os.getpid()}")
            try:
                os.mkdir(base)
            except OSError:
                continue
            if os.path.exists(os.path.join(base, stat)):
                self.base, self.stat = base, stat
                self._remove_stale(os.path.dirname(base))
                return
            os.rmdir(base)

    @staticmethod
    def _remove_stale(parent: str) -> None:
        """Empty groups of an earlier run that was killed before it could remove them."""
        for name in os.listdir(parent):
            m = re.fullmatch(rf"{IPT_COMMENT}-(\d+)", name)
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                base = os.path.join(parent, name)
                subs = [os.path.join(base, sub) for sub in os.listdir(base) if os.path.isdir(os.path.join(base, sub))]
                # Its daemons and their children, still running: in its groups, so certainly its own.
                stale = {}
                for sub in subs:
                    with open(os.path.join(sub, "cgroup.procs"), encoding="ascii") as fh:
                        stale.update((int(pid), start_time(int(pid))) for pid in fh.read().split())
                if stale:
                    log(f"stopping {len(stale)} process(es) left by an earlier run (cgroup {base})")
                for pid, started in stale.items():
                    signal_if_same(pid, started, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while any(start_time(pid) == t for pid, t in stale.items()) and time.monotonic() < deadline:
                    time.sleep(0.05)
                try:
                    for sub in subs:
                        os.rmdir(sub)
                    os.rmdir(base)
                    log(f"removed the cgroup {base} left by an earlier run")
                except OSError:
                    pass

    def group(self, name: str) -> str | None:
        if self.base is None:
            return None
        path = os.path.join(self.base, name)
        os.makedirs(path, exist_ok=True)
        return path

    def preexec(self, name: str | None):
        """A preexec_fn that moves the new process into group `name` before it runs anything."""
        path = self.group(name) if name else None
        if path is None:
            return None

        def enter() -> None:
            try:
                with open(os.path.join(path, "cgroup.procs"), "w", encoding="ascii") as fh:
                    fh.write(str(os.getpid()))
            except OSError:
                pass   # noticed by check() in the parent
        return enter

    def check(self, name: str, pid: int) -> None:
        if self.base is not None and pid not in self.members(name):
            log(f"could not put {name} into its cgroup: CPU time is not reported")
            self.broken = True

    def members(self, name: str) -> set[int]:
        try:
            with open(os.path.join(self.base, name, "cgroup.procs"), encoding="ascii") as fh:
                return {int(x) for x in fh.read().split()}
        except (OSError, TypeError, ValueError):
            return set()

    def cpu(self, name: str) -> float | None:
        """CPU seconds used so far by everything that ran in group `name`."""
        if self.base is None or self.broken:
            return None
        with open(os.path.join(self.base, name, self.stat), encoding="ascii") as fh:
            text = fh.read()
        if self.stat == "cpuacct.usage":
            return int(text) / 1e9
        return int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6

    def all_members(self) -> set[int]:
        if self.base is None:
            return set()
        return set().union(*(self.members(n) for n in os.listdir(self.base)
                              if os.path.isdir(os.path.join(self.base, n))))

    def remove(self) -> None:
        """Remove the groups (after their processes are gone; stragglers go back to the parent group)."""
        if self.base is None:
            return
        parent = os.path.dirname(self.base)
        for name in os.listdir(self.base):
            sub = os.path.join(self.base, name)
            if not os.path.isdir(sub):
                continue
            for pid in self.members(name):
                try:
                    with open(os.path.join(parent, "cgroup.procs"), "w", encoding="ascii") as fh:
                        fh.write(str(pid))
                except OSError:
                    pass
            try:
                os.rmdir(sub)
            except OSError as exc:
                log(f"cannot remove cgroup {sub}: {exc}")
        try:
            os.rmdir(self.base)
        except OSError as exc:
            log(f"cannot remove cgroup {self.base}: {exc}")
        self.base = None


def descendants(pid: int) -> set[int]:
    """Live descendants of `pid` (children in other sessions included), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    children.setdefault(int(fh.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), None if it is gone or a zombie.

    With a pid_max of 32768 a busy machine reuses pids within seconds: a pid is only
    "ours" while its start time is the one recorded when it was found.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def signal_if_same(pid: int, started: int | None, sig: int) -> bool:
    """Send `sig` to `pid` only if it is still the process that started at `started`."""
    if started is None or start_time(pid) != started:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


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


class Bench:
    def __init__(self, poll_s: float) -> None:
        self.tmp = tempfile.mkdtemp(prefix=f"{IPT_COMMENT}-{os.getpid()}-")
        os.chmod(self.tmp, 0o755)
        self.poll_s = poll_s
        self.procs: dict[str, subprocess.Popen] = {}   # daemons: sshd x2, ssh -R, root, leaf
        self.dead: list[subprocess.Popen] = []          # daemons replaced after a kill -9
        self.transient: set[subprocess.Popen] = set()   # clients, gatectl create, head
        self.ipt_rules: list[list[str]] = []
        self.created_login = False
        self.cg: CpuGroups | None = None
        self.python = sys.executable or "python3"
        self._api = None
        self.trust_gen = 0

    def prepare(self, from_source: bool) -> None:
        """The agent code to run, the clients' environment, Gatehouse's default heartbeat, CPU accounting."""
        self.cg = CpuGroups()
        self.cg_kind = self.cg.stat.split(".")[0] + " " + os.path.dirname(self.cg.base) if self.cg.base else "none"
        self.agent_src = AGENT_SRC if from_source else self.compiled_copy()
        self.env = dict(os.environ, PYTHONPATH=self.agent_src + (os.pathsep + os.environ["PYTHONPATH"]
                                                                 if os.environ.get("PYTHONPATH") else ""),
                        GATE_HOME=self.path("gate"))
        self.env.pop("SSH_AUTH_SOCK", None)
        self.env.pop("GATEHOUSE_CONFIG", None)
        # This process reads the root's status with the agent's own API client, from the same code.
        sys.path.insert(0, self.agent_src)
        import gatehouse
        from gatehouse.config import ProxyConfig
        # Guard against another copy of the agent winning the import (an editable install's .pth, say).
        child = subprocess.run([self.python, "-c", "import gatehouse; print(gatehouse.__file__)"], env=self.env,
                               capture_output=True, text=True, cwd=self.tmp).stdout.strip()
        for where in (gatehouse.__file__, child):
            if not where.startswith(self.agent_src + os.sep):
                raise RuntimeError(f"gatehouse is imported from {where!r}, not from {self.agent_src}")
        self.heartbeat_s = ProxyConfig().tunnel_heartbeat_interval   # the default; OpenSSH mirrors it

    def compiled_copy(self) -> str:
        """agent/src copied into the temp dir with its bytecode, as pip installs it."""
        dest = self.path("agent-src")
        shutil.copytree(AGENT_SRC, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run([self.python, "-m", "compileall", "-q", dest], check=True, stdout=subprocess.DEVNULL)
        return dest

    # ------------------------------------------------------------------ helpers
    def path(self, *parts: str) -> str:
        return os.path.join(self.tmp, *parts)

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        old = self.procs.get(name)
        if old is not None:
            if old.poll() is None:
                raise RuntimeError(f"{name} is already running")
            self.dead.append(old)
        out = open(self.path(f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=self.tmp, start_new_session=True, preexec_fn=self.cg.preexec(name))
        out.close()
        self.procs[name] = proc
        self.cg.check(name, proc.pid)   # each daemon and whatever it starts count in a cgroup of its own
        return proc

    def spawn(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """A short-lived process (client, gatectl, head), in a session of its own so that cleanup
        can kill it with whatever it started (ssh -J runs a second ssh)."""
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.transient.add(proc)
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float | None = None, stdin: bytes | None = None):
        """communicate() with a spawned process; on a timeout or an interruption, kill its session."""
        try:
            out = proc.communicate(stdin, timeout=timeout)
        except BaseException:
            self.kill_session(proc)
            raise
        self.transient.discard(proc)
        return out

    def kill_session(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:   # not reaped: its pid is still its own, and the id of its group
            for target in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
                try:
                    target()
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.transient.discard(proc)

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)   # the process itself, as a crash would
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # anything it left in its session (none expected)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)   # reaped only now: until then its pid (and group id) cannot be reused

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            with open(self.path(f"{name}.log"), encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        """Stop everything this run started, remove its iptables rules, cgroups, account and files.

        Signals are ignored meanwhile, so a second Ctrl-C or SIGTERM cannot cut it short.
        sshd's per-connection processes and the node's session shells run in sessions
        of their own: they are found in the daemons' cgroups and as their descendants, and
        signalled too (each only while its pid still belongs to the process found).
        """
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for proc in list(self.transient):
            self.kill_session(proc)
        self.undrop()
        daemons = [p for p in self.procs.values() if p.poll() is None]
        pids = self.cg.all_members() if self.cg else set()
        for proc in daemons:
            pids |= descendants(proc.pid)
        pids -= {os.getpid()}
        family = {pid: start_time(pid) for pid in pids}   # pid -> start time, to never signal a reused pid
        for proc in daemons:
            try:
                os.killpg(proc.pid, signal.SIGTERM)   # the session this script created for it (not reaped yet)
            except ProcessLookupError:
                pass
        family = {pid: t for pid, t in family.items() if signal_if_same(pid, t, signal.SIGTERM)}
        deadline = time.monotonic() + 10
        for proc in daemons:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        while family and time.monotonic() < deadline:
            family = {pid: t for pid, t in family.items() if start_time(pid) == t}
            time.sleep(0.05)
        for pid, t in family.items():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    what = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                what = "?"
            if signal_if_same(pid, t, signal.SIGKILL):
                log(f"process {pid} ({what}) did not stop on SIGTERM: killed it")
        for proc in [*self.procs.values(), *self.dead]:
            proc.poll()
        self.procs.clear()
        if self.cg:
            self.cg.remove()
        if self.created_login:
            subprocess.run(["userdel", "--remove", LOGIN], check=False, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            self.created_login = False
        shutil.rmtree(self.tmp, ignore_errors=True)

    def ensure_login(self) -> None:
        log(f"creating Unix user {LOGIN} for the run")
        self.created_login = True   # first: an interruption during useradd must still remove it
        try:
            pwd.getpwnam(LOGIN)   # left by a killed run that had this pid: ours by its name
        except KeyError:
            # "*": no password login, yet not "locked" ("!"), which sshd without PAM would refuse.
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*",
                            "--comment", "gatehouse bench_trust.py, deleted at exit", LOGIN], check=True)
        else:
            subprocess.run(["usermod", "-p", "*", LOGIN], check=True)

    @staticmethod
    def free_ports(n: int) -> list[int]:
        socks, ports = [], []
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
        for s in socks:
            s.close()
        return ports

    # ------------------------------------------------------------------ OpenSSH topology
    def setup_openssh(self) -> None:
        self.o_node, self.o_jump, self.o_rport = self.free_ports(3)
        # sshd takes whole seconds: Gatehouse's default heartbeat, rounded up.
        self.alive_s = max(1, int(-(-self.heartbeat_s // 1)))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        key = self.path("client_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key], check=True)
        shutil.copy(key + ".pub", self.path("authorized_keys"))
        os.chmod(self.path("authorized_keys"), 0o644)
        for name, port, extra in (("sshd_node", self.o_node, ""),
                                  ("sshd_jump", self.o_jump,
                                   f"ClientAliveInterval {self.alive_s}\nClientAliveCountMax {MISSED}\n")):
            host_key = self.path(f"{name}_host_ed25519")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
            cfg = self.path(f"{name}_config")
            with open(cfg, "w", encoding="utf-8") as f:
                f.write(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {self.path(name + '.pid')}
AuthorizedKeysFile {self.path('authorized_keys')}
StrictModes no
UsePAM no
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers {LOGIN}
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
Compression no
LogLevel ERROR
{extra}""")
            subprocess.run([SSHD, "-t", "-f", cfg], check=True)
            self.start(name, [SSHD, "-D", "-e", "-f", cfg])
        with open(self.path("ssh_config"), "w", encoding="utf-8") as f:
            f.write(f"""Host *
  User {LOGIN}
  IdentityFile {key}
  IdentitiesOnly yes
  IdentityAgent none
  BatchMode yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  GlobalKnownHostsFile /dev/null
  LogLevel ERROR
  Ciphers {CIPHER}
  Compression no
  ControlMaster no
  ControlPath none
  ForwardAgent no
  ForwardX11 no
  RequestTTY no
""")
        base = ["ssh", "-F", self.path("ssh_config"), "-c", CIPHER, "-o", "Compression=no"]
        self.ssh_tunnel = base + ["-J", f"{LOGIN}@127.0.0.1:{self.o_jump}", "-p", str(self.o_rport),
                                  f"{LOGIN}@127.0.0.1"]
        self.ssh_direct = base + ["-p", str(self.o_node), f"{LOGIN}@127.0.0.1"]
        self.ssh_reverse = base + ["-N", "-o", "ExitOnForwardFailure=yes", "-o", f"ServerAliveInterval={self.alive_s}",
                                   "-o", f"ServerAliveCountMax={MISSED}",
                                   "-R", f"127.0.0.1:{self.o_rport}:127.0.0.1:{self.o_node}",
                                   "-p", str(self.o_jump), f"{LOGIN}@127.0.0.1"]
        wait_tcp(self.o_node, 10)
        wait_tcp(self.o_jump, 10)

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
        t0 = time.perf_counter()
        while listening(self.o_rport):
            if time.perf_counter() - t0 > timeout:
                return None
            time.sleep(self.poll_s)
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ Gatehouse topology
    def setup_gatehouse(self) -> None:
        ra, rw, rs, rt, la, lw, ls_, lt, ln = self.free_ports(9)
        self.root_web, self.root_tunnel_port = f"127.0.0.1:{rw}", rt
        self.root_cfg = self.path("root.yaml")
        self.leaf_cfg = self.path("leaf.yaml")
        with open(self.root_cfg, "w", encoding="utf-8") as f:
            f.write(f"""gatehouse: {{nodename: rootproxy, data_dir: {self.path('root-data')}, log: {{severity: INFO}}}}
auth_service: {{enabled: true, cluster_name: {ROOT}, listen_addr: 127.0.0.1:{ra}}}
proxy_service: {{enabled: true, web_listen_addr: 127.0.0.1:{rw}, listen_addr: 127.0.0.1:{rs}, \
tunnel_listen_addr: 127.0.0.1:{rt}}}
""")
        with open(self.leaf_cfg, "w", encoding="utf-8") as f:
            f.write(f"""gatehouse: {{nodename: {NODE}, data_dir: {self.path('leaf-data')}, insecure: true, \
log: {{severity: INFO}}}}
auth_service: {{enabled: true, cluster_name: {LEAF}, listen_addr: 127.0.0.1:{la}}}
proxy_service: {{enabled: true, web_listen_addr: 127.0.0.1:{lw}, listen_addr: 127.0.0.1:{ls_}, \
tunnel_listen_addr: 127.0.0.1:{lt}}}
ssh_service: {{enabled: true, listen_addr: 127.0.0.1:{ln}}}
""")
        self.start_daemon("root", self.root_cfg)
        self.start_daemon("leaf", self.leaf_cfg)
        self.wait_running("root", 0)
        self.wait_running("leaf", 0)
        self.gatectl(self.root_cfg, ["users", "add", "alice", "--roles=access", f"--logins={LOGIN}",
                                     "--password-stdin"], stdin=PASSWORD + "\n")
        with open(self.path("tc.yaml"), "w", encoding="utf-8") as f:
            json.dump({"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
                       "spec": {"enabled": True, "token": "", "web_proxy_addr": self.root_web,
                                "role_map": [{"remote": "access", "local": ["access"]}]}}, f)
        self.gate_ssh = [self.python, "-m", "gatehouse.cli.gate", "ssh", f"--cluster={LEAF}", f"{LOGIN}@{NODE}"]

    def start_daemon(self, name: str, cfg: str) -> None:
        self.start(name, [self.python, "-m", "gatehouse.cli.daemon", "start", "-c", cfg], env=self.env)

    def wait_running(self, name: str, seen_before: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(log_times(self.path(f"{name}.log"), "gatehouse is running")) <= seen_before:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.procs[name].returncode}:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self.log_tail(name)}")
            time.sleep(0.05)

    def gatectl(self, cfg: str, args: list[str], stdin: str | None = None) -> str:
        return self.gatemod(["gatehouse.cli.gatectl", "-c", cfg, *args], stdin)

    def gatemod(self, args: list[str], stdin: str | None = None) -> str:
        res = subprocess.run([self.python, "-m", *args], input=stdin, capture_output=True, text=True,
                             env=self.env, timeout=60, stdin=None if stdin is not None else subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:4])} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

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
        t0 = time.perf_counter()
        while self.rc_connection() != want:
            if time.perf_counter() - t0 > timeout:
                return None
            time.sleep(self.poll_s)
        return time.perf_counter() - t0

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
        drops = len(log_times(self.path("root.log"), f"tunnel: leaf {LEAF} is disconnected"))
        closes = len(log_times(self.path("leaf.log"), f"tunnel: closing the tunnels to root {ROOT}"))
        self.gatectl(self.root_cfg, ["rm", f"rc/{LEAF}"])
        self.gatectl(self.leaf_cfg, ["rm", f"tc/{ROOT}"])
        deadline = time.monotonic() + 15
        while len(log_times(self.path("root.log"), f"tunnel: leaf {LEAF} is disconnected")) <= drops:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the tunnel was not dropped after rm:\n{self.log_tail('root')}")
            time.sleep(0.05)
        deadline = time.monotonic() + 15
        while len(log_times(self.path("leaf.log"), f"tunnel: closing the tunnels to root {ROOT}")) <= closes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the leaf did not stop its tunnel agent:\n{self.log_tail('leaf')}")
            time.sleep(0.05)
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

    @staticmethod
    def remove_stale_runs() -> None:
        """What a run killed with SIGKILL left: its temp dir and account (named after its pid, which is
        gone; its processes were stopped with its cgroups, see CpuGroups), and its iptables rules."""
        for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{IPT_COMMENT}-*-*")):
            m = re.fullmatch(rf"{IPT_COMMENT}-(\d+)-\w+", os.path.basename(path))
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                log(f"removing {path}, left by an earlier run")
                shutil.rmtree(path, ignore_errors=True)
        for entry in pwd.getpwall():
            m = re.fullmatch(rf"{LOGIN_PREFIX}(\d+)", entry.pw_name)
            if m and not os.path.exists(f"/proc/{m.group(1)}") and "bench_trust" in entry.pw_gecos:
                log(f"removing the account {entry.pw_name}, left by an earlier run")
                subprocess.run(["userdel", "--remove", entry.pw_name], check=False, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        Bench.remove_stale_rules()

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
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run()
        # The servers' per-connection processes (sshd's, the node's session shell) may still be
        # finishing: wait until each group is back to the processes it had before the run.
        settle = time.monotonic() + 5
        while any(len(self.cg.members(g)) > sizes[k] for k, g in groups.items()) and time.monotonic() < settle:
            time.sleep(0.01)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = {k: self.cg.cpu(g) for k, g in groups.items()}
        used = {k: None if before[k] is None or after[k] is None else after[k] - before[k] for k in groups}
        used["client_and_head"] = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        return result, used

    def time_cmd(self, argv: list[str], env: dict | None = None) -> float:
        """Wall time of one fresh client process running `true` on the node."""
        t0 = time.perf_counter()
        proc = self.spawn(argv + ["true"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env)
        _, err = self.finish(proc, RUN_TIMEOUT_S)
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:6])} ... true failed ({proc.returncode}): "
                               f"{err.decode(errors='replace')}")
        return dt

    def time_pipe(self, argv: list[str], nbytes: int, env: dict | None = None) -> float:
        """Wall time of `head -c nbytes /dev/zero | CLIENT 'cat >/dev/null'`, setup included."""
        t0 = time.perf_counter()
        head = self.spawn(["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
        try:
            client = self.spawn(argv + ["cat >/dev/null"], stdin=head.stdout, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        finally:
            head.stdout.close()
        try:
            _, err = self.finish(client, RUN_TIMEOUT_S)
        except BaseException:
            self.kill_session(head)
            raise
        self.finish(head, 10)
        dt = time.perf_counter() - t0
        if client.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:6])} ... cat failed ({client.returncode}): "
                               f"{err.decode(errors='replace')}")
        return dt

    def openssh_negotiated(self) -> list[dict]:
        """Key exchange and cipher of each OpenSSH hop of the tunnel chain (from `ssh -v`)."""
        proc = self.spawn(self.ssh_tunnel[:1] + ["-v"] + self.ssh_tunnel[1:] + ["true"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = self.finish(proc, 60)[1].decode(errors="replace")
        hops: list[dict] = []
        for line in err.splitlines():
            if "kex: algorithm:" in line:
                hops.append({"kex": line.split("kex: algorithm:")[1].strip()})
            elif "kex: client->server cipher:" in line and hops:
                hops[-1]["cipher"] = line.split("cipher:")[1].split()[0]
        return hops

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


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def r3(x):
    return None if x is None else round(x, 3)


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

    def on_signal(signum, frame):
        log(f"{signal.Signals(signum).name}: stopping and cleaning up")
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)

    bench = Bench(args.poll_ms / 1000)
    started = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    try:
        bench.prepare(args.from_source)
        agent = bench.agent_code()
        gate_params = bench.gate_params()
        bench.remove_stale_runs()
        bench.ensure_login()
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
        setup = {name: [] for name in clients}
        setup_cpu = {name: [] for name in clients}
        for _ in range(args.runs):
            for name, (argv_, env) in clients.items():
                dt, used = bench.with_cpu(parts[name], lambda: bench.time_cmd(argv_, env))
                setup[name].append(dt)
                setup_cpu[name].append(used)
        log("  medians: " + ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in setup.items()))
        negotiated = bench.openssh_negotiated()

        # 3. throughput
        nbytes = args.mib * 1024 * 1024
        tclients = {k: v for k, v in clients.items() if k != "openssh_direct"}
        log(f"throughput: {args.mib} MiB x {args.throughput_runs} run(s) per client")
        tput = {name: [] for name in tclients}
        cpu = {name: [] for name in tclients}
        for _ in range(args.throughput_runs):
            for name, (argv_, env) in tclients.items():
                dt, used = bench.with_cpu(parts[name], lambda: bench.time_pipe(argv_, nbytes, env))
                cpu[name].append(used)
                tput[name].append(nbytes / dt / 1e6)
                log(f"  {name}: {tput[name][-1]:.1f} MB/s, CPU s: "
                    + ", ".join(f"{k} {'?' if v is None else f'{v:.2f}'}" for k, v in used.items()))

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
        seen = len(log_times(bench.path("leaf.log"), "gatehouse is running"))
        t0 = time.perf_counter()
        bench.start_daemon("leaf", bench.leaf_cfg)
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

    med = {k: statistics.median(v) for k, v in setup.items()}
    mbps = {k: statistics.median(v) for k, v in tput.items()}
    trust_online = statistics.median(r["online_s"] for r in trust_runs)
    ossh_up_med = statistics.median(ossh_up)
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
                           f"({bench.cg_kind}); client_and_head: getrusage of this script's children"),
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
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
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
