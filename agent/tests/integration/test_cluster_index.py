"""The trust handshake's indexes (auth/cluster_index.py) on every backend, with racing handshakes.

Two auth servers share one database (SQLite file or PostgreSQL), as in a highly available
root. Leaves offering the same host CA key race through both: exactly one is registered,
every other is refused with the one-sentence "already registered for another cluster"
error, and nothing half-written is left (no remote cluster, CA or index record of a loser).
The same holds for the window between the handshake's read of the index and its commit,
taken deterministically. Names and keys are released again by `gatectl rm rc/...`.
"""

from __future__ import annotations

import asyncio

import pytest

from gatehouse import __version__, pki
from gatehouse.auth import cluster_index, keys
from gatehouse.auth.authz import Identity
from gatehouse.errors import AlreadyExists, GatehouseError, TrustError

ROOT = "root.test"
ANOTHER = "already registered here for another cluster"


async def _auth_servers(store, tmp_path, count: int = 2) -> list:
    from gatehouse.audit import AuditLog
    from gatehouse.auth.service import AuthService
    from gatehouse.config import parse
    servers = []
    for i in range(count):
        data = tmp_path / f"auth{i}"
        cfg = parse({"gatehouse": {"nodename": f"auth{i}", "data_dir": str(data)},
                     "auth_service": {"enabled": True, "cluster_name": ROOT, "validate_rate": 6000,
                                      "listen_addr": "127.0.0.1:3025", "storage": store.config}},
                    str(tmp_path / f"gatehouse{i}.yaml"))
        svc = AuthService(cfg, await store.open(), AuditLog(str(data), ROOT))
        await svc._init_cluster()  # one after the other: the first creates the CAs, the next finds them
        servers.append(svc)
    return servers


async def _close(servers) -> None:
    for svc in servers:
        svc.audit.close()


def _hello(token: str, leaf: str, host_ca: str) -> dict:
    return {"token": token, "cluster_name": leaf, "host_cas": [host_ca], "version": __version__}


async def test_racing_handshakes_with_one_key_register_one_leaf(backend, tmp_path):
    servers = await _auth_servers(backend, tmp_path)
    try:
        admin, proxy = Identity("admin", "admin", ROOT), Identity("proxy", "proxy", ROOT)
        token, _ = await servers[0].tokens.add(admin, ["trusted_cluster"], 300)
        key = pki.new_ssh_key(comment="copied host CA").public_line
        leaves = [f"copy{i}.test" for i in range(8)]
        results = await asyncio.gather(*(
            servers[i % 2].trust.validate(proxy, _hello(token, leaf, key), f"10.0.0.{i}")
            for i, leaf in enumerate(leaves)), return_exceptions=True)
        won = [leaf for leaf, r in zip(leaves, results) if isinstance(r, dict)]
        lost = [r for r in results if not isinstance(r, dict)]
        assert len(won) == 1, results
        assert lost and all(isinstance(r, TrustError) and ANOTHER in str(r) for r in lost), lost
        for svc in servers:  # both servers see the one winner, and nothing of the losers
            names = [rc["metadata"]["name"] for rc in await svc.trust.remote_clusters()]
            assert names == won
        stored = backend.stored_keys()
        for leaf in leaves:
            present = {keys.remote_cluster(leaf), keys.ca(leaf, "host"), keys.cluster_name_index(leaf)} & set(stored)
            assert bool(present) == (leaf in won), (leaf, present)
        owner = await cluster_index.ca_owner(servers[1].backend, pki.ca_public_key(key))
        assert owner == {"cluster_name": won[0], "type": "host", "local": False}
    finally:
        await _close(servers)


