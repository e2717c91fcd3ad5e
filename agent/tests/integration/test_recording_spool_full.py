"""The node's recording spool on a disk that really fills (issue 18 item 6): a tmpfs mounted for the test.

A recording that cannot start leaves nothing behind (an empty header file would hold
space and never be uploaded); a recording whose metadata the full disk refuses is
still offered for upload, from memory, so the spool empties without a restart. The
end-to-end view (sessions, policy, auth): e2e/test_audit_disk_full_e2e.py.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from gatehouse.audit import AuditLog
from gatehouse.node.recording import RecordingFailed, RecordingSpool

SID = "0f0e0d0c-0b0a-4908-8706-050403020100"


@pytest.fixture
def spool(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    data = tmp_path / "data"
    where = data / "recording-spool"
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)], check=True)
    audit = AuditLog(str(tmp_path / "log"), "c.test")
    try:
        s = RecordingSpool(str(data), "node1", 2 * 1000 ** 3, audit, client=None)
        s.prepare()
        yield s
    finally:
        audit.close()
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: str) -> str:
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_recording_that_cannot_start_leaves_nothing(spool):
    filler = fill(spool.dir)
    with pytest.raises(RecordingFailed) as exc:
        spool.start(SID, {"version": 2, "width": 80, "height": 24}, {"node": "node1"}, "fail_open")
    assert "No space left on device" in str(exc.value)
    assert sorted(os.listdir(spool.dir)) == ["filler"]
    os.unlink(filler)


def test_a_recording_the_disk_cut_off_is_still_offered_for_upload(spool):
    rec = spool.start(SID, {"version": 2, "width": 80, "height": 24}, {"node": "node1", "user": "alice"},
                      "fail_open")
    while rec.output(b"x" * 4096):      # until the disk is full: fail_open goes on, unrecorded
        if rec.failed:
            break
    assert "No space left on device" in rec.failed
    fill(spool.dir)                     # not even the metadata fits now
    rec.finish("exit 0", exit_status=0)
    assert not os.path.exists(os.path.join(spool.dir, f"{SID}.json"))
    assert spool.pending() == [SID]     # from memory: the uploader sends it without a restart
    assert spool._unwritten_meta[SID]["failed"] and spool._unwritten_meta[SID]["truncated"]
