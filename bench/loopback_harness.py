"""What bench_ssh.py and bench_trust.py share: a run that stands up Gatehouse daemons and a
stock OpenSSH baseline side by side on 127.0.0.1, times fresh client processes against
both, and leaves nothing behind.

* ``BenchRun``: the temporary directory; the Gatehouse code to run (a byte-compiled copy
  of ``agent/src``, as pip installs it, or ``agent/src`` itself) and its environment; the
  processes it starts (daemons, each in a session and a CPU-accounting cgroup of its own,
  and short-lived clients, each in a session of its own); the OpenSSH baseline (sshd
  configs, host and client keys, the client's ``ssh_config``); timing one client run;
  and the cleanup that stops all of it, the daemons' children included, and removes what
  the run made: at exit, on an error, on Ctrl-C, SIGTERM or SIGHUP.
* ``UnixLogin``: the Unix account both sides log in as, created (or unlocked) for the
  run and put back at exit.
* ``CpuGroups``: one cgroup per daemon, for its exact CPU time and to find its children.
* Helpers: free ports, waiting for a port or a condition, process start times (a pid is
  only signalled while it still belongs to the process that was found), medians.

What a run makes is tagged with the run's pid (``TAG-PID``: temporary directory, cgroups),
so that the next run can remove what a run killed with SIGKILL left behind.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT_SRC = os.path.join(REPO, "agent", "src")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
CIPHER = "aes128-gcm@openssh.com"   # what `gate ssh` offers first (gatehouse.sshparams.ENCRYPTION_ALGS)
PASSWORD = "bench-password-123"     # the Gatehouse user's, for `gatectl users add` and `gate login`
STOP_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}

Log = Callable[[str], None]


# ---------------------------------------------------------------------- signals and processes
def stop_on_signals(log: Log) -> None:
    """SIGTERM, SIGHUP and Ctrl-C end the run through SystemExit(128 + signal), so that the
    caller's ``finally`` cleans up."""
    def on_signal(signum, frame):
        log(f"{signal.Signals(signum).name}: stopping and cleaning up")
        raise SystemExit(128 + signum)
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)


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


