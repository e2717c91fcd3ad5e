"""What a draining process closes (listeners.drain_step), and the drain_timeout setting."""

from __future__ import annotations

import pytest

from conftest import raised_message
from gatehouse import listeners
from gatehouse.config import parse


class FakeConn:
    def __init__(self, channels: int):
        self.channels = channels
        self.closed = False

    def close(self):
        self.closed = True


class FakeLimits:
    def __init__(self, *conns):
        self.conns = set(conns)

    def connections(self):
        return {c for c in self.conns if not c.closed}

    @staticmethod
    def open_channels(conn):
        return conn.channels


@pytest.fixture(autouse=True)
def fresh():
    listeners.reset_for_tests()
    yield
    listeners.reset_for_tests()


def test_idle_connections_close_after_the_grace_busy_ones_stay():
    idle, busy = FakeConn(0), FakeConn(1)
    tunnel_idle, tunnel_busy = FakeConn(1), FakeConn(3)   # a tunnel always carries its heartbeat channel
    listeners.serving("node", limits=FakeLimits(idle, busy))
    listeners.serving("tunnels", limits=FakeLimits(tunnel_idle, tunnel_busy), channels_when_idle=1)
    # Just seen idle: a client that has only just connected gets time to open its first channel.
    assert listeners.drain_step(now=100.0) == {"node": 2, "tunnels": 2}
    assert not idle.closed and not tunnel_idle.closed
    assert listeners.drain_step(now=100.0 + listeners.IDLE_GRACE) == {"node": 1, "tunnels": 1}
    assert idle.closed and tunnel_idle.closed and not busy.closed and not tunnel_busy.closed
    # A connection that opens a channel again starts its grace over once it is idle again.
    busy.channels = 0
    assert listeners.drain_step(now=200.0) == {"node": 1, "tunnels": 1}
    busy.channels = 2
    assert listeners.drain_step(now=201.0) == {"node": 1, "tunnels": 1}
    busy.channels = 0
    assert listeners.drain_step(now=202.0) == {"node": 1, "tunnels": 1}
    assert not busy.closed
    tunnel_busy.channels = 1
    assert listeners.drain_step(now=210.0) == {"tunnels": 1}
    assert busy.closed and not tunnel_busy.closed
    assert listeners.drain_step(now=215.0) == {}
    assert tunnel_busy.closed


def test_drain_timeout_setting():
    def cfg(value):
        return parse({"gatehouse": {"drain_timeout": value}, "auth_service": {"enabled": True, "cluster_name": "c"}})
    assert parse({"auth_service": {"enabled": True, "cluster_name": "c"}}).drain_timeout == 3600
    assert cfg("10m").drain_timeout == 600 and cfg(0).drain_timeout == 0 and cfg(90).drain_timeout == 90
    assert "gatehouse.drain_timeout must be 0 or more" in raised_message(cfg, "-5m")
    assert "gatehouse.drain_timeout" in raised_message(cfg, "soon")
