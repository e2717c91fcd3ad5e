"""Test hosts for Gatehouse end-to-end tests: a Python API over ``testnet.sh``.

All namespace logic lives in ``testnet.sh`` (next to this file); this module only
calls it.  A test host is a network namespace on a test bridge (198.18.0.0/24 by
default) plus a private mount namespace in which per-host directories are
bind-mounted over ``/etc/gatehouse``, ``/var/lib/gatehouse`` and
``/run/gatehouse``; commands run "in the host" see both.

    from testnet import TestNetwork, requires_netns

    def test_something(tmp_path):
        requires_netns()
        with TestNetwork(state_root=tmp_path / "hosts") as net:
            root = net.add_host("root", "198.18.0.10")
            leaf = net.add_host("leaf", "198.18.0.20", firewall_inbound_drop=True)
            (root.etc_dir / "gatehouse.yaml").write_text("...")
            proc = root.popen(["gatehouse", "start", "-c", "/etc/gatehouse/gatehouse.yaml"])
            root.wait_port(3025)
            print(leaf.run(["cat", "/etc/gatehouse/marker"]).stdout)

Everything (processes, namespaces, veths, the bridge if this network created it)
is torn down when the ``with`` block ends, also after a failure.  Hosts left over
by a crashed earlier run under the same names are replaced on ``add_host``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

SCRIPT = Path(__file__).resolve().with_name("testnet.sh")
RUN_ROOT = Path(os.environ.get("GATEHOUSE_TESTNET_RUN", "/run/gatehouse-testnet"))
NETNS_PREFIX = "gh-"

Command = Sequence[str | os.PathLike[str]] | str

__all__ = [
    "HostCommandError",
    "TestHost",
    "TestNetwork",
    "TestnetError",
    "netns_unavailable_reason",
    "requires_netns",
]


class TestnetError(RuntimeError):
    """testnet.sh failed (bringing a host up or down)."""

    __test__ = False


class HostCommandError(subprocess.CalledProcessError):
    """A command run in a test host exited non-zero; the message includes its output."""

    def __init__(self, host: str, proc: subprocess.CompletedProcess) -> None:
        super().__init__(proc.returncode, proc.args, proc.stdout, proc.stderr)
        self.host = host

    def __str__(self) -> str:
        text = f"in test host {self.host!r}: {super().__str__()}"
        for label, data in (("stdout", self.stdout), ("stderr", self.stderr)):
            if data:
                if isinstance(data, bytes):
                    data = data.decode(errors="replace")
                text += f"\n--- {label} (last 2000 chars) ---\n{data[-2000:]}"
        return text


def _script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``testnet.sh ARGS``; raise TestnetError with its stderr on failure."""
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise TestnetError(
            f"testnet.sh {' '.join(args)} failed (exit {proc.returncode}):\n"
            f"{proc.stderr.strip()}\n{proc.stdout.strip()}".rstrip()
        )
    return proc


def _argv(cmd: Command) -> list[str]:
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    return [os.fspath(c) for c in cmd]


def _env(env: dict[str, str] | None) -> dict[str, str] | None:
    # env= adds to (overrides) the caller's environment; PATH etc. stay usable.
    return None if env is None else {**os.environ, **env}


_WAIT_PORT = """
import socket, sys, time
addr, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        socket.create_connection((addr, port), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.05)
"""


