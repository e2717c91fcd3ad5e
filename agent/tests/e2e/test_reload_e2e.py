"""Reload without dropping sessions (gatehouse/reload.py), end to end on loopback.

A root (auth + proxy + node) and a leaf (auth + proxy + node) trusting it, both started
with --pid-file. A user session runs from the root through the root proxy, the leaf's
reverse tunnel and the leaf's node; it stays up while first the leaf and then the root
reload (`gatehouse reload`, i.e. SIGHUP): the new process takes the listening sockets,
new sessions go to it, the old process lets the running session finish and then exits.
The leaf stays online at the root throughout. A configuration the new process refuses
(invalid, or one it cannot start with) leaves the old process serving, with one sentence.
"""

from __future__ import annotations

import json
import os
import select
import socket
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import Daemon, fails, ok, run_module, unix_user, wait_until, write_yaml
from test_trust_e2e import LEAF, PASSWORD, Trust, tc_yaml


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Session:
    """A running `gate ssh` session from the root to the leaf's node: one line in, one line out."""

    def __init__(self, trust: Trust):
        script = 'echo "started $PPID"; while read line; do echo "got $line $PPID"; done'
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.cli.gate", "ssh", f"--cluster={LEAF}", "visitor@leafnode", script],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=trust.root.gate_env(), text=True, bufsize=1)
        words = self.line().split()
        assert words[0] == "started", words
        self.node_pid = int(words[1])  # the node process serving this session (its sessions' parent)

    def line(self, timeout: float = 30.0) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no output from the session within {timeout}s; stderr: {self.stderr_so_far()}"
        return self.proc.stdout.readline().strip()

    def stderr_so_far(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()

    def echo(self, text: str) -> str:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)


