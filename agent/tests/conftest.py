"""Shared fixtures for the end-to-end tests: real gatehouse processes on loopback.

`cluster` starts one auth+proxy+node process (cluster "root.test", node "node1",
labels env=dev) in a temporary directory with free ports, and gives the tests
helpers to run `gatectl` and `gate` against it. It is module-scoped: each test
module that uses it gets a fresh cluster, torn down at the end of the module.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
START_TIMEOUT = 30.0
CMD_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("GATEHOUSE_CONFIG", None)
    env.update(extra)
    return env


def run_module(module: str, *args, input=None, env=None, timeout=CMD_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `python -m gatehouse.cli.MODULE ARGS` and return the completed process (text mode)."""
    kwargs = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([sys.executable, "-m", f"gatehouse.cli.{module}", *map(str, args)],
                          capture_output=True, text=not isinstance(input, bytes), env=env or base_env(),
                          timeout=timeout, **kwargs)


def ok(r: subprocess.CompletedProcess) -> str:
    """The command succeeded: its stdout."""
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    return r.stdout


def fails(r: subprocess.CompletedProcess, fragment: str, code: int | None = None) -> str:
    """The command failed (with CODE, if given) and said FRAGMENT: its stderr and stdout."""
    out = (r.stderr or "") + (r.stdout or "")
    assert r.returncode != 0, f"expected failure, got exit 0\nstdout: {r.stdout!r}"
    if code is not None:
        assert r.returncode == code, f"exit {r.returncode} != {code}: {out!r}"
    assert fragment in out, f"{fragment!r} not in output: {out!r}"
    return out


