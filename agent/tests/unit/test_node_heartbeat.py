"""A node is listed until it misses four heartbeats, counted in its own interval."""

from __future__ import annotations

import time

from gatehouse.auth.authz import Identity


async def _expiry(auth, name: str, interval) -> float:
    node = Identity(name, "node", auth.cluster_name)
    before = time.time()
    await auth.heartbeat_node(node, name, "127.0.0.1:3022", {"env": "dev"}, name, interval, observed="127.0.0.1")
    item = await auth.backend.get(f"nodes/{name}")
    return item.expires - before


async def test_node_expiry_follows_its_own_heartbeat_interval(auth):
    assert auth.cfg.heartbeat_interval == 5.0
    assert 119 < await _expiry(auth, "slow", 30.0) <= 120.5
    assert 3.9 < await _expiry(auth, "fast", 1.0) <= 4.5


async def test_node_without_an_interval_uses_the_auth_servers(auth):
    assert 19.9 < await _expiry(auth, "old", None) <= 20.5
