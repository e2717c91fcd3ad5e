"""Members' snapshots by revision (auth/snapshots.py) into the member cache (member/cache.py).

A real auth service in process (SQLite) answers a real ClusterCache through the same
call the API makes (`AuthService.snapshot`, the body through JSON as on the wire):

* after any sequence of writes, a cache that followed by deltas holds exactly what a cache
  built from one full snapshot holds, for a node and for a proxy (hypothesis);
* a node receives no leaf's host CA (only its own cluster's, which signs the proxies'
  session answers), no remote cluster and no node record, in a full snapshot or a delta;
  a proxy receives them all;
* a member whose revision this auth server no longer has history for (a gap), or which is
  ahead of it (a restored database), gets a full snapshot and ends in the same state.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse import pki
from gatehouse.auth import keys
from gatehouse.auth.authz import Identity
from gatehouse.member.cache import ClusterCache

ROOT = "root.test"


class SnapshotCaller:
    """The member's API client as the cache uses it, answered by the auth service in this process."""

    def __init__(self, svc, kind: str):
        self.svc, self.ident = svc, Identity(f"{kind}1", kind, svc.cluster_name)

    async def call(self, method, path, body=None, params=None, timeout=None, headers=None):
        assert (method, path) == ("GET", "/v1/snapshot")
        answer = await self.svc.snapshot(self.ident, int(params["since"]), float(params["timeout"]),
                                         params.get("delta") == "1")
        return json.loads(json.dumps(answer))


async def _caught_up(svc) -> None:
    """Until the snapshot feed has seen every write (it follows the backend's change feed)."""
    for _ in range(500):
        if svc.snapshot_feed.revision >= await svc.backend.revision():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the snapshot feed did not catch up with the backend")


async def _sync(cache: ClusterCache) -> None:
    await _caught_up(cache.client.svc)
    await cache._fetch(cache.revision, 0)


def state(cache: ClusterCache) -> dict:
    """Everything a cache's accessors answer from."""
    return {"revision": cache.revision, "cluster": cache.cluster_name, "records": cache._records,
            "user_cas": cache._user_cas, "host_cas": cache._host_cas,
            "host_ca_clusters": cache._host_ca_clusters, "revoked": {k: sorted(v) for k, v in cache._revoked.items()},
            "names": sorted(cache.cluster_names()), "roots": sorted(t["metadata"]["name"] for t in cache.trusted_roots())}


async def _fresh(svc, kind: str) -> ClusterCache:
    cache = ClusterCache(SnapshotCaller(svc, kind))
    await cache._fetch(0, 0)
    return cache


# ---------------------------------------------------------------- writes the property test draws from
CLUSTERS = ["leaf1.test", "leaf2.test", "root2.test"]
KEYS = [pki.new_ssh_key(comment=f"ca{i}").public_line for i in range(4)]
#: Two keys per CA record (a rotation), no key held by two records: auth's index never stores that.
CA_KEYS = {(c, t): [pki.new_ssh_key(comment=f"{c} {t} {i}").public_line for i in range(2)]
           for c in ["leaf1.test", "leaf2.test", "root2.test"] for t in ("host", "user")}
NAMES = ["a", "b", "c"]


def _write_ops():
    ca = st.tuples(st.just("cas"), st.sampled_from(CLUSTERS), st.sampled_from(["host", "user"]),
                   st.sampled_from([0, 1, "not a key"]), st.booleans())
    named = st.tuples(st.sampled_from(["roles", "nodes", "remote_clusters", "trusted_clusters"]),
                      st.sampled_from(NAMES + CLUSTERS), st.sampled_from(["x", "y"]), st.booleans())
    lock = st.tuples(st.just("locks"), st.sampled_from(["node", "proxy"]), st.sampled_from(NAMES),
                     st.sampled_from(KEYS))
    delete = st.tuples(st.just("delete"), st.integers(min_value=0, max_value=1000))
    other = st.tuples(st.just("other"), st.sampled_from(NAMES))
    return st.lists(st.one_of(ca, named, lock, delete, other), min_size=1, max_size=12)


