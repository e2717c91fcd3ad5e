"""Listening sockets handed from one process to the next (listeners.listen), on loopback."""

from __future__ import annotations

import os
import socket

import pytest

from gatehouse import listeners


@pytest.fixture(autouse=True)
def fresh():
    listeners.reset_for_tests()
    yield
    listeners.reset_for_tests()
    os.environ.pop(listeners.LISTEN_FDS_ENV, None)


def test_a_new_socket_per_address_with_the_families_asked_for():
    v4 = listeners.listen("node", "127.0.0.1", 0)
    assert v4.family == socket.AF_INET and v4.getsockname()[0] == "127.0.0.1"
    assert v4.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and not v4.getblocking()
    assert not os.get_inheritable(v4.fileno())
    every = listeners.listen("proxy ssh", "", 0)      # empty host: every address
    if every.family == socket.AF_INET6:
        assert every.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0   # IPv4 too
        with socket.create_connection(("127.0.0.1", every.getsockname()[1]), timeout=5):
            pass
    assert listeners.sockets() == {"node": v4, "proxy ssh": every}
    for sock in (v4, every):
        sock.close()


def test_an_inherited_socket_is_adopted_for_its_address_only():
    old_node = socket.create_server(("127.0.0.1", 0))
    old_web = socket.create_server(("127.0.0.1", 0))
    node_port, web_port = old_node.getsockname()[1], old_web.getsockname()[1]
    # What a predecessor passes on: copies of its descriptors, named in the environment.
    fds = [os.dup(old_node.fileno()), os.dup(old_web.fileno())]
    os.environ[listeners.LISTEN_FDS_ENV] = ",".join(map(str, fds))
    adopted = listeners.listen("node", "127.0.0.1", node_port)
    assert adopted.fileno() == fds[0] and listeners.LISTEN_FDS_ENV not in os.environ
    # A connection waiting in the queue before the handover is accepted by the successor.
    client = socket.create_connection(("127.0.0.1", node_port), timeout=5)
    old_node.close()
    adopted.setblocking(True)
    conn, _ = adopted.accept()
    conn.close()
    client.close()
    # The web port moved in the new configuration: a new socket; the old one is closed as unused.
    moved = listeners.listen("proxy web", "127.0.0.1", 0)
    assert moved.getsockname()[1] != web_port
    listeners.close_unused_inherited()
    with pytest.raises(OSError):
        os.fstat(fds[1])
    old_web.close()
    for sock in (adopted, moved):
        sock.close()


def test_something_else_inherited_is_refused(caplog):
    r, w = os.pipe()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    os.environ[listeners.LISTEN_FDS_ENV] = f"{os.dup(udp.fileno())},nonsense"
    sock = listeners.listen("node", "127.0.0.1", 0)
    assert "is not a listening TCP socket" in caplog.text and "ignoring the inherited listening socket" in caplog.text
    sock.close()
    udp.close()
    os.close(r)
    os.close(w)
