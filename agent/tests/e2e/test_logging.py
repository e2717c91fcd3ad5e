"""The process log of `gatehouse start`: where it goes, its formats, DEBUG, and no secrets.

Real `gatehouse start` processes on loopback (auth + proxy + node in one process,
plus a node that joins with a token), driven through `gatectl` and `gate`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import (START_TIMEOUT, Cluster, Daemon, base_env, free_port, ok, run_module,
                      write_yaml)

PASSWORD = "Log-Test-pw-7f3a9c21"
WRONG_PASSWORD = "Wrong-pw-for-log-test-55e1"
CHOSEN_TOKEN = "chosen-node-token-9d8e7f6a5b4c3d2e"
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\[[\w.]+\] \S")


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("these tests start a node service, which needs root")


def start(cluster: Cluster, *flags: str) -> subprocess.Popen:
    """`gatehouse start -c CFG FLAGS` with stdout and stderr in separate files."""
    out = open(os.path.join(cluster.tmp, "stdout.txt"), "wb")
    err = open(os.path.join(cluster.tmp, "stderr.txt"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gatehouse.cli.daemon", "start", "-c", cluster.config_path,
                             *flags], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=base_env())
    out.close()
    err.close()
    return proc


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=5)


def read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def wait_for(proc: subprocess.Popen, path: str, text: str, timeout: float = START_TIMEOUT) -> None:
    import time
    deadline = time.monotonic() + timeout
    while text not in read(path):
        if proc.poll() is not None:
            raise AssertionError(f"gatehouse exited with {proc.returncode}: {read(path)[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in {path}: {read(path)[-3000:]}")
        time.sleep(0.1)


def cluster_with_log(tmp_path, log: str) -> Cluster:
    """A Cluster (auth + proxy + node1) whose config has `log: {LOG}` instead of the fixture's DEBUG."""
    c = Cluster(str(tmp_path / "c"), extra_auth=", login_rate: 600")
    text = read(c.config_path).replace("log: {severity: DEBUG}", f"log: {log}")
    assert f"log: {log}" in text
    write_yaml(c.config_path, text)
    return c


def test_json_log_file_with_debug_flag_holds_no_secrets(tmp_path, visitor_login):
    """JSON lines to the configured file, DEBUG from --debug, and no token or password in them."""
    log_file = str(tmp_path / "gatehouse.jsonl")
    c = cluster_with_log(tmp_path, f"{{output: '{log_file}', format: json, severity: WARN}}")
    proc = start(c, "--debug")
    node = None
    try:
        wait_for(proc, log_file, "gatehouse is running")
        c.wait_node("node1")
        # Secrets that pass through the auth service: a generated join token, one whose
        # value the admin chose, the password set for a user, a good and a bad login.
        tok = json.loads(ok(c.run_gatectl("tokens", "add", "--type=node", "--ttl=5m", "--format", "json")))
        generated = tok["token"]
        ok(c.run_gatectl("tokens", "add", "--type=node", "--ttl=5m", "--value-stdin", input=CHOSEN_TOKEN + "\n"))
        c.add_user("alice", "access", "visitor", PASSWORD)
        ok(c.login("alice", PASSWORD))
        bad = c.login("alice", WRONG_PASSWORD, str(tmp_path / "gate-bad"))
        assert bad.returncode != 0 and "invalid user name or password" in bad.stderr, bad.stderr
        # ... and a node that joins with the chosen token, itself logging at DEBUG.
        node_data = str(tmp_path / "node2")
        node_cfg = write_yaml(str(tmp_path / "node2.yaml"), (
            f"gatehouse: {{nodename: node2, data_dir: {node_data}, auth_servers: ['{c.auth_addr}'], "
            f"join_token: '{CHOSEN_TOKEN}', ca_pin: '{c.ca_pin}', log: {{severity: DEBUG}}}}\n"
            f"ssh_service: {{enabled: true, listen_addr: '127.0.0.1:{free_port()}'}}\n"))
        node = Daemon(node_cfg, str(tmp_path / "node2.log")).start()
        c.wait_node("node2")
        assert ok(c.run_gate("ssh", "visitor@node2", "echo joined")) == "joined\n"
    finally:
        if node is not None:
            node.stop()
        status = stop(proc)
    assert status == 0

    text = read(log_file)
    lines = text.splitlines()
    assert lines and text.endswith("\n")
    entries = []
    for line in lines:
        entry = json.loads(line)   # every line is one complete JSON object
        assert isinstance(entry, dict), line
        assert {"time", "level", "component", "message"} <= entry.keys(), line
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), line
        entries.append(entry)
    levels = {e["level"] for e in entries}
    # --debug wins over severity: WARN, so DEBUG and INFO lines are there, from Gatehouse itself
    assert {"DEBUG", "INFO"} <= levels, levels
    assert any(e["level"] == "DEBUG" and e["component"].startswith("gatehouse") for e in entries)
    assert any(e["message"].startswith("gatehouse is running") for e in entries)
    # the log went to the file only: nothing on the process's stdout or stderr
    assert read(os.path.join(c.tmp, "stderr.txt")) == ""
    assert read(os.path.join(c.tmp, "stdout.txt")) == ""

    node_log = read(str(tmp_path / "node2.log"))
    assert " DEBUG " in node_log and "joined cluster root.test as node node2" in node_log
    logs = {"auth+proxy+node log": text, "joining node log": node_log, "audit log": read(c.audit_path)}
    for secret in (generated, CHOSEN_TOKEN, PASSWORD, WRONG_PASSWORD):
        for name, content in logs.items():
            assert secret not in content, f"secret {secret[:6]}... found in the {name}"