async def _apply_op(svc, op, written: list) -> None:
    b = svc.backend
    if op[0] == "cas":
        _, cluster, ca_type, which, active = op
        public = which if isinstance(which, str) else CA_KEYS[(cluster, ca_type)][which]
        key = keys.ca(cluster, ca_type)
        value = {"cluster_name": cluster, "type": ca_type, "public": public, "active": active, "local": False}
        if ca_type == "user":
            value["role_map"] = [{"remote": "access", "local": ["access"]}]
    elif op[0] == "locks":
        _, kind, name, public = op
        key = keys.lock(kind, name)
        value = {"kind": kind, "name": name, "ssh_keys": [public.split()[1]], "revoked": "2026-01-01T00:00:00Z",
                 "secret_note": "members never see this"}
    elif op[0] == "delete":
        if not written:
            return
        key = written[op[1] % len(written)]
        await b.delete_range(key)  # nothing when it is gone already
        return
    elif op[0] == "other":  # a write members' snapshots are not made of
        key, value = f"presence/0/{op[1]}", {"proxy": op[1], "leaves": {}}
    else:
        section, name, flavour, named_right = op
        prefix = {"roles": keys.ROLES_PREFIX, "nodes": keys.NODES_PREFIX,
                  "remote_clusters": keys.REMOTE_CLUSTERS_PREFIX, "trusted_clusters": keys.TRUSTED_CLUSTERS_PREFIX}
        key = prefix[section] + name
        value = {"kind": section, "metadata": {"name": name if named_right else None}, "flavour": flavour,
                 "spec": {"enabled": flavour == "x"}}
    await b.put(key, value)
    written.append(key)


