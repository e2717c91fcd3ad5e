"""Shared harness for the end-to-end modules that run gatehouse daemons on test hosts.

A :class:`Site` is a set of test hosts (one :class:`testnet.TestNetwork`) with the
gatehouse daemons started in them, each daemon's log in a temporary directory, and
helpers to run ``gatectl`` inside a host and ``gate`` on the controller (the root
namespace). Test modules subclass it for their own topology helpers and bring it up
with :meth:`Site.running`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Self

from testnet import TestNetwork

REPO = Path(__file__).resolve().parents[2]
SRC = str(REPO / "agent" / "src")
CFG = "/etc/gatehouse/gatehouse.yaml"

# One polling helper and one Unix-account helper for every end-to-end test: the agent tests' (re-exported).
sys.path.insert(0, str(REPO / "agent" / "tests"))
from conftest import unix_user, wait_until  # noqa: E402,F401


class Site:
    """Test hosts, the daemons started in them (by host name), and gatectl/gate helpers."""

    def __init__(self, net: TestNetwork, tmp: str):
        self.net = net
        self.tmp = tmp
        self.daemons: dict[str, subprocess.Popen] = {}

    @classmethod
    @contextlib.contextmanager
    def running(cls, bridge: str, tmp_prefix: str, hosts: Iterable[tuple[str, str, bool]]) -> Iterator[Self]:
        """Hosts (name, address, firewall_inbound_drop) on BRIDGE and a temporary log directory.

        On exit every daemon still in ``daemons`` is stopped, the hosts go down, and the logs
        are removed (kept, and their directory printed, when GATEHOUSE_E2E_KEEP is set).
        """
        tmp = tempfile.mkdtemp(prefix=tmp_prefix)
        try:
            with TestNetwork(bridge=bridge) as net:
                for name, address, firewall in hosts:
                    net.add_host(name, address, firewall_inbound_drop=firewall)
                site = cls(net, tmp)
                try:
                    yield site
                finally:
                    for host in list(site.daemons):
                        site.stop(host)
        finally:
            if os.environ.get("GATEHOUSE_E2E_KEEP"):
                print(f"kept logs in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)

    def allow_inbound(self, host: str, source: str) -> None:
        """Let SOURCE through HOST's inbound firewall (e.g. a leaf site's inside network)."""
        self.net[host].run(["iptables", "-I", "INPUT", "1", "-s", source, "-j", "ACCEPT"])

    def connects(self, host: str, address: str, port: int) -> bool:
        """Whether a TCP connection from HOST to ADDRESS:PORT succeeds within 2 s."""
        probe = f"import socket; socket.create_connection(('{address}', {port}), 2)"
        return self.net[host].run([sys.executable, "-c", probe], check=False).returncode == 0

    def start(self, host: str, config: str | None = None) -> None:
        """Start `gatehouse start -c CFG` in HOST (with CONFIG written first, if given) and wait until it runs."""
        if config is not None:
            (self.net[host].etc_dir / "gatehouse.yaml").write_text(config)
        log = open(os.path.join(self.tmp, f"{host}.log"), "ab")
        self.daemons[host] = self.net[host].popen(
            [sys.executable, "-m", "gatehouse.cli.daemon", "start", "-c", CFG], stdout=log, stderr=log,
            env={"PYTHONPATH": SRC})
        log.close()
        wait_until(lambda: "gatehouse is running" in self.log(host) or self.daemons[host].poll() is not None,
                   30, f"{host} to start")
        assert self.daemons[host].poll() is None, self.log(host)[-3000:]

    def stop(self, host: str) -> None:
        proc = self.daemons.pop(host)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log(self, host: str) -> str:
        try:
            return Path(self.tmp, f"{host}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def gatectl(self, host: str, *args, input: str = "") -> subprocess.CompletedProcess:
        """`gatectl -c CFG ARGS` in HOST, whatever its exit code."""
        return self.net[host].run([sys.executable, "-m", "gatehouse.cli.gatectl", "-c", CFG, *args],
                                  env={"PYTHONPATH": SRC}, check=False, input=input)

    def ok(self, host: str, *args, input: str = "") -> str:
        """`gatectl ARGS` in HOST, which must succeed: its stdout."""
        r = self.gatectl(host, *args, input=input)
        assert r.returncode == 0, f"gatectl {' '.join(args)} on {host}: {r.stderr}{r.stdout}"
        return r.stdout

    def ca_pin(self, host: str) -> str:
        """The TLS CA fingerprint `gatectl status` shows in HOST: what a member joining it pins (gatehouse.ca_pin)."""
        for line in self.ok(host, "status").splitlines():
            if line.startswith("tls CA ") and not line.endswith("(inactive)"):
                return line.split()[-1]
        raise AssertionError(f"no TLS CA fingerprint in gatectl status on {host}")

    def create(self, host: str, name: str, docs: list[dict], *flags) -> str:
        """Write DOCS as /etc/gatehouse/NAME in HOST and `gatectl create` it."""
        (self.net[host].etc_dir / name).write_text("\n---\n".join(json.dumps(d) for d in docs))
        return self.ok(host, "create", *flags, f"/etc/gatehouse/{name}")

    def run_gate(self, home: str, *args, input: str | None = None) -> subprocess.CompletedProcess:
        """`gate ARGS` on the controller with GATE_HOME=HOME (stdin: INPUT, or nothing)."""
        env = dict(os.environ, PYTHONPATH=SRC, GATE_HOME=home)
        return subprocess.run([sys.executable, "-m", "gatehouse.cli.gate", *args], capture_output=True, text=True,
                              env=env, timeout=60, input=input, stdin=None if input is not None else subprocess.DEVNULL)

    def gate_login(self, home: str, proxy: str, user: str, password: str) -> subprocess.CompletedProcess:
        """`gate login` to PROXY as USER with PASSWORD on stdin (a self-signed proxy is accepted)."""
        return self.run_gate(home, "login", f"--proxy={proxy}", f"--user={user}", "--insecure", "--password-stdin",
                             input=password + "\n")
