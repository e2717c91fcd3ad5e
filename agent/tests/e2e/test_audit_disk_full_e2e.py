"""A full disk under the recordings (issue 18 item 6): a clear error, the recording policy, no crash.

A real gatehouse process (auth+proxy+node) whose node spool (data_dir/recording-spool)
and auth recordings directory (data_dir/recordings) are each a small tmpfs mounted for
the test, so the disk really fills (ENOSPC from the kernel, not from audit.spool_max_size,
which stays at its 2GB default). On the node: a fail_open session goes on and the failure
is audited with the kernel's reason; a fail_closed session is refused when its recording
cannot start and ended (exit 255) when the disk fills midway, with the one-line reason.
At auth: an upload into a full recordings directory is refused with the sentence naming
the full disk, the node keeps the recording in its spool and delivers it once there is
room. The process never crashes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import Cluster, ok, unix_user, wait_until, write_yaml

PASSWORD = "disk-full-password-1"
SENTENCE = ('this session must be recorded (recording_failure: fail_closed in your roles) but node "node1" cannot '
            'write its recording')
#: Output larger than the spool's tmpfs: the recording fills the disk midway.
BIG = "head -c 400000 /dev/zero | tr '\\0' x; echo; echo {marker}"


@contextlib.contextmanager
def tmpfs(path: str, size: str):
    os.makedirs(path, mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def fill(path: str) -> str:
    """Fill the filesystem holding PATH to the last byte; the filler's path (remove it to free the space)."""
    filler = os.path.join(path, "filler")
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def _role(c: Cluster, name: str, policy: str) -> None:
    ok(c.run_gatectl("create", write_yaml(os.path.join(c.tmp, f"{name}.yaml"), json.dumps(
        {"kind": "role", "version": "v5", "metadata": {"name": name},
         "spec": {"options": {"recording_failure": policy},
                  "allow": {"logins": ["visitor"], "node_labels": {"*": "*"}}}}))))


@pytest.fixture(scope="module")
def disk():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (tmpfs mounts, sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-audit-disk-")
    c = Cluster(tmp, extra_auth=", login_rate: 600")
    with unix_user("visitor"), tmpfs(os.path.join(c.data_dir, "recording-spool"), "128k") as spool, \
            tmpfs(os.path.join(c.data_dir, "recordings"), "1m") as recordings:
        c.spool, c.recordings = spool, recordings
        try:
            c.start()
            _role(c, "open", "fail_open")
            _role(c, "closed", "fail_closed")
            for user, role in (("opal", "open"), ("clio", "closed")):
                c.add_user(user, role, "visitor", PASSWORD)
                ok(c.login(user, PASSWORD, os.path.join(tmp, f"gate-{user}")))
            yield c
        finally:
            c.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


def ssh(c: Cluster, user: str, command: str):
    return c.run_gate("ssh", "visitor@node1", command, gate_home=os.path.join(c.tmp, f"gate-{user}"))


def failures(c: Cluster, user: str) -> list[dict]:
    return [e for e in c.audit("session.recording_failed") if e.get("user") == user]


def spooled(c: Cluster) -> list[str]:
    return [n for n in os.listdir(c.spool) if n.endswith(".cast")]


def alive(c: Cluster) -> None:
    assert c.daemon.proc.poll() is None, c.log_text()[-3000:]


def test_a_session_on_a_full_disk_follows_its_policy(disk):
    filler = fill(disk.spool)
    try:
        r = ssh(disk, "opal", "echo open-full-marker")
        assert "open-full-marker" in ok(r)                       # fail_open: the session goes on
        r = ssh(disk, "clio", "echo closed-full-marker")
        assert r.returncode != 0 and "closed-full-marker" not in r.stdout
        assert SENTENCE in r.stderr and "No space left on device" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        os.unlink(filler)
    opal = wait_until(lambda: failures(disk, "opal"), 30, "opal's session.recording_failed")
    clio = wait_until(lambda: failures(disk, "clio"), 30, "clio's session.recording_failed")
    assert opal[0]["policy"] == "fail_open" and "No space left on device" in opal[0]["error"], opal
    assert clio[0]["policy"] == "fail_closed" and disk.spool in clio[0]["error"], clio
    assert not spooled(disk), "a recording that could not start leaves nothing in the spool"
    alive(disk)


def test_the_disk_filling_midway_ends_a_fail_closed_session_and_not_a_fail_open_one(disk):
    before_opal, before_clio = len(failures(disk, "opal")), len(failures(disk, "clio"))
    r = ssh(disk, "opal", BIG.format(marker="open-after-big"))
    assert "open-after-big" in ok(r) and r.stdout.count("x") == 400000
    wait_until(lambda: len(failures(disk, "opal")) > before_opal, 30, "opal's midway recording failure")
    # What was recorded before the disk filled is uploaded (its metadata kept in memory, as the disk
    # had no room for it), and the spool empties without a restart.
    wait_until(lambda: not spooled(disk), 60, "the spool emptied after the failed recording")
    r = ssh(disk, "clio", BIG.format(marker="closed-after-big"))
    assert r.returncode == 255, (r.returncode, r.stderr)
    assert "closed-after-big" not in r.stdout and r.stdout.count("x") < 400000
    assert SENTENCE in r.stderr and "so it was ended" in r.stderr, r.stderr
    failed = wait_until(lambda: failures(disk, "clio")[before_clio:], 30, "clio's midway recording failure")
    assert failed[0]["policy"] == "fail_closed" and "No space left on device" in failed[0]["error"]
    alive(disk)
    wait_until(lambda: not spooled(disk), 60, "the spool emptied after the failed recording")
    assert "room-again" in ok(ssh(disk, "clio", "echo room-again"))


def test_auth_with_a_full_recordings_disk_refuses_the_upload_and_the_node_delivers_it_later(disk):
    filler = fill(disk.recordings)
    try:
        assert "held-marker" in ok(ssh(disk, "clio", "echo held-marker"))
        wait_until(lambda: "is full (No space left on device); free space there or lower audit.recordings_max_size"
                   in disk.log_text(), 60, "auth's sentence about its full recordings disk")
        held = spooled(disk)
        assert held, "the node keeps the recording while auth cannot store it"
        alive(disk)
    finally:
        os.unlink(filler)
    sid = held[0][:-5]

    def played():
        r = disk.run_gate("play", "--no-timing", sid, gate_home=os.path.join(disk.tmp, "gate-clio"))
        return r.stdout if r.returncode == 0 else None
    assert "held-marker" in wait_until(played, 90, "the held recording uploaded once auth had room")
