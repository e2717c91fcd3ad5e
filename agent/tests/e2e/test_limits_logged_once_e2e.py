"""A refused connection when a limit is reached is logged once with the limit's name, not per
connection (issue 16), on a real gatehouse process:

* the open files limit: the running process's soft RLIMIT_NOFILE is lowered (prlimit) just above
  what it holds, then many connections arrive; asyncio retries accept() every second and
  would log a traceback each time (fdlimit.AcceptRefusalLog logs once instead);
* max_startups on the proxy's SSH listener and on its tunnel listener (the node's is in
  attacks/test_attacks_routing.py::test_preauth_connection_cap).
"""

from __future__ import annotations

import os
import shutil
import socket
import resource
import tempfile
import time

import pytest

from conftest import Cluster, ok


@pytest.fixture
def one_cluster():
    if os.geteuid() != 0:
        pytest.skip("changing another process's open files limit needs root")
    tmp = tempfile.mkdtemp(prefix="gatehouse-limits-")
    c = Cluster(tmp, ssh=False, extra_proxy=", max_startups: 3")
    try:
        yield c.start()
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _connect_many(port: int, count: int, banner: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if banner:
            s.sendall(banner)
        socks.append(s)
    return socks


def test_open_files_limit_refusals_are_logged_once_with_the_limit_name(one_cluster):
    c = one_cluster
    pid = c.daemon.proc.pid
    held = len(os.listdir(f"/proc/{pid}/fd"))
    limit = held + 8
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))  # the soft limit only: it can go back up
    socks = []
    try:
        socks = _connect_many(c.web_port, 40)  # the kernel completes them; the process cannot accept them all
        # asyncio retries accept() once a second: a few seconds give several refusals to log (or not).
        time.sleep(4)
        log = c.log_text()
    finally:
        for s in socks:
            s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert log.count("new connections wait: the open files limit of this process (RLIMIT_NOFILE, "
                     f"{limit}) is reached") == 1, log[-3000:]
    assert "socket.accept() out of system resource" not in log, "asyncio's traceback per retry"
    # With room again the process serves as before.
    assert "Cluster" in ok(c.run_gatectl("status"))


@pytest.mark.parametrize("listener, what", [("ssh_proxy_port", "this proxy"),
                                            ("tunnel_port", "this proxy's tunnel listener")])
def test_max_startups_is_logged_once_per_listener(one_cluster, listener, what):
    c = one_cluster
    port = getattr(c, listener)
    socks = _connect_many(port, 3, b"SSH-2.0-idle\r\n")  # the cap: connections that never authenticate
    try:
        time.sleep(1)  # let the listener count them before more arrive
        refused = []
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"SSH-2.0-more\r\n")
            s.settimeout(10)
            data = b""
            try:
                while b"try again later" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            refused.append(b"too many unauthenticated connections" in data)
            s.close()
    finally:
        for s in socks:
            s.close()
    assert all(refused), "each connection beyond the cap is refused with the reason"
    assert c.log_text().count(f"{what}: 3 connections have not authenticated yet (proxy_service.max_startups)") \
        == 1, "the cap is logged once, not per refused connection"