class Reloadable:
    """Pidfile, `gatehouse reload` and the processes a cluster's reloads leave behind."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.pid_file = os.path.join(cluster.tmp, "gatehouse.pid")
        cluster.daemon = Daemon(cluster.config_path, cluster.log_path, args=("--pid-file", self.pid_file))

    def pid(self) -> int:
        with open(self.pid_file, encoding="utf-8") as fh:
            return int(fh.read())

    def reload(self) -> subprocess.CompletedProcess:
        return run_module("daemon", "reload", "-c", self.cluster.config_path, "--pid-file", self.pid_file,
                          "--timeout", "120", timeout=150)

    def stop(self) -> None:
        self.cluster.stop()
        try:
            pid = self.pid()
        except (OSError, ValueError):
            return
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda: not alive(pid), 20, "the reloaded agent to stop")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def sites():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-reload-")
    trust = Trust(tmp)
    root, leaf = Reloadable(trust.root), Reloadable(trust.leaf)
    with unix_user("visitor"):
        try:
            trust.root.start()
            trust.leaf.start()
            trust.root.add_user("alice", "access", "visitor", PASSWORD)
            ok(trust.create_tc(trust.leaf, tc_yaml(trust.token(), trust.root.web_addr)))
            trust.wait_status("online")
            ok(trust.root.login("alice", PASSWORD))
            yield trust, root, leaf
        finally:
            leaf.stop()
            root.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


def new_session_output(trust: Trust) -> str:
    return ok(trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "echo new $PPID"))


def test_session_through_the_tunnel_survives_a_leaf_reload(sites):
    trust, _root, leaf = sites
    old = leaf.pid()
    session = Session(trust)
    assert session.node_pid == old
    assert session.echo("before") == f"got before {old}"

    out = ok(leaf.reload())
    new = leaf.pid()
    assert new != old and f"pid {new} serves now" in out
    assert alive(old), "the old leaf process drains while the session runs"
    # The running session goes on in the old process ...
    assert session.echo("during") == f"got during {old}"
    # ... new sessions reach the new one (through the leaf's new tunnel), and the leaf stays online.
    assert new_session_output(trust) == f"new {new}\n"
    assert trust.rc()["status"]["connection"] == "online"

    assert session.close() == 0
    wait_until(lambda: not alive(old), 30, "the old leaf process to exit once its session ended")
    assert "reload: drained in" in trust.leaf.log_text()
    assert alive(new) and new_session_output(trust) == f"new {new}\n"
    trust.wait_status("online")


def test_session_through_the_root_proxy_survives_a_root_reload(sites):
    trust, root, leaf = sites
    old = root.pid()
    session = Session(trust)
    assert session.echo("before") == f"got before {leaf.pid()}"

    out = ok(root.reload())
    new = root.pid()
    assert new != old and f"pid {new} serves now" in out
    assert alive(old)
    assert session.echo("during") == f"got during {leaf.pid()}"
    # The leaf dials the new root process (the old one told it that it is handing over); new
    # sessions go through the new process and the leaf's new tunnel.
    wait_until(lambda: "root root.test proxy" in trust.leaf.log_text()
               and "is handing over to a new process; dialling it" in trust.leaf.log_text(), 20,
               "the leaf to hear that the root proxy hands over")
    wait_until(lambda: trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true").returncode == 0,
               20, "a new session through the new root process")
    assert new_session_output(trust) == f"new {leaf.pid()}\n"
    for _ in range(5):  # online throughout: the draining process reports no disconnect
        assert trust.rc()["status"]["connection"] == "online"
        time.sleep(0.5)

    assert session.close() == 0
    wait_until(lambda: not alive(old), 30, "the old root process to exit once its session ended")
    assert trust.rc()["status"]["connection"] == "online"
    assert new_session_output(trust) == f"new {leaf.pid()}\n"
    # Logins and the web API are the new process's now.
    ok(trust.root.login("alice", PASSWORD))
    assert "leafnode" in ok(trust.root.run_gate("ls", f"--cluster={LEAF}"))


def test_a_config_the_new_process_refuses_keeps_the_old_one(sites):
    trust, _root, leaf = sites
    path = trust.leaf.config_path
    with open(path, encoding="utf-8") as fh:
        good = fh.read()
    pid = leaf.pid()
    session = Session(trust)
    try:
        # Invalid: `gatehouse reload` refuses it before it signals anything.
        write_yaml(path, good.replace("severity: DEBUG", "severity: LOUD"))
        out = fails(leaf.reload(), "gatehouse.log.severity must be DEBUG, INFO, WARN or ERROR, not 'LOUD'", 1)
        assert "nothing was reloaded" in out and len(out.strip().splitlines()) == 1
        # The same file with a bare SIGHUP: the new process refuses it, the old one keeps serving and says why.
        os.kill(pid, signal.SIGHUP)
        status = os.path.join(os.path.dirname(leaf.pid_file), "gatehouse.pid.reload")
        wait_until(lambda: os.path.exists(status) and json.load(open(status, encoding="utf-8"))["state"] == "failed",
                   60, "the reload to fail")
        error = json.load(open(status, encoding="utf-8"))["error"]
        assert "not 'LOUD'" in error and f"pid {pid} keeps serving" in error and "\n" not in error
        assert "reload failed: the new process refused to start: " in trust.leaf.log_text()

        # Valid, but the new process cannot start with it: its node port is taken.
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            taken = blocker.getsockname()[1]
            write_yaml(path, good.replace(f"127.0.0.1:{trust.leaf.node_port}", f"127.0.0.1:{taken}"))
            out = fails(leaf.reload(), "cannot start: Address already in use", 1)
            assert f"pid {pid} keeps serving" in out and len(out.strip().splitlines()) == 1

        assert leaf.pid() == pid and alive(pid)
        assert session.echo("still") == f"got still {pid}"
        assert new_session_output(trust) == f"new {pid}\n"
    finally:
        write_yaml(path, good)
        session.close()
    # A good configuration reloads again.
    ok(leaf.reload())
    assert leaf.pid() != pid
    wait_until(lambda: not alive(pid), 30, "the old leaf process to exit")


def test_reload_when_not_running_says_so(sites, tmp_path):
    trust, _root, _leaf = sites
    r = run_module("daemon", "reload", "-c", trust.leaf.config_path, "--pid-file", str(tmp_path / "none.pid"))
    fails(r, "gatehouse is not running", 3)
    assert "start it instead" in r.stderr