async def test_index_refuses_a_key_registered_after_the_check(backend, tmp_path):
    """The race window taken apart: a handshake that passed the index read (no owner yet) and commits
    after another leaf took the key, or the name, fails in its own transaction and writes nothing."""
    servers = await _auth_servers(backend, tmp_path, count=1)
    svc = servers[0]
    try:
        key, other = pki.new_ssh_key().public_line, pki.new_ssh_key().public_line
        key, other = pki.ca_public_key(key), pki.ca_public_key(other)
        await svc.trust._register_leaf("first.test", key, {})
        before = backend.stored_keys()
        with pytest.raises(TrustError) as info:
            await svc.trust._register_leaf("second.test", key, {})
        assert ANOTHER in str(info.value)
        # The same name with another key: the name index refuses it (the CA record check comes first
        # for an exact name; a name differing only in case reaches the index).
        with pytest.raises(AlreadyExists) as info:
            await svc.trust._register_leaf("FIRST.test", other, {})
        assert 'a cluster named "FIRST.test" is already registered with the root' in str(info.value)
        assert backend.stored_keys() == before
        # The root's own CA keys are indexed too: a leaf cannot offer them.
        own = pki.ca_public_key((await svc.local_ca("user"))["public"])
        with pytest.raises(TrustError):
            await svc.trust._register_leaf("mimic.test", own, {})
        # Removing the leaf releases its key and name.
        await svc.trust.delete_remote_cluster(Identity("admin", "admin", ROOT), "first.test")
        assert await cluster_index.ca_owner(svc.backend, key) is None
        await svc.trust._register_leaf("second.test", key, {})
        assert (await cluster_index.ca_owner(svc.backend, key))["cluster_name"] == "second.test"
    finally:
        await _close(servers)


async def test_overlapping_names_come_from_the_index(backend, tmp_path):
    servers = await _auth_servers(backend, tmp_path, count=1)
    svc = servers[0]
    try:
        for leaf in ("site.example.com", "a.b.example.org"):
            await svc.trust._register_leaf(leaf, pki.ca_public_key(pki.new_ssh_key().public_line), {})
        assert await cluster_index.overlapping(svc.backend, "example.com") == ["site.example.com"]
        assert await cluster_index.overlapping(svc.backend, "x.site.example.com") == ["site.example.com"]
        assert await cluster_index.overlapping(svc.backend, "b.example.org") == ["a.b.example.org"]
        assert await cluster_index.overlapping(svc.backend, "other.example.com") == []
        assert await cluster_index.overlapping(svc.backend, "site.example.com") == []  # itself
        # A leaf whose name covers a registered one is refused by the handshake.
        token, _ = await svc.tokens.add(Identity("admin", "admin", ROOT), ["trusted_cluster"], 300)
        with pytest.raises(GatehouseError) as info:
            await svc.trust.validate(Identity("proxy", "proxy", ROOT),
                                     _hello(token, "example.com", pki.new_ssh_key().public_line), "10.0.0.1")
        assert "overlaps the name of another cluster the root knows" in str(info.value)  # not which one
    finally:
        await _close(servers)


async def test_backfill_indexes_records_of_earlier_versions(backend, tmp_path):
    servers = await _auth_servers(backend, tmp_path, count=1)
    svc = servers[0]
    try:
        key = pki.ca_public_key(pki.new_ssh_key().public_line)
        # What an earlier version stored for a leaf: the CA and the remote cluster, no index records.
        await svc.backend.create(keys.ca("old.test", "host"), {"cluster_name": "old.test", "type": "host",
                                                                "public": key, "active": True, "local": False})
        await svc.backend.create(keys.remote_cluster("old.test"), {"kind": "remote_cluster", "version": "v3",
                                                                    "metadata": {"name": "old.test", "labels": {}}})
        assert await cluster_index.ca_owner(svc.backend, key) is None
        assert await cluster_index.backfill(svc.backend, ROOT) == 2
        assert (await cluster_index.ca_owner(svc.backend, key))["cluster_name"] == "old.test"
        assert await cluster_index.backfill(svc.backend, ROOT) == 0  # idempotent
        with pytest.raises(TrustError):
            await svc.trust._register_leaf("new.test", key, {})
    finally:
        await _close(servers)