@pytest.mark.parametrize("log,flags,debug_expected", [
    ("{}", (), False),                     # defaults: text, INFO, stderr
    ("{severity: DEBUG}", (), True),       # log.severity: DEBUG in the config
    ("{severity: INFO}", ("--debug",), True),
], ids=["default-info", "config-debug", "flag-debug"])
def test_text_log_to_stderr(tmp_path, log, flags, debug_expected):
    c = cluster_with_log(tmp_path, log)
    err = os.path.join(c.tmp, "stderr.txt")
    proc = start(c, *flags)
    try:
        wait_for(proc, err, "gatehouse is running")
        c.wait_node("node1")   # a node heartbeat and cache updates: DEBUG lines if enabled
        ok(c.run_gatectl("tokens", "add", "--type=node", "--ttl=5m"))
    finally:
        assert stop(proc) == 0
    lines = read(err).splitlines()
    assert lines, "nothing logged to stderr"
    for line in lines:
        assert TEXT_LINE.match(line), f"not a text log line: {line!r}"
    assert any(re.search(r" INFO\s+\[gatehouse\] gatehouse is running", line) for line in lines), lines
    debug = [line for line in lines if re.search(r" DEBUG \[gatehouse[\].]", line)]
    if debug_expected:
        assert debug, "no DEBUG lines from gatehouse"
    else:
        assert not [line for line in lines if " DEBUG " in line], "DEBUG lines at severity INFO"
    assert read(os.path.join(c.tmp, "stdout.txt")) == ""


def test_log_file_that_cannot_be_opened(tmp_path):
    cfg = write_yaml(str(tmp_path / "g.yaml"), (
        f"gatehouse: {{data_dir: {tmp_path / 'data'}, log: {{output: {tmp_path / 'missing' / 'g.log'}}}}}\n"
        f"auth_service: {{enabled: true, cluster_name: log.test, listen_addr: '127.0.0.1:{free_port()}'}}\n"))
    r = run_module("daemon", "start", "-c", cfg, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip() == (f"ERROR: cannot open the log file {tmp_path / 'missing' / 'g.log'} "
                                "(gatehouse.log.output): No such file or directory; create its directory "
                                "or choose another path"), r.stderr
    assert not os.path.exists(tmp_path / "data" / "backend.sqlite")
