"""Hostile leaves forwarding audit events to their root (issue 18, "Bad input and faults").

Two auth services in process on real SQLite: a root that knows leaf.test (its host CA
and remote_cluster record, as the trust handshake stores them) and the leaf itself,
whose trusted_cluster turns forwarding on. The leaf exports real signed batches
(AuditStore.export); the root ingests them as its proxy would hand them over
(AuditStore.ingest). The attacks: a batch resent or duplicated (stored once), one
signed by another cluster's key or naming another cluster, one whose chain was broken
or rewritten, an event replayed under a new seq. Each is refused with one sentence,
audited at the root (audit.forward_refused), and leaves the stored copy unchanged.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from gatehouse import auditchain, pki
from gatehouse.auth import keys
from gatehouse.auth.authz import Identity
from gatehouse.errors import AccessDenied, GatehouseError

ROOT, LEAF = "root.test", "leaf.test"
PROXY = Identity("rootproxy", "proxy", ROOT)
LEAF_PROXY = Identity("leafproxy", "proxy", LEAF)


async def open_auth(tmp_path, name: str):
    from gatehouse.auth.service import AuthService
    from gatehouse.config import parse
    cfg = parse({"gatehouse": {"nodename": name, "data_dir": str(tmp_path / name)},
                 "auth_service": {"enabled": True, "cluster_name": name, "listen_addr": "127.0.0.1:3025"}},
                str(tmp_path / f"{name}.yaml"))
    return await AuthService.open(cfg)


@pytest.fixture
async def pair(tmp_path):
    root = await open_auth(tmp_path, ROOT)
    leaf = await open_auth(tmp_path, LEAF)
    try:
        ca = await leaf.local_ca("host")
        await root.backend.create(keys.ca(LEAF, "host"), {"cluster_name": LEAF, "type": "host",
                                                          "public": ca["public"], "active": True, "local": False})
        await root.backend.create(keys.remote_cluster(LEAF), {"kind": "remote_cluster", "version": "v3",
                                                              "metadata": {"name": LEAF, "labels": {}}})
        await leaf.backend.create(keys.trusted_cluster(ROOT), {
            "kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
            "spec": {"enabled": True, "forward_audit": True, "web_proxy_addr": "127.0.0.1:1", "role_map": []}})
        for i in range(5):
            await leaf.audit_store.record("session.start", user="alice", login="visitor", node="leafnode", n=i)
        yield root, leaf
    finally:
        await leaf.close()
        await root.close()


async def export(leaf, after: int = 0) -> dict:
    batch = await leaf.audit_store.export(LEAF_PROXY, ROOT, after)
    assert batch["events"], batch
    return batch


async def stored(root) -> list[str]:
    return [r.body for r in await root.backend.audit_range(LEAF, 0, 10000)]


async def refusals(root) -> list[dict]:
    path = os.path.join(root.cfg.data_dir, "log", "audit.jsonl")
    with open(path, encoding="utf-8") as fh:
        return [e for e in map(json.loads, fh) if e.get("event") == "audit.forward_refused"]


def resign(leaf_ca_private: str, batch: dict, stream: str = LEAF) -> dict:
    """BATCH signed again (by whoever holds LEAF_CA_PRIVATE) after its events were changed."""
    bodies = [json.loads(t) for t in batch["events"]]
    batch["first_prev"] = bodies[0]["prev"]
    batch["last_hash"] = auditchain.digest(batch["events"][-1])
    batch["signature"] = pki.sign_blob(leaf_ca_private, auditchain.BATCH_DOMAIN, auditchain.batch_payload(
        stream, batch["first_seq"], batch["first_prev"], batch["last_seq"], batch["last_hash"]))
    return batch


async def test_forwarding_is_idempotent(pair):
    root, leaf = pair
    batch = await export(leaf)
    answer = await root.audit_store.ingest(PROXY, LEAF, batch)
    assert answer["stored"] == len(batch["events"]) and answer["seq"] == batch["last_seq"]
    before = await stored(root)
    # The same batch again (an answer lost on the way): nothing stored twice.
    again = await root.audit_store.ingest(PROXY, LEAF, copy.deepcopy(batch))
    assert again["stored"] == 0 and again["seq"] == batch["last_seq"]
    assert await stored(root) == before
    # A batch overlapping what the root holds: only the new events are stored.
    await leaf.audit_store.record("session.end", user="alice", node="leafnode")
    overlap = await export(leaf, after=batch["last_seq"] - 2)
    answer = await root.audit_store.ingest(PROXY, LEAF, overlap)
    after = await stored(root)
    assert after[:len(before)] == before and len(after) == overlap["last_seq"]
    assert len({json.loads(b)["uid"] for b in after}) == len(after)
    # The root's copy is the leaf's chain, verifiable as it is.
    report = await root.audit_store.verify(Identity("admin", "admin", ROOT), LEAF)
    assert not report.get("broken"), report


async def test_a_batch_signed_by_another_cluster_is_refused_and_audited(pair):
    root, leaf = pair
    batch = resign(pki.new_ssh_key().private_openssh, await export(leaf))
    with pytest.raises(AccessDenied) as exc:
        await root.audit_store.ingest(PROXY, LEAF, batch)
    assert str(exc.value) == ("the audit events forwarded for leaf leaf.test were refused: its signature does not "
                              "verify with the leaf's host CA (forged, or meant for another cluster)")
    assert await stored(root) == []
    assert any(e.get("cluster") == LEAF for e in await refusals(root))


async def test_events_naming_another_cluster_are_refused(pair):
    root, leaf = pair
    ca = await leaf.local_ca("host")
    batch = await export(leaf)
    # The leaf re-chains its events as if they were another cluster's, and signs with its own key.
    entries = [{k: v for k, v in json.loads(t).items() if k not in ("seq", "prev")} for t in batch["events"]]
    for e in entries:
        e["cluster_name"] = "other.test"
    batch["events"] = [r.body for r in auditchain.link(LEAF, auditchain.Head(), entries)]
    batch = resign(ca["private"], batch)
    with pytest.raises(AccessDenied) as exc:
        await root.audit_store.ingest(PROXY, LEAF, batch)
    assert "event 1 names cluster 'other.test', not leaf.test" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert await stored(root) == []
    assert any("other.test" in e.get("reason", "") for e in await refusals(root))


async def test_a_broken_chain_is_refused(pair):
    root, leaf = pair
    ca = await leaf.local_ca("host")
    batch = await export(leaf)
    body = json.loads(batch["events"][2])
    body["user"] = "mallory"                   # changed in the middle, signed again by the leaf's key
    batch["events"][2] = auditchain.canonical(body)
    batch = resign(ca["private"], batch)
    with pytest.raises(AccessDenied) as exc:
        await root.audit_store.ingest(PROXY, LEAF, batch)
    assert "event 4 breaks the chain of the batch" in str(exc.value)
    assert await stored(root) == []
    assert await refusals(root)


async def test_a_rewritten_log_is_refused_against_the_stored_copy(pair):
    root, leaf = pair
    batch = await export(leaf)
    await root.audit_store.ingest(PROXY, LEAF, copy.deepcopy(batch))
    before = await stored(root)
    ca = await leaf.local_ca("host")
    # The leaf rewrites its history from event 3 on and sends it again, correctly chained and signed.
    bodies = [json.loads(t) for t in batch["events"]]
    entries = [{k: v for k, v in b.items() if k not in ("seq", "prev")} for b in bodies[2:]]
    entries[0]["user"] = "mallory"
    rewritten = auditchain.link(LEAF, auditchain.Head(2, auditchain.digest(batch["events"][1])), entries)
    forged = {**batch, "events": [r.body for r in rewritten], "first_seq": 3, "last_seq": batch["last_seq"]}
    forged = resign(ca["private"], forged)
    with pytest.raises(AccessDenied) as exc:
        await root.audit_store.ingest(PROXY, LEAF, forged)
    assert "event 3 differs from the copy this root holds" in str(exc.value)
    assert await stored(root) == before


async def test_a_replayed_event_under_a_new_seq_is_refused(pair):
    root, leaf = pair
    batch = await export(leaf)
    await root.audit_store.ingest(PROXY, LEAF, copy.deepcopy(batch))
    before = await stored(root)
    ca = await leaf.local_ca("host")
    # Event 1 again, appended as event 6.
    old = {k: v for k, v in json.loads(batch["events"][0]).items() if k not in ("seq", "prev")}
    head = auditchain.Head(batch["last_seq"], batch["last_hash"])
    replay = auditchain.link(LEAF, head, [old])
    forged = resign(ca["private"], {**batch, "events": [r.body for r in replay], "first_seq": head.seq + 1,
                                    "last_seq": head.seq + 1, "gap": False})
    with pytest.raises(AccessDenied) as exc:
        await root.audit_store.ingest(PROXY, LEAF, forged)
    assert "is already stored under another seq (a replayed event)" in str(exc.value)
    assert await stored(root) == before


async def test_only_root_proxies_forward_and_only_for_their_leaves(pair):
    root, leaf = pair
    batch = await export(leaf)
    with pytest.raises(GatehouseError):
        await root.audit_store.ingest(Identity("leafnode", "node", ROOT), LEAF, batch)
    with pytest.raises(GatehouseError) as exc:
        await root.audit_store.ingest(PROXY, "stranger.test", {**batch, "stream": "stranger.test"})
    assert 'cluster "stranger.test" is not a leaf of this cluster' in str(exc.value)
    assert await stored(root) == []


async def test_the_forwarding_lease_goes_to_another_proxy_only_when_its_holder_lets_go_or_dies(pair):
    """One root proxy forwards a leaf at a time. A second proxy (hostile or not) cannot take the lease
    from a live holder nor hand it back for it; it gets the lease when the holder lets go or its
    proxies/ record is gone (it died). Holding costs no write: asking again as the holder writes nothing."""
    root, _leaf = pair
    other = Identity("rootproxy2", "proxy", ROOT)
    for ident in (PROXY, other):
        await root.backend.put(keys.proxy(ident.name), {"name": ident.name})
    assert (await root.audit_store.forward_lease(PROXY, LEAF))["granted"]
    revision = await root.backend.revision()
    assert (await root.audit_store.forward_lease(PROXY, LEAF))["granted"]
    assert await root.backend.revision() == revision, "a holder asking again wrote to the backend"
    assert await root.audit_store.forward_lease(other, LEAF) == {"granted": False, "holder": PROXY.name}
    assert await root.audit_store.release_lease(other, LEAF) == {"released": False}
    assert (await root.backend.get(keys.audit_forwarder(LEAF))).value == {"proxy": PROXY.name}
    with pytest.raises(AccessDenied):    # only root proxies forward
        await root.audit_store.forward_lease(Identity("rootnode", "node", ROOT), LEAF)
    # The holder dies: its record is gone, the next proxy that asks takes over.
    await root.backend.delete(keys.proxy(PROXY.name))
    assert (await root.audit_store.forward_lease(other, LEAF))["granted"]
    assert await root.audit_store.forward_lease(PROXY, LEAF) == {"granted": False, "holder": other.name}
    # The holder lets go: the lease is free for whoever asks next.
    assert await root.audit_store.release_lease(other, LEAF) == {"released": True}
    assert (await root.audit_store.forward_lease(PROXY, LEAF))["granted"]