def raised_message(func, *args, **kwargs) -> str:
    """FUNC raised BadParameter: its message, which must be one line."""
    from gatehouse.errors import BadParameter
    with pytest.raises(BadParameter) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def wait_until(check, timeout: float = 20.0, what: str = "condition"):
    """Poll CHECK until it returns a true value (returned); AssertionError after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def write_yaml(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


class Daemon:
    """One `gatehouse start -c CFG` process with its stderr in a log file."""

    def __init__(self, config_path: str, log_path: str, args: tuple = ()):
        self.config_path = config_path
        self.log_path = log_path
        self.args = list(args)   # more `gatehouse start` options, e.g. --pid-file
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Daemon":
        # Readiness is a new "gatehouse is running" line after this point (the log survives restarts).
        self._ready_lines = self.log_text().count("gatehouse is running")
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gatehouse.cli.daemon", "start", "-c", self.config_path,
                                      *self.args],
                                     stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env=base_env())
        logf.close()
        if wait:
            self.wait_ready()
        return self

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count("gatehouse is running") > self._ready_lines:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"gatehouse exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"gatehouse did not become ready in {timeout}s:\n{self.log_text()[-4000:]}")

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


class Cluster:
    """An auth+proxy+node gatehouse process plus helpers for gatectl and gate."""

    cluster_name = "root.test"
    node_name = "node1"

    def __init__(self, tmp: str, extra_auth: str = "", ssh: bool = True, cluster_name: str | None = None,
                 node_name: str | None = None, extra_general: str = "", extra_proxy: str = ""):
        self.cluster_name = cluster_name or self.cluster_name
        self.node_name = node_name or self.node_name
        self.tmp = tmp
        os.makedirs(tmp, exist_ok=True)
        self.data_dir = os.path.join(tmp, "data")
        self.gate_home = os.path.join(tmp, "gate")
        self.auth_port, self.web_port, self.ssh_proxy_port, self.tunnel_port, self.node_port = \
            (free_port() for _ in range(5))
        self.web_addr = f"127.0.0.1:{self.web_port}"
        self.auth_addr = f"127.0.0.1:{self.auth_port}"
        cfg = (f"gatehouse: {{nodename: {self.node_name}, data_dir: {self.data_dir}, log: {{severity: DEBUG}}"
               f"{extra_general}}}\n"
               f"auth_service: {{enabled: true, cluster_name: {self.cluster_name}, "
               f"listen_addr: '{self.auth_addr}'{extra_auth}}}\n"
               f"proxy_service: {{enabled: true, web_listen_addr: '{self.web_addr}', "
               f"listen_addr: '127.0.0.1:{self.ssh_proxy_port}', tunnel_listen_addr: '127.0.0.1:{self.tunnel_port}'"
               f"{extra_proxy}}}\n")
        if ssh:
            cfg += f"ssh_service: {{enabled: true, listen_addr: '127.0.0.1:{self.node_port}', labels: {{env: dev}}}}\n"
        self.config_path = write_yaml(os.path.join(tmp, "gatehouse.yaml"), cfg)
        self.log_path = os.path.join(tmp, "gatehouse.log")
        self.audit_path = os.path.join(self.data_dir, "log", "audit.jsonl")
        self.daemon = Daemon(self.config_path, self.log_path)
        self.extra: list[Daemon] = []

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "Cluster":
        self.daemon.start()
        return self

    def stop(self) -> None:
        for d in self.extra:
            d.stop()
        self.daemon.stop()

    def restart(self) -> None:
        self.daemon.stop()
        self.daemon.start()
        self.wait_node(self.node_name)

    # ---------------------------------------------------------------- commands
    def run_gatectl(self, *args, input=None, timeout=CMD_TIMEOUT) -> subprocess.CompletedProcess:
        return run_module("gatectl", "-c", self.config_path, *args, input=input, timeout=timeout)

    def run_gate(self, *args, input=None, gate_home=None, timeout=CMD_TIMEOUT) -> subprocess.CompletedProcess:
        return run_module("gate", *args, input=input, timeout=timeout,
                          env=base_env(GATE_HOME=gate_home or self.gate_home))

    def gate_env(self, gate_home=None) -> dict:
        return base_env(GATE_HOME=gate_home or self.gate_home)

    def login(self, user: str, password: str, gate_home=None, *extra) -> subprocess.CompletedProcess:
        return self.run_gate("login", f"--proxy={self.web_addr}", f"--user={user}", "--insecure",
                             "--password-stdin", *extra, input=password + "\n", gate_home=gate_home)

    def add_user(self, name: str, roles: str, logins: str, password: str) -> None:
        r = self.run_gatectl("users", "add", name, f"--roles={roles}", f"--logins={logins}", "--password-stdin",
                             input=password + "\n")
        assert r.returncode == 0, r.stderr

    def profile_dir(self, gate_home=None) -> str:
        return os.path.join(gate_home or self.gate_home, "profiles", "127.0.0.1")

    def audit(self, event: str | None = None) -> list[dict]:
        import json
        try:
            with open(self.audit_path, encoding="utf-8") as fh:
                entries = [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []
        return [e for e in entries if event is None or e.get("event") == event]

    def _backend(self):
        return sqlite3.connect(f"file:{os.path.join(self.data_dir, 'backend.sqlite')}?mode=ro", uri=True, timeout=10)

    def backend_revision(self) -> int:
        """The SQLite backend's revision counter now (every write moves it)."""
        with self._backend() as db:
            return db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]

    def keys_written_since(self, revision: int, kind: str = "") -> list[str]:
        """The keys of the writes after REVISION (only KIND, "put" or "delete", when given), from the
        SQLite backend's change log."""
        with self._backend() as db:
            rows = db.execute("SELECT type, key FROM changes WHERE revision > ? ORDER BY revision", (revision,))
            return [key for type_, key in rows if not kind or type_ == kind]

    def wait_node(self, name: str, timeout: float = START_TIMEOUT) -> None:
        """Until `gatectl get node/NAME` finds the node (it heartbeats on start)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.run_gatectl("get", f"node/{name}", "--format", "json")
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"node {name} never registered: {r.stderr}")
            time.sleep(0.3)

    def log_text(self) -> str:
        return self.daemon.log_text()

    @property
    def ca_pin(self) -> str:
        """The cluster's TLS CA fingerprint ('gatectl status'): what a member joining it sets as gatehouse.ca_pin."""
        from gatehouse import pki
        with open(os.path.join(self.data_dir, "admin", "ca.crt"), encoding="utf-8") as fh:
            return pki.tls_fingerprint(fh.read())


@contextlib.contextmanager
def unix_user(name: str):
    """A Unix account for test sessions: created for the block if it is missing, removed after."""
    try:
        pwd.getpwnam(name)
        created = False
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
        created = True
    try:
        yield
    finally:
        if created:
            subprocess.run(["userdel", "--remove", name], capture_output=True)


@pytest.fixture
def visitor_login():
    """The Unix login `visitor` exists for the test."""
    with unix_user("visitor"):
        yield "visitor"


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-e2e-")
    # All test logins come from 127.0.0.1 and share one per-address bucket; the default
    # (5/min) would throttle the suite. test_login_rate_limit runs its own cluster at 5/min.
    c = Cluster(tmp, extra_auth=", login_rate: 600")
    with unix_user("visitor"):
        try:
            c.start()
            yield c
        finally:
            c.stop()
            if os.environ.get("GATEHOUSE_E2E_KEEP"):
                print(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def auth(tmp_path):
    """An auth service in process on real SQLite in a temp dir (no API server runs)."""
    from gatehouse.auth.service import AuthService
    from gatehouse.config import parse
    cfg = parse({"gatehouse": {"nodename": "root", "data_dir": str(tmp_path / "data")},
                 "auth_service": {"enabled": True, "cluster_name": "root.test", "validate_rate": 6000,
                                  "listen_addr": "127.0.0.1:3025"}},  # not bound
                str(tmp_path / "gatehouse.yaml"))
    svc = await AuthService.open(cfg)
    try:
        yield svc
    finally:
        await svc.close()
