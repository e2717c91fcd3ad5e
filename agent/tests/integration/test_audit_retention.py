"""Audit retention at auth (issue 18 item 6): real auth service in process on real SQLite.

Events beyond audit.events_max_count leave the start of the stream, an audit.prune event
records where the kept chain starts, and `verify` still proves the kept chain; a leaf that
forwards keeps what its root has not confirmed; recordings beyond recordings_max_size go,
oldest first.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from gatehouse import auditchain
from gatehouse.auth import keys
from gatehouse.auth.authz import Identity

ADMIN = Identity("admin", "admin", "c.test")
SID = "0f0e0d0c-0b0a-4908-8706-050403020100"


async def open_auth(tmp_path, **audit):
    from gatehouse.auth.service import AuthService
    from gatehouse.config import parse
    cfg = parse({"gatehouse": {"nodename": "a", "data_dir": str(tmp_path / "data")},
                 "auth_service": {"enabled": True, "cluster_name": "c.test", "listen_addr": "127.0.0.1:3025"},
                 "audit": audit}, str(tmp_path / "gatehouse.yaml"))
    return await AuthService.open(cfg)


@pytest.fixture
async def small(tmp_path):
    svc = await open_auth(tmp_path, events_max_count=10, recordings_max_size="1KB")
    try:
        yield svc
    finally:
        await svc.close()


async def add_events(svc, n: int) -> None:
    await svc.audit_store.store_entries([auditchain.fit({"event": "test.event", "n": i}, "c.test")
                                         for i in range(n)])


async def test_old_events_leave_and_the_kept_chain_still_verifies(small):
    await add_events(small, 40)
    before = await small.backend.audit_bounds("c.test")
    result = await small.audit_store.retention()
    assert result["events"]["c.test"] >= before.last - 10 - 1
    after = await small.backend.audit_bounds("c.test")
    assert after.first > 1 and after.last - after.first < 15   # the prune event itself is added after
    prunes = [r for r in await small.backend.audit_range("c.test", after.first - 1, 100)
              if r.event == auditchain.PRUNE_EVENT]
    assert prunes, "the prune is recorded in the chain"
    report = await small.audit_store.verify(ADMIN, "c.test")
    assert report["ok"] and report["done"], (report["broken"], report["first"], report["last"])
    assert report["gaps"] and report["gaps"][0]["from"] == 1


async def test_a_forwarding_leaf_keeps_what_its_root_does_not_have(small):
    await small.backend.create(keys.trusted_cluster("root.test"), {
        "kind": "trusted_cluster", "version": "v2", "metadata": {"name": "root.test"},
        "spec": {"enabled": True, "forward_audit": True, "web_proxy_addr": "127.0.0.1:1", "role_map": []}})
    await add_events(small, 40)
    await small.audit_store.export_ack(Identity("p", "proxy", "c.test"), "root.test", 5)
    await small.audit_store.retention()
    assert (await small.backend.audit_bounds("c.test")).first == 6   # up to 5 only: the root has those
    await small.audit_store.export_ack(Identity("p", "proxy", "c.test"), "root.test", 30)
    await small.audit_store.retention()
    assert (await small.backend.audit_bounds("c.test")).first > 6


async def test_recordings_beyond_the_size_limit_go_oldest_first(small):
    store = small.audit_store.recordings
    sids = [SID[:-1] + str(i) for i in range(3)]
    for i, sid in enumerate(sids):
        data = bytes([65 + i]) * 600
        await store.append("c.test", sid, 0, data)
        assert await store.complete("c.test", sid, len(data), hashlib.sha256(data).hexdigest())
        final = os.path.join(store.dir, "c.test", f"{sid}.cast")
        os.utime(final, (time.time() - 100 + i, time.time() - 100 + i))
    result = await small.audit_store.retention()
    assert result["recordings"]["count"] == 2
    kept = [e.sid for e in await store.entries()]
    assert kept == [sids[2]]