def proc_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished (reaped) children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class CpuGroups:
    """Exact CPU time of each daemon: every daemon runs in a cgroup of its own.

    Per-process accounting from /proc loses the time of processes that die without
    being waited for by a process still in the tree (sshd's per-connection processes),
    a cgroup does not: it adds up the CPU time of everything that ever ran in it. The
    groups also find a daemon's children at cleanup, whichever session they are in.
    They are made below this process's own cgroup in a CPU-accounting hierarchy
    (cgroup v1 ``cpuacct``, else v2), so no limit set above it is escaped; they only
    count, they limit nothing. Without a usable hierarchy, CPU is simply not reported.
    """

    def __init__(self, tag: str, log: Log) -> None:
        self.tag, self.log = tag, log
        self.base: str | None = None
        self.stat = ""
        self.kind = "none"
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
            base = os.path.join(mount + path.rstrip("/"), f"{tag}-{os.getpid()}")
            try:
                os.mkdir(base)
            except OSError:
                continue
            if os.path.exists(os.path.join(base, stat)):
                self.base, self.stat = base, stat
                self.kind = stat.split(".")[0] + " " + os.path.dirname(base)
                self._remove_stale(os.path.dirname(base))
                return
            os.rmdir(base)

    def _remove_stale(self, parent: str) -> None:
        """Groups of an earlier run that was killed before it could remove them."""
        for name in os.listdir(parent):
            m = re.fullmatch(rf"{self.tag}-(\d+)", name)
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                base = os.path.join(parent, name)
                subs = [os.path.join(base, sub) for sub in os.listdir(base) if os.path.isdir(os.path.join(base, sub))]
                # Its daemons and their children, still running: in its groups, so certainly its own.
                stale = {}
                for sub in subs:
                    with open(os.path.join(sub, "cgroup.procs"), encoding="ascii") as fh:
                        stale.update((int(pid), start_time(int(pid))) for pid in fh.read().split())
                if stale:
                    self.log(f"stopping {len(stale)} process(es) left by an earlier run (cgroup {base})")
                for pid, started in stale.items():
                    signal_if_same(pid, started, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while any(start_time(pid) == t for pid, t in stale.items()) and time.monotonic() < deadline:
                    time.sleep(0.05)
                try:
                    for sub in subs:
                        os.rmdir(sub)
                    os.rmdir(base)
                    self.log(f"removed the cgroup {base} left by an earlier run")
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
            self.log(f"could not put {name} into its cgroup: CPU time is not reported")
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
                self.log(f"cannot remove cgroup {sub}: {exc}")
        try:
            os.rmdir(self.base)
        except OSError as exc:
            self.log(f"cannot remove cgroup {self.base}: {exc}")
        self.base = None


# ---------------------------------------------------------------------- the Unix account
class UnixLogin:
    """The Unix account that OpenSSH and Gatehouse's node log the benchmark in as.

    ``own=True``: the name is the run's alone (it carries the run's pid): the account is
    created with `comment` as its GECOS field (taken over if a killed run with the same pid
    left it) and always deleted at exit. ``own=False``: a fixed name that may exist already:
    created if missing, and then deleted at exit. Either way "*" is its password field for
    the run: no password login, yet not "locked" ("!"), which sshd without PAM refuses; an
    existing account's locked field is put back at exit.
    """

    def __init__(self, name: str, log: Log, own: bool = False, comment: str | None = None) -> None:
        self.name, self.log, self.own, self.comment = name, log, own, comment
        self.created = False
        self.restore_shadow: str | None = None

    def ensure(self) -> None:
        try:
            pwd.getpwnam(self.name)
            exists = True
        except KeyError:
            exists = False
        if self.own or not exists:
            self.log(f"creating Unix user {self.name} for the run")
            self.created = True   # first: an interruption during useradd must still remove it
        if self.own and exists:   # left by a killed run that had this pid: ours by its name
            subprocess.run(["usermod", "-p", "*", self.name], check=True)
            return
        if not exists:
            comment = ["--comment", self.comment] if self.comment else []
            try:
                subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", *comment,
                                self.name], check=True)
            except subprocess.CalledProcessError as exc:
                if exc.returncode == 9 and not self.own:   # "username already in use": not ours to delete
                    self.created = False
                raise
        current = self.shadow_field()
        if current.startswith("!"):
            self.log(f"account {self.name} is locked ({current[:1]}...): unlocking with '*' for the run, "
                     f"restored at exit")
            subprocess.run(["usermod", "-p", "*", self.name], check=True)
            self.restore_shadow = current

    def shadow_field(self) -> str:
        """The account's password field in /etc/shadow ("" if unreadable)."""
        try:
            with open("/etc/shadow", encoding="utf-8") as f:
                for line in f:
                    if line.startswith(self.name + ":"):
                        return line.split(":")[1]
        except OSError:
            pass
        return ""

    def remove(self) -> None:
        """Put the account back as it was: its locked password field, or no account at all."""
        self.stop_leftover_processes()
        if self.restore_shadow is not None:
            subprocess.run(["usermod", "-p", self.restore_shadow, self.name], check=False)
            self.restore_shadow = None
        if self.created:
            subprocess.run(["userdel", "--remove", self.name], check=False, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            self.created = False

    def stop_leftover_processes(self) -> None:
        """Session commands run in process groups of their own; once the servers are gone they
        end by themselves. Anything still running as the account is stopped here if this run
        created it (then every such process is one of ours), so that `userdel` can remove it."""
        try:
            uid = pwd.getpwnam(self.name).pw_uid
        except KeyError:
            return
        for _ in range(20):
            left = {int(p): start_time(int(p)) for p in os.listdir("/proc")
                    if p.isdigit() and proc_uid(int(p)) == uid}
            if not left:
                return
            time.sleep(0.1)
        if not self.created:
            self.log(f"processes of {self.name} still running after the run: {sorted(left)}")
            return
        self.log(f"stopping leftover processes of {self.name}: {sorted(left)}")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = {pid: t for pid, t in left.items() if signal_if_same(pid, t, sig)}
            time.sleep(0.5)
            left = {pid: t for pid, t in left.items() if start_time(pid) == t}
            if not left:
                return

    @staticmethod
    def remove_stale(prefix: str, marker: str, log: Log) -> None:
        """Accounts PREFIXPID of earlier runs killed before they could delete them (their pid is
        gone; `marker` in the GECOS field says the benchmark made them)."""
        for entry in pwd.getpwall():
            m = re.fullmatch(rf"{prefix}(\d+)", entry.pw_name)
            if m and not os.path.exists(f"/proc/{m.group(1)}") and marker in entry.pw_gecos:
                log(f"removing the account {entry.pw_name}, left by an earlier run")
                subprocess.run(["userdel", "--remove", entry.pw_name], check=False, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------------- ports
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


def wait_tcp(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Until 127.0.0.1:port accepts a connection; fails at once if `proc` (its server) exits."""
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


def wait_for(condition: Callable[[], bool], timeout: float, interval: float) -> float | None:
    """Seconds (from now) until condition() holds, checked every `interval`; None on timeout."""
    t0 = time.perf_counter()
    while not condition():
        if time.perf_counter() - t0 > timeout:
            return None
        time.sleep(interval)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- the run
class BenchRun:
    """One benchmark run: its temporary directory, processes, Gatehouse code and OpenSSH baseline.

    `tag` names what the run makes (temporary directory ``/tmp/TAG-PID-*``, cgroups
    ``TAG-PID``); `log` writes a progress line to stderr.
    """

    run_timeout = 120   # seconds one measured client run may take

    def __init__(self, tag: str, log: Log, login: UnixLogin) -> None:
        self.tag, self.log, self.login = tag, log, login
        self.tmp = tempfile.mkdtemp(prefix=f"{tag}-{os.getpid()}-")
        os.chmod(self.tmp, 0o755)
        self.python = sys.executable or "python3"
        self.procs: dict[str, subprocess.Popen] = {}    # daemons (sshd, gatehouse, ...) by name
        self.dead: list[subprocess.Popen] = []          # daemons replaced after they ended
        self.transient: set[subprocess.Popen] = set()   # clients, gatectl, head
        self.cg: CpuGroups | None = None
        self.agent_src = AGENT_SRC
        self.env: dict = {}

    def path(self, *parts: str) -> str:
        return os.path.join(self.tmp, *parts)

    @staticmethod
    def write(path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    # ------------------------------------------------------------------ Gatehouse code
    def prepare(self, from_source: bool) -> None:
        """CPU-accounting groups, the Gatehouse code to run and the environment of its processes.

        Called inside the cleanup's try, as it writes to the temporary directory and the cgroup tree.
        """
        self.cg = CpuGroups(self.tag, self.log)
        self.agent_src = AGENT_SRC if from_source else self.compiled_copy()
        self.env = dict(os.environ, PYTHONPATH=self.agent_src + (os.pathsep + os.environ["PYTHONPATH"]
                                                                 if os.environ.get("PYTHONPATH") else ""),
                        GATE_HOME=self.path("gate"))
        self.env.pop("SSH_AUTH_SOCK", None)
        self.env.pop("GATEHOUSE_CONFIG", None)
        # Guard against another copy of the agent winning the import (an editable install's .pth, say).
        child = subprocess.run([self.python, "-c", "import gatehouse; print(gatehouse.__file__)"], env=self.env,
                               capture_output=True, text=True, cwd=self.tmp).stdout.strip()
        if not child.startswith(self.agent_src + os.sep):
            raise RuntimeError(f"gatehouse is imported from {child!r}, not from {self.agent_src}")

    def compiled_copy(self) -> str:
        """agent/src copied into the temp dir with its bytecode, as pip installs it."""
        dest = self.path("agent-src")
        shutil.copytree(AGENT_SRC, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run([self.python, "-m", "compileall", "-q", dest], check=True, stdout=subprocess.DEVNULL)
        return dest

    def start_gatehouse(self, name: str, cfg: str) -> subprocess.Popen:
        return self.start(name, [self.python, "-m", "gatehouse.cli.daemon", "start", "-c", cfg], env=self.env)

    def gatemod(self, args: list[str], stdin: str | None = None) -> str:
        """stdout of `python -m ARGS` (gate, gatectl) with the Gatehouse environment; fails on an error."""
        res = subprocess.run([self.python, "-m", *args], input=stdin, capture_output=True, text=True,
                             env=self.env, timeout=60, stdin=None if stdin is not None else subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:4])} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    # ------------------------------------------------------------------ processes
    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        """A daemon, logging to NAME.log, in a session and (when there is one) a cgroup of its own."""
        old = self.procs.get(name)
        if old is not None:
            if old.poll() is None:
                raise RuntimeError(f"{name} is already running")
            self.dead.append(old)
        out = open(self.path(f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=self.tmp, start_new_session=True,
                                preexec_fn=self.cg.preexec(name) if self.cg else None)
        out.close()
        self.procs[name] = proc
        if self.cg:
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

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            with open(self.path(f"{name}.log"), encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        """Stop everything this run started and remove what it made (and release() undoes).

        Stop signals are held meanwhile, so a second Ctrl-C or SIGTERM cannot cut it short; a
        held one is delivered when it is done. (Held by a handler that only records them, which
        the interpreter runs in the main thread whichever thread the signal reaches; children
        started meanwhile, like userdel, get the default actions back at exec.) Each step runs
        even if an earlier one failed.
        """
        held: list[int] = []
        previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in STOP_SIGNALS}
        try:
            for step in (self.stop_clients, self.release, self.stop_daemons,
                         self.cg.remove if self.cg else None, self.login.remove,
                         lambda: shutil.rmtree(self.tmp, ignore_errors=True)):
                try:
                    if step is not None:
                        step()
                except Exception as exc:   # noqa: BLE001 - go on with the rest of the cleanup
                    self.log(f"cleanup: {exc!r}")
        finally:
            for sig, handler in previous.items():
                if handler is not None:   # None: a handler not installed from Python, left as it is
                    signal.signal(sig, handler)
            for signum in dict.fromkeys(held):   # to the handler in place before (stop_on_signals': SystemExit)
                signal.raise_signal(signum)

    def release(self) -> None:
        """What a benchmark adds besides processes, undone before the daemons are stopped."""

    def stop_clients(self) -> None:
        for proc in list(self.transient):
            self.kill_session(proc)

    def stop_daemons(self) -> None:
        """SIGTERM to the daemons, and to their per-connection processes and session commands,
        which run in sessions of their own: found in the daemons' cgroups and as their
        descendants, and signalled only while each pid still belongs to the process found.
        SIGKILL to whatever is left after 10 s."""
        daemons = [p for p in reversed(self.procs.values()) if p.poll() is None]
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
                self.log(f"process {pid} ({what}) did not stop on SIGTERM: killed it")
        for proc in [*self.procs.values(), *self.dead]:
            proc.poll()
        self.procs.clear()

    def remove_stale_tmpdirs(self) -> None:
        """Temporary directories of earlier runs killed with SIGKILL (their pid is gone).
        Their processes were stopped with their cgroups (see CpuGroups)."""
        for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{self.tag}-*-*")):
            m = re.fullmatch(rf"{self.tag}-(\d+)-\w+", os.path.basename(path))
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                self.log(f"removing {path}, left by an earlier run")
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------ OpenSSH baseline
    def setup_openssh(self, servers: list[tuple[str, int, str]]) -> list[str]:
        """One sshd per (name, port, extra config lines), each with a host key of its own, all
        authorising one fresh client key (self.client_key) for the login only; and the client's
        config file of its own. Returns the client's argv up to its options for a destination."""
        login = self.login.name
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege-separation directory
        key = self.client_key = self.path("client_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key], check=True)
        shutil.copy(key + ".pub", self.path("authorized_keys"))
        os.chmod(self.path("authorized_keys"), 0o644)
        sshds = []
        for name, port, extra in servers:
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
AllowUsers {login}
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
            sshds.append((port, self.start(name, [SSHD, "-D", "-e", "-f", cfg])))
        # One client config for every connection: -F keeps the machine's /etc/ssh/ssh_config and
        # ~/.ssh/config out of it, and ssh passes -F on to a -J hop.
        with open(self.path("ssh_config"), "w", encoding="utf-8") as f:
            f.write(f"""Host *
  User {login}
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
        for port, proc in sshds:
            wait_tcp(port, 10, proc)
        return ["ssh", "-F", self.path("ssh_config"), "-c", CIPHER, "-o", "Compression=no"]

    def negotiated(self, argv: list[str], timeout: float) -> list[dict]:
        """Key exchange and cipher of each hop `ssh -v ARGV true` makes, in order."""
        proc = self.spawn(argv[:1] + ["-v"] + argv[1:] + ["true"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = self.finish(proc, timeout)[1].decode(errors="replace")
        hops: list[dict] = []
        for line in err.splitlines():
            if "kex: algorithm:" in line:
                hops.append({"kex": line.split("kex: algorithm:")[1].strip()})
            elif "kex: client->server cipher:" in line and hops:
                hops[-1]["cipher"] = line.split("cipher:")[1].split()[0]
        return hops

    # ------------------------------------------------------------------ timed client runs
    def time_cmd(self, argv: list[str], env: dict | None = None) -> float:
        """Wall time of one fresh client process running `true` on the server."""
        t0 = time.perf_counter()
        proc = self.spawn(argv + ["true"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env)
        _, err = self.finish(proc, self.run_timeout)
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
            _, err = self.finish(client, self.run_timeout)
        except BaseException:
            self.kill_session(head)
            raise
        self.finish(head, 10)
        dt = time.perf_counter() - t0
        if client.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:6])} ... cat failed ({client.returncode}): "
                               f"{err.decode(errors='replace')}")
        return dt


def interleaved(runs: int, clients: dict[str, tuple], measure: Callable) -> dict[str, list]:
    """{client: [measure(client, *clients[client]) for each run]}, the clients taking turns in
    every run, so that a change in the machine's load falls on all of them alike."""
    out: dict[str, list] = {name: [] for name in clients}
    for _ in range(runs):
        for name, client in clients.items():
            out[name].append(measure(name, *client))
    return out


# ---------------------------------------------------------------------- numbers for the report
def median(values):
    """The median of the values that are not None; None if there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def r3(x):
    return None if x is None else round(x, 3)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def openssh_version() -> str:
    return subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