class World:
    """One auth service (on its own event loop) that the examples keep writing to, and two caches
    (node, proxy) that follow it by deltas."""

    def __init__(self):
        from gatehouse.auth.service import AuthService
        from gatehouse.config import parse
        self.tmp = tempfile.mkdtemp(prefix="gatehouse-deltas-")
        self.loop = asyncio.new_event_loop()
        cfg = parse({"gatehouse": {"nodename": "root", "data_dir": f"{self.tmp}/data"},
                     "auth_service": {"enabled": True, "cluster_name": ROOT, "listen_addr": "127.0.0.1:3025"}},
                    f"{self.tmp}/gatehouse.yaml")
        self.svc = self.run(AuthService.open(cfg))
        self.caches = {kind: self.run(_fresh(self.svc, kind)) for kind in ("node", "proxy")}
        self.written: list = []

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self):
        self.run(self.svc.close())
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def world():
    w = World()
    yield w
    w.close()


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_write_ops(), polls=st.integers(min_value=1, max_value=3))
def test_deltas_give_the_same_cache_as_a_full_snapshot(world, ops, polls):
    async def go():
        svc = world.svc
        deltas = world.caches["proxy"].deltas
        chunk = max(1, len(ops) // polls)
        for start in range(0, len(ops), chunk):  # the caches poll between some of the writes
            for op in ops[start:start + chunk]:
                await _apply_op(svc, op, world.written)
            for cache in world.caches.values():
                await _sync(cache)
        await _caught_up(svc)
        for kind, cache in world.caches.items():
            await _sync(cache)
            assert cache.full_snapshots == 1, kind  # the first sync only: every later one was a delta
            full = await _fresh(svc, kind)
            assert state(cache) == state(full), kind
        if any(op[0] not in ("other", "delete") for op in ops):  # a proxy needs every record: it got deltas
            assert world.caches["proxy"].deltas > deltas
        for cache in world.caches.values():
            for record in cache._records["locks"].values():
                assert "secret_note" not in record
    world.run(go())


# ---------------------------------------------------------------- what each member receives
async def _register(svc, leaf: str) -> None:
    from gatehouse import __version__
    admin, proxy = Identity("admin", "admin", ROOT), Identity("proxy", "proxy", ROOT)
    token, _ = await svc.tokens.add(admin, ["trusted_cluster"], 300)
    await svc.trust.validate(proxy, {"token": token, "cluster_name": leaf, "version": __version__,
                                     "host_cas": [pki.new_ssh_key().public_line]}, "127.0.0.1")


async def test_a_node_receives_no_leaf_host_cas_remote_clusters_or_nodes(auth):
    node = await _fresh(auth, "node")
    proxy = await _fresh(auth, "proxy")
    await _register(auth, "leaf1.test")  # a host CA and a remote cluster
    await _caught_up(auth)
    answer = await auth.snapshot(Identity("node1", "node", ROOT), node.revision, 0, True)
    assert answer["delta"] is True and all(c["section"] not in ("nodes", "remote_clusters") and
                                           c["id"] != "leaf1.test/host" for c in answer["changes"])
    await _sync(node)
    await _sync(proxy)
    assert node.host_ca(pki.new_ssh_key().public_line) is None
    assert {ca["cluster_name"] for ca in node._host_cas.values()} == {ROOT}  # its own, for session answers
    assert node.remote_cluster("leaf1.test") is None and node.nodes() == []
    assert proxy.remote_cluster("leaf1.test") is not None and proxy.leaf_is_trusted("leaf1.test")
    assert any(ca["cluster_name"] == "leaf1.test" for ca in proxy._host_cas.values())
    # The full snapshot says the same.
    full = await auth.snapshot(Identity("node1", "node", ROOT), 0, 0, True)
    assert sorted((c["cluster_name"], c["type"]) for c in full["cas"]) == [(ROOT, "host"), (ROOT, "user")]
    assert full["remote_clusters"] == [] and full["nodes"] == []
    assert any(c["type"] == "host" for c in (await auth.snapshot(Identity("p", "proxy", ROOT), 0, 0, True))["cas"])
    # A change only proxies need does not end a node's long poll with an empty answer: it keeps waiting.
    before = node.revision
    await _register(auth, "leaf2.test")
    await _caught_up(auth)
    answer = await auth.snapshot(Identity("node1", "node", ROOT), before, 0.5, True)
    assert answer["changes"] == [] and answer["revision"] >= before


async def test_a_member_resyncs_with_a_full_snapshot_after_a_gap(auth):
    proxy = await _fresh(auth, "proxy")
    await _register(auth, "leaf1.test")
    await _sync(proxy)
    assert (proxy.full_snapshots, proxy.deltas) == (1, 1)
    # This auth server keeps only 3 changes: more than that since the member's revision is a gap.
    auth.snapshot_feed.history = 3
    for i in range(6):
        await _register(auth, f"gap{i}.test")
    await _caught_up(auth)
    assert not auth.snapshot_feed.covers(proxy.revision)
    await _sync(proxy)
    assert proxy.full_snapshots == 2 and proxy.last_changes is None
    assert state(proxy) == state(await _fresh(auth, "proxy"))
    assert all(proxy.remote_cluster(f"gap{i}.test") for i in range(6))
    # After the resync it follows by deltas again.
    auth.snapshot_feed.history = 1000
    await auth.trust.delete_remote_cluster(Identity("admin", "admin", ROOT), "gap0.test")
    await _sync(proxy)
    assert proxy.deltas == 2 and proxy.remote_cluster("gap0.test") is None
    assert not proxy.leaf_is_trusted("gap0.test") and proxy.leaf_is_trusted("gap1.test")
    assert state(proxy) == state(await _fresh(auth, "proxy"))


async def test_a_member_ahead_of_the_server_gets_a_full_snapshot(auth):
    """A restored database (revision lower than the member's): a full snapshot, at once."""
    proxy = await _fresh(auth, "proxy")
    answer = await auth.snapshot(Identity("p", "proxy", ROOT), proxy.revision + 1000, 0.2, True)
    assert "delta" not in answer and answer["revision"] == await auth.backend.revision()
    proxy.revision += 1000
    await _sync(proxy)
    assert proxy.full_snapshots == 2 and proxy.revision == await auth.backend.revision()


async def test_node_names_resolve_to_the_longest_cluster_suffix(auth):
    """member/routing.split_cluster looks each suffix up (one lookup per label, at any fleet size)."""
    from gatehouse.member.routing import split_cluster
    for leaf in ("leaf.test", "site.example"):  # names may not overlap (handshake.check_leaf_name)
        await _register(auth, leaf)
    proxy = await _fresh(auth, "proxy")
    assert split_cluster(proxy, "n.leaf.test", None) == ("n", "leaf.test")
    assert split_cluster(proxy, "n.b.leaf.test", None) == ("n.b", "leaf.test")
    assert split_cluster(proxy, "web.site.example", None) == ("web", "site.example")
    assert split_cluster(proxy, "n.other.test", None) == ("n.other.test", ROOT)
    assert split_cluster(proxy, "n.root.test", None) == ("n", ROOT)
    assert split_cluster(proxy, "leaf.test", None) == ("leaf.test", ROOT)  # a bare cluster name is a host
    assert split_cluster(proxy, "n.leaf.test", "x.test") == ("n.leaf.test", "x.test")
