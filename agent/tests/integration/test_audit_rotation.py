"""Rotation of the local audit log and age-based removal of recordings (issue 18 item 6).

A real auth service in process on real SQLite and real files: its own audit.jsonl is
rotated at audit.log_max_size, every event still reaches the chain, and rotated files
that were delivered go once older than log_max_age. A member's log whose auth is down
keeps at most log_max_files rotated files and says (audit.dropped) which one it had to
remove unsent; when auth returns the rest is delivered. Recordings older than
recordings_max_age are removed by retention and the removal is audited.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

from gatehouse.audit import AuditLog, AuditShipper

from .test_audit_retention import ADMIN, SID, open_auth  # one in-process auth for both retention suites


def rotated(audit: AuditLog) -> list[str]:
    return audit.segments()[:-1]


async def stored_uids(svc) -> set:
    return {json.loads(r.body)["uid"] for r in await svc.backend.audit_range("c.test", 0, 100000)}


async def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = await check() if asyncio.iscoroutinefunction(check) else check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.1)


async def test_the_local_log_rotates_by_size_and_delivered_files_go_by_age(tmp_path):
    svc = await open_auth(tmp_path, log_max_size="4KB", log_max_files=1000, log_max_age="2s")
    try:
        uids = [svc.audit.emit("test.rotation", n=i, pad="p" * 150)["uid"] for i in range(200)]
        files = rotated(svc.audit)
        assert len(files) >= 8, files                      # ~200 bytes an event, 4 KB a file
        assert all(os.path.getsize(f) < 4000 + 400 for f in files)
        assert all(os.stat(f).st_mode & 0o777 == 0o600 for f in files + [svc.audit.path])
        # Every event, across the rotations, reaches the chain exactly once and in order.
        await wait_for(lambda: svc.audit_store.shipper.delivered >= 200, 30, "the shipper to deliver 200 events")
        assert set(uids) <= await stored_uids(svc)
        bodies = [json.loads(r.body) for r in await svc.backend.audit_range("c.test", 0, 100000)]
        ns = [b["n"] for b in bodies if b["event"] == "test.rotation"]
        assert ns == list(range(200))
        # Delivered rotated files go once older than log_max_age (the shipper prunes after each delivery).
        await asyncio.sleep(2.2)
        svc.audit.emit("test.wake")
        await wait_for(lambda: not rotated(svc.audit), 15, "the old delivered rotated files to be removed")
        report = await svc.audit_store.verify(ADMIN, "c.test")
        assert report["ok"] and not report.get("broken"), report
    finally:
        await svc.close()


async def test_a_member_log_keeps_at_most_max_files_while_auth_is_down_and_says_what_it_dropped(tmp_path):
    svc = await open_auth(tmp_path / "auth")
    auth_up = False

    async def deliver(batch):       # a member's shipper: auth is unreachable until auth_up
        if not auth_up:
            raise ConnectionRefusedError(111, "Connection refused")
        await svc.audit_store.store_entries([dict(e, cluster_name="c.test") for e in batch])

    member = AuditLog(str(tmp_path / "member"), "c.test", max_size=2000, max_files=3, max_age=3600)
    shipper = AuditShipper(member, deliver)
    shipper.start()
    try:
        uids = [member.emit("test.member", n=i, pad="p" * 150)["uid"] for i in range(100)]
        await wait_for(lambda: shipper.failing_since, 10, "the shipper to notice auth is down")
        shipper._prune()            # what the shipper runs after each delivery; auth never answered
        assert len(rotated(member)) <= 3 + 1     # the audit.dropped notices may rotate the log once more
        dropped = [json.loads(line) for path in member.segments() for line in open(path, encoding="utf-8")
                   if '"audit.dropped"' in line]
        assert dropped and "more than audit.log_max_files (3)" in dropped[0]["reason"], dropped
        auth_up = True

        async def caught_up():
            return dropped[-1]["uid"] in await stored_uids(svc)
        await wait_for(caught_up, 30, "delivery after auth returned")
        held = await stored_uids(svc)
        kept = {json.loads(line)["uid"] for path in member.segments() for line in open(path, encoding="utf-8")}
        assert kept & set(uids) <= held               # everything still on disk reached auth
        assert len(held & set(uids)) < 100            # and what was dropped is what audit.dropped reported
    finally:
        await shipper.stop()
        member.close()
        await svc.close()


async def test_recordings_older_than_max_age_are_removed_and_the_removal_is_audited(tmp_path):
    svc = await open_auth(tmp_path, recordings_max_age="1h")
    try:
        store = svc.audit_store.recordings
        sids = [SID[:-1] + str(i) for i in range(3)]
        ages = [7200, 3700, 60]                          # two beyond the hour, one fresh
        for sid, age in zip(sids, ages):
            data = f'{{"version": 2}}\n[0.1, "o", "{sid}"]\n'.encode()
            await store.append("c.test", sid, 0, data)
            assert await store.complete("c.test", sid, len(data), hashlib.sha256(data).hexdigest())
            path = os.path.join(store.dir, "c.test", f"{sid}.cast")
            os.utime(path, (time.time() - age, time.time() - age))
        result = await svc.audit_store.retention()
        assert result["recordings"]["count"] == 2
        assert [e.sid for e in await store.entries()] == [sids[2]]
        with open(svc.audit.path, encoding="utf-8") as fh:
            pruned = [json.loads(line) for line in fh if '"session.recording_pruned"' in line]
        assert pruned and pruned[-1]["count"] == 2 and "recordings_max_age" in pruned[-1]["reason"]
        # recordings_max_age "0s" keeps them however old.
        await svc.close()
        svc = await open_auth(tmp_path, recordings_max_age="0s")
        os.utime(os.path.join(store.dir, "c.test", f"{sids[2]}.cast"), (1, 1))
        assert (await svc.audit_store.retention())["recordings"]["count"] == 0
    finally:
        await svc.close()