class TestHost:
    """One test host.  Create it with :meth:`TestNetwork.add_host`."""

    __test__ = False

    def __init__(
        self,
        network: TestNetwork,
        name: str,
        ip: str,
        state_dir: Path,
        sshd_port: int | None,
        firewall_inbound_drop: bool,
    ) -> None:
        self.network = network
        self.name = name
        self.ip = ip
        self.netns = NETNS_PREFIX + name
        self.state_dir = state_dir
        self.etc_dir = state_dir / "etc"  # = /etc/gatehouse inside the host
        self.lib_dir = state_dir / "lib"  # = /var/lib/gatehouse inside the host
        self.run_dir = state_dir / "run"  # = /run/gatehouse inside the host
        self.sshd_dir = state_dir / "sshd"  # sshd_config, host key, log, pidfile
        self.authorized_keys = self.sshd_dir / "authorized_keys"
        self.sshd_port = sshd_port
        self.firewall_inbound_drop = firewall_inbound_drop
        # the process that holds the host's namespaces open
        self.anchor_pid = int((RUN_ROOT / name / "anchor.pid").read_text())
        self._procs: list[subprocess.Popen] = []

    def __repr__(self) -> str:
        return f"<TestHost {self.name} {self.ip}>"

    def exec_argv(self, cmd: Command) -> list[str]:
        """argv that runs CMD inside the host (for your own subprocess calls).

        The chain ``bash testnet.sh exec`` -> ``nsenter`` -> CMD only execs, so the
        PID of a process started from this argv is CMD's own PID.
        """
        return ["bash", str(SCRIPT), "exec", self.name, "--", *_argv(cmd)]

    def run(
        self,
        cmd: Command,
        check: bool = True,
        timeout: float | None = 60,
        env: dict[str, str] | None = None,
        input: str | bytes | None = None,
        cwd: str | os.PathLike[str] | None = None,
        text: bool | None = None,
    ) -> subprocess.CompletedProcess:
        """Run CMD (argv list, or a string for ``sh -c``) in the host; capture output.

        ``env`` is added to the current environment.  Output is text unless
        ``input`` is bytes or ``text=False``.  ``check=True`` raises
        :class:`HostCommandError` (with the output in its message).
        """
        if text is None:
            text = not isinstance(input, bytes)
        proc = subprocess.run(
            self.exec_argv(cmd),
            check=False,
            capture_output=True,
            text=text,
            timeout=timeout,
            env=_env(env),
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            cwd=cwd,
        )
        if check and proc.returncode != 0:
            raise HostCommandError(self.name, proc)
        return proc

    def popen(self, cmd: Command, **kwargs: Any) -> subprocess.Popen:
        """Start a long-running CMD in the host; kwargs go to subprocess.Popen.

        ``env=`` is added to the current environment.  The returned Popen's pid
        is the command's pid.  The host remembers the process and kills and reaps
        it in :meth:`kill_all` and at teardown.
        """
        if "env" in kwargs:
            kwargs["env"] = _env(kwargs["env"])
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.exec_argv(cmd), **kwargs)
        self._procs.append(proc)
        return proc

    def wait_port(
        self,
        port: int,
        timeout: float = 10.0,
        address: str | None = None,
        from_root: bool = False,
    ) -> None:
        """Wait until a TCP connect to ADDRESS:PORT succeeds (ADDRESS: the host's IP).

        By default the connect is made from inside the host itself (so it works
        with ``firewall_inbound_drop`` and for 127.0.0.1); ``from_root=True``
        connects from the root namespace across the bridge instead.
        Raises TimeoutError.
        """
        address = address or self.ip
        deadline = time.monotonic() + timeout
        if from_root:
            while True:
                try:
                    socket.create_connection((address, port), timeout=0.5).close()
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        else:
            rc = self.run(
                [sys.executable, "-c", _WAIT_PORT, address, str(port), str(timeout)],
                check=False,
                timeout=timeout + 30,
            ).returncode
            if rc == 0:
                return
        where = "the root namespace" if from_root else f"host {self.name}"
        raise TimeoutError(f"{address}:{port} did not accept a TCP connection from {where} within {timeout}s")

    def kill_all(self) -> None:
        """Kill every process in the host except its anchor and sshd; reap popen()s."""
        _script("killall", self.name)
        self._reap()

    def _reap(self) -> None:
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def ssh_argv(self, key: str | os.PathLike[str], *cmd: str, user: str = "root") -> list[str]:
        """``ssh`` argv that logs in to this host's sshd with KEY (root namespace side)."""
        if self.sshd_port is None:
            raise TestnetError(f"test host {self.name} has no sshd (add_host(..., sshd_port=N))")
        return [
            "ssh", "-i", os.fspath(key), "-p", str(self.sshd_port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
            f"{user}@{self.ip}", *cmd,
        ]  # fmt: skip

    def down(self) -> None:
        """Tear this host down now (also happens when the network closes)."""
        self.network.remove_host(self.name)


class TestNetwork:
    """A set of test hosts on one bridge; a context manager that tears all down.

    ``state_root`` holds each host's directories (``state_root/NAME/{etc,lib,run,sshd}``);
    without it a temporary directory is used and deleted at the end.
    """

    __test__ = False

    def __init__(self, bridge: str = "ghbr0", state_root: str | os.PathLike[str] | None = None) -> None:
        self.bridge = bridge
        self._own_state_root = state_root is None
        self.state_root = Path(state_root if state_root is not None else tempfile.mkdtemp(prefix="gatehouse-testnet-"))
        self.hosts: dict[str, TestHost] = {}

    def __enter__(self) -> Self:
        reason = netns_unavailable_reason()
        if reason:
            raise TestnetError(f"test hosts are unavailable: {reason}")
        self.state_root.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.close()
        except Exception as err:  # never hide the test's own failure behind a teardown error
            if exc_type is None:
                raise
            warnings.warn(f"test network teardown failed: {err}", stacklevel=2)

    def __getitem__(self, name: str) -> TestHost:
        return self.hosts[name]

    def add_host(
        self,
        name: str,
        ip: str,
        firewall_inbound_drop: bool = False,
        sshd_port: int | None = None,
        default_route: bool = False,
        authorized_keys: str | os.PathLike[str] | None = None,
    ) -> TestHost:
        """Bring up test host NAME with address IP (a leftover of the same name is replaced).

        ``firewall_inbound_drop``: drop every new inbound connection (the host can
        still connect out) - except, with ``sshd_port``, ssh from the bridge
        address (198.18.0.1), the root namespace.  ``sshd_port``: run an OpenSSH
        sshd inside the host; ``authorized_keys`` (a file path, or public key
        text) may log in as root.  ``default_route``: route via the bridge address
        (by default only the host's /24 is reachable).
        """
        if name in self.hosts:
            raise TestnetError(f"test host {name} already exists in this network")
        args = ["up", name, ip, "--fresh", "--bridge", self.bridge, "--state-root", str(self.state_root)]
        if firewall_inbound_drop:
            args.append("--firewall-inbound-drop")
        if sshd_port is not None:
            args += ["--sshd", str(int(sshd_port))]
        if default_route:
            args.append("--default-route")
        keyfile = None
        if authorized_keys is not None:
            if isinstance(authorized_keys, str) and (
                "\n" in authorized_keys.strip() or authorized_keys.lstrip().startswith(("ssh-", "ecdsa-", "sk-"))
            ):
                fd, keyfile = tempfile.mkstemp(prefix=f".{name}-authorized-keys-", dir=self.state_root)
                with os.fdopen(fd, "w") as f:
                    f.write(authorized_keys.strip() + "\n")
                args += ["--authorized-keys", keyfile]
            else:
                args += ["--authorized-keys", os.fspath(authorized_keys)]
        try:
            _script(*args)
        finally:
            if keyfile:
                os.unlink(keyfile)
        host = TestHost(self, name, ip, self.state_root / name, sshd_port, firewall_inbound_drop)
        self.hosts[name] = host
        return host

    def remove_host(self, name: str) -> None:
        """Tear host NAME down: kill its processes, delete its netns and veth."""
        host = self.hosts.pop(name)
        try:
            _script("down", name)
        finally:
            host._reap()

    def close(self) -> None:
        """Tear down every host (collecting errors), then the temporary state root."""
        errors = []
        for name in list(self.hosts):
            try:
                self.remove_host(name)
            except Exception as err:  # noqa: BLE001 - keep tearing down the others
                errors.append(f"{name}: {err}")
        if self._own_state_root:
            shutil.rmtree(self.state_root, ignore_errors=True)
        if errors:
            raise TestnetError("teardown failed for " + "; ".join(errors))


_UNSET = object()
_reason_cache: Any = _UNSET


def netns_unavailable_reason() -> str | None:
    """Why test hosts cannot be created here (None: they can).  Cached."""
    global _reason_cache
    if _reason_cache is _UNSET:
        _reason_cache = _probe()
    return _reason_cache


def _probe() -> str | None:
    if sys.platform != "linux":
        return "test hosts need Linux network namespaces"
    if os.geteuid() != 0:
        return "test hosts need root (network/mount namespaces, bridge); CI runs these tests as root"
    for tool in ("ip", "nsenter", "unshare", "flock", "setsid", "bash"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (iproute2 / util-linux)"
    try:
        subprocess.run(["ip", "netns", "list"], capture_output=True, check=True, timeout=10)
        subprocess.run(["unshare", "--net", "--mount", "--uts", "true"], capture_output=True, check=True, timeout=10)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        detail = getattr(err, "stderr", b"") or b""
        return f"'ip netns' / namespaces are unavailable here: {detail.decode(errors='replace').strip() or err}"
    return None


def requires_netns() -> None:
    """pytest helper: skip the calling test/fixture unless test hosts can be created."""
    import pytest

    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
