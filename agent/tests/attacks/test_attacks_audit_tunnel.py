"""Forged audit batches through a real hostile leaf tunnel (issue 18, "Bad input and faults").

A real root and a real leaf join with trust; then the leaf is taken over: its daemon
stops, and a hostile leaf proxy (routing_fakes.FakeLeaf with the leaf proxy's real
identity, holding the leaf's real host CA key) dials the root's tunnel port and answers
the root proxy's audit subsystem (tunnel/forwarding.py) with batches it builds and signs
itself. An honest batch is stored first (the fake speaks the protocol); then a batch
whose events claim another cluster, one whose chain is broken, and one replaying an
event already stored under a new seq are each refused by the root's auth, audited
there (audit.forward_refused, with the reason) and leave the root's copy unchanged; the
root proxy keeps running and keeps asking.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid

import asyncssh
import pytest

from conftest import ok, unix_user, wait_until
from routing_fakes import FakeLeaf, TrustPair
from trust_fakes import backend_edit

from gatehouse import auditchain, pki
from gatehouse.auth import keys
from gatehouse.wire import AUDIT_SUBSYSTEM

ROOT, LEAF = "root.test", "leaf.test"


class HostileAuditLeaf(FakeLeaf):
    """FakeLeaf that also answers the audit subsystem: an events request gets ``self.batch`` when
    this channel has not had that batch yet (the root reopens the channel after a refusal),
    else an empty batch after a second; acks and other requests get ``{"ok": true}``."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.batch: dict | None = None
        self.asked: list[dict] = []

    async def _serve(self, process) -> None:
        if process.subsystem != AUDIT_SUBSYSTEM:
            return await super()._serve(process)
        sent = None
        try:
            while True:
                line = await process.stdin.readline()
                if not line:
                    return
                request = json.loads(line)
                self.asked.append(request)
                if "events" in request:
                    if self.batch is not None and self.batch is not sent:
                        answer, sent = {"batch": self.batch}, self.batch
                    else:
                        await asyncio.sleep(1)
                        answer = {"batch": {"stream": LEAF, "events": [], "head": 0}}
                else:
                    answer = {"ok": True}
                process.stdout.write(json.dumps(answer).encode() + b"\n")
                await process.stdout.drain()
        except (asyncssh.Error, OSError, ValueError, asyncio.CancelledError):
            pass
        finally:
            process.exit(0)


def event(n: int, **extra) -> dict:
    return {"event": "session.start", "uid": uuid.uuid4().hex, "cluster_name": LEAF, "success": True,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "user": "alice",
            "node": "leafnode", "n": n, **extra}


def signed(ca: dict, records: list) -> dict:
    """A batch of RECORDS (auditchain.Record) signed with the leaf's host CA CA, as AuditStore.export builds it."""
    first_prev = json.loads(records[0].body)["prev"]
    payload = auditchain.batch_payload(LEAF, records[0].seq, first_prev, records[-1].seq, records[-1].hash)
    return {"stream": LEAF, "events": [r.body for r in records], "first_seq": records[0].seq,
            "first_prev": first_prev, "last_seq": records[-1].seq, "last_hash": records[-1].hash, "gap": False,
            "key": pki.ssh_fingerprint(ca["public"]), "signature": pki.sign_blob(ca["private"],
                                                                                 auditchain.BATCH_DOMAIN, payload),
            "head": records[-1].seq}


@pytest.fixture(scope="module")
def hostile():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root")
    tmp = tempfile.mkdtemp(prefix="gatehouse-audit-hostile-")
    pair = TrustPair(tmp)
    fake = None
    with unix_user("visitor"):
        try:
            pair.start()
            pair.join([{"remote": "access", "local": ["access"]}])
            pair.leaf.daemon.stop()          # the leaf is taken over: its keys now serve the attacker
            found = {}

            async def read(backend):
                found.update((await backend.get(keys.ca(LEAF, "host"))).value)
            backend_edit(pair.leaf.data_dir, read)
            fake = HostileAuditLeaf(os.path.join(pair.leaf.data_dir, "identity", "proxy"), pair.root.tunnel_port,
                                    cluster=LEAF)
            fake.ca = found
            fake.start()
            # An honest batch first: the root stores it, so later refusals are the forgeries' doing.
            fake.honest = auditchain.link(LEAF, auditchain.Head(), [event(i) for i in range(5)])
            fake.batch = signed(found, fake.honest)
            wait_until(lambda: len(held(pair)) == 5, 60, "the honest batch stored at the root")
            yield pair, fake
        finally:
            if fake is not None:
                fake.stop()
            pair.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


def held(pair) -> list[dict]:
    r = pair.root.run_gatectl("audit", "search", "--format=json", f"--cluster={LEAF}", "--limit=1000")
    return json.loads(r.stdout)["items"] if r.returncode == 0 else []


def refused_with(pair, fragment: str) -> dict:
    def find():
        hits = [e for e in pair.root.audit("audit.forward_refused") if fragment in e.get("reason", "")]
        return hits[-1] if hits else None
    return wait_until(find, 90, f"audit.forward_refused at the root saying {fragment!r}")


def attack(pair, fake, batch: dict, fragment: str) -> None:
    before = sorted(e["uid"] for e in held(pair))
    fake.batch = batch
    refusal = refused_with(pair, fragment)
    assert refusal["cluster"] == LEAF and refusal["success"] is False
    assert sorted(e["uid"] for e in held(pair)) == before
    assert pair.root.daemon.proc.poll() is None
    assert f"{LEAF}: chain intact" in ok(pair.root.run_gatectl("audit", "verify", f"--cluster={LEAF}"))


def test_events_claiming_another_cluster_are_refused_and_audited(hostile):
    pair, fake = hostile
    head = auditchain.Head(fake.honest[-1].seq, fake.honest[-1].hash)
    forged = auditchain.link(LEAF, head, [event(5 + i, cluster_name="other.test") for i in range(3)])
    attack(pair, fake, signed(fake.ca, forged), "names cluster 'other.test', not leaf.test")


def test_a_broken_chain_is_refused_and_audited(hostile):
    pair, fake = hostile
    head = auditchain.Head(fake.honest[-1].seq, fake.honest[-1].hash)
    records = auditchain.link(LEAF, head, [event(5 + i) for i in range(3)])
    body = json.loads(records[1].body)
    body["user"] = "mallory"                      # changed after linking; the batch is signed again
    records[1] = auditchain.record_from_text(LEAF, auditchain.canonical(body))
    attack(pair, fake, signed(fake.ca, records), f"event {head.seq + 3} breaks the chain of the batch")


def test_a_duplicate_event_id_is_refused_and_audited(hostile):
    pair, fake = hostile
    head = auditchain.Head(fake.honest[-1].seq, fake.honest[-1].hash)
    again = {k: v for k, v in json.loads(fake.honest[0].body).items() if k not in ("seq", "prev")}
    replay = auditchain.link(LEAF, head, [again])
    attack(pair, fake, signed(fake.ca, replay), "is already stored under another seq (a replayed event)")


def test_a_batch_signed_with_another_key_is_refused_and_audited(hostile):
    pair, fake = hostile
    head = auditchain.Head(fake.honest[-1].seq, fake.honest[-1].hash)
    stranger = pki.new_ssh_key()
    records = auditchain.link(LEAF, head, [event(9)])
    attack(pair, fake, signed({"public": stranger.public_line, "private": stranger.private_openssh}, records),
           "its signature does not verify with the leaf's host CA")
