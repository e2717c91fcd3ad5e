"""The audit trail end to end on one cluster (issue 18): recordings, search, verify, play.

A real gatehouse process (auth+proxy+node) and the real gate/gatectl CLIs: an exec and
a PTY session are recorded on the node, uploaded to auth and replayed with `gate play`;
their audit events carry the recording's session id; `gatectl audit verify` finds the
first broken link after a stored row is changed; a cut-off recording plays up to the
damage; bad search flags get one sentence. Across a trust: e2e/test_audit_trust_e2e.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile

import pytest

from conftest import Cluster, fails, ok, unix_user, wait_until, write_yaml

PASSWORD = "alice-password-1"


@pytest.fixture(scope="module")
def audited():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-audit-")
    c = Cluster(tmp, extra_auth=", login_rate: 600")
    with unix_user("visitor"):
        try:
            c.start()
            c.add_user("alice", "access", "visitor", PASSWORD)
            ok(c.login("alice", PASSWORD))
            yield c
        finally:
            c.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


def search(c: Cluster, *flags) -> list[dict]:
    return json.loads(ok(c.run_gatectl("audit", "search", "--format=json", *flags)))["items"]


def session_of(c: Cluster, marker: str) -> str:
    """The session id of the (one) session whose command holds MARKER, from its session.start event."""
    def find():
        hits = [e for e in search(c, "--event=session.start", "--user=alice", "--limit=1000")
                if marker in json.dumps(e)]
        return hits[0]["sid"] if hits else None
    return wait_until(find, 30, f"the session.start event of {marker}")


def uploaded(c: Cluster, sid: str) -> str:
    """Wait until gate play finds the recording of SID at auth; its --no-timing output."""
    def play():
        r = c.run_gate("play", "--no-timing", sid)
        return r.stdout if r.returncode == 0 else None
    return wait_until(play, 60, f"the recording of session {sid} at auth")


def test_exec_session_is_recorded_and_audited_under_one_id(audited):
    r = audited.run_gate("ssh", "visitor@node1", "echo exec-marker-$((6*7)); exit 3")
    assert r.returncode == 3 and "exec-marker-42" in r.stdout
    sid = session_of(audited, "exec-marker-")
    assert "exec-marker-42" in uploaded(audited, sid)
    events = search(audited, f"--session={sid}")
    names = {e["event"] for e in events}
    assert {"session.start", "session.end"} <= names, names
    assert all(e["sid"] == sid for e in events)
    end = next(e for e in events if e["event"] == "session.end")
    assert "3" in json.dumps(end), end   # the exit status is in the trail
    listing = ok(audited.run_gate("play", "--list"))
    assert sid in listing


def test_pty_session_is_recorded_and_replayed(audited):
    r = audited.run_gate("ssh", "-t", "visitor@node1", "echo pty-marker-$((6*7)); tty")
    assert r.returncode == 0, r.stderr
    assert "/dev/pts/" in r.stdout
    sid = session_of(audited, "pty-marker-")
    played = uploaded(audited, sid)
    assert "pty-marker-42" in played and "/dev/pts/" in played
    assert {"session.start", "session.end"} <= {e["event"] for e in search(audited, f"--session={sid}")}


def test_verify_reports_the_first_broken_link_after_tampering(audited):
    assert "chain intact" in ok(audited.run_gatectl("audit", "verify"))
    db = os.path.join(audited.data_dir, "backend.sqlite")
    with sqlite3.connect(db) as conn:
        stream, seq, body = conn.execute(
            "SELECT stream, seq, body FROM audit_events WHERE stream = ? ORDER BY seq LIMIT 1 OFFSET 2",
            (audited.cluster_name,)).fetchone()
        conn.execute("UPDATE audit_events SET body = ? WHERE stream = ? AND seq = ?",
                     (body.replace('"success":true', '"success":false'), stream, seq))
    try:
        r = audited.run_gatectl("audit", "verify")
        assert r.returncode == 1
        assert f"{audited.cluster_name}: BROKEN at event {seq}:" in r.stdout
        assert "changed after it was written" in r.stdout
        assert f"({seq - 1} events checked before it)" in r.stdout
        report = json.loads(audited.run_gatectl("audit", "verify", "--format=json").stdout)
        assert report[0]["broken"]["seq"] == seq
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE audit_events SET body = ? WHERE stream = ? AND seq = ?", (body, stream, seq))
    assert "chain intact" in ok(audited.run_gatectl("audit", "verify"))


def test_a_cut_off_recording_plays_up_to_the_damage(audited):
    r = audited.run_gate("ssh", "visitor@node1", "for i in 1 2 3 4 5 6 7 8; do echo cut-line-$i; sleep 0.3; done")
    assert "cut-line-8" in ok(r)
    sid = session_of(audited, "cut-line-")
    uploaded(audited, sid)
    path = os.path.join(audited.data_dir, "recordings", audited.cluster_name, f"{sid}.cast")
    with open(path, "rb") as fh:
        data = fh.read()
    cut = data.index(b"cut-line-5") + 3   # in the middle of the event holding line 5 (each line is its own event)
    with open(path, "wb") as fh:
        fh.write(data[:cut])
    r = audited.run_gate("play", "--no-timing", sid)
    assert r.returncode == 1
    assert "cut-line-4" in r.stdout and "cut-line-5" not in r.stdout
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"gate: recording {sid} is damaged at ") and "played up to there" in line, r.stderr


@pytest.mark.parametrize("flag,message", [
    ("--since=yesterday", '--since "yesterday" is neither a duration back from now (like 1h or 30m) nor an RFC '
                          '3339 time (like 2026-12-01T10:00:00Z)'),
    ("--limit=0", "--limit must be a whole number from 1 to 1000, not '0'"),
    ("--event=Session.Start", '--event "Session.Start" is not an event name'),
    ("--session=123", '--session "123" is not a session id'),
])
def test_bad_search_flags_get_one_sentence(audited, flag, message):
    err = fails(audited.run_gatectl("audit", "search", flag), message)
    assert len(err.strip().splitlines()) == 1, err


def test_record_session_false_records_nothing(audited):
    ok(audited.run_gatectl("create", write_yaml(os.path.join(audited.tmp, "norec.yaml"), json.dumps(
        {"kind": "role", "version": "v5", "metadata": {"name": "norec"},
         "spec": {"options": {"record_session": False}, "allow": {"logins": ["visitor"], "node_labels": {"*": "*"}}}}))))
    audited.add_user("dave", "norec", "visitor", PASSWORD)
    home = os.path.join(audited.tmp, "gate-dave")
    ok(audited.login("dave", PASSWORD, gate_home=home))
    assert "unrecorded-marker" in ok(audited.run_gate("ssh", "visitor@node1", "echo unrecorded-marker",
                                                      gate_home=home))
    hits = wait_until(lambda: [e for e in search(audited, "--event=session.start", "--user=dave")] or None, 30,
                      "dave's session.start")
    sid = hits[0]["sid"]
    r = audited.run_gate("play", "--no-timing", sid, gate_home=home)
    assert r.returncode != 0 and "unrecorded-marker" not in r.stdout
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr



def test_a_node_killed_mid_session_uploads_the_recording_after_its_restart(audited):
    import signal
    import subprocess
    import sys
    session = subprocess.Popen([sys.executable, "-m", "gatehouse.cli.gate", "ssh", "visitor@node1",
                                "echo before-the-kill-$((6*7)); sleep 120; echo never-shown-$((6*7))"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               env=audited.gate_env())
    try:
        spool = os.path.join(audited.data_dir, "recording-spool")

        def spooled():
            for name in os.listdir(spool) if os.path.isdir(spool) else []:
                if not name.endswith(".cast"):
                    continue
                with open(os.path.join(spool, name), "rb") as fh:
                    if b"before-the-kill-42" in fh.read():   # the output, not the command in the header
                        return name[:-5]
            return None
        sid = wait_until(spooled, 30, "the running session's recording in the node's spool")
        audited.daemon.proc.send_signal(signal.SIGKILL)   # no chance to finish the recording
        audited.daemon.proc.wait(timeout=30)
    finally:
        session.kill()
        session.wait(timeout=30)
    audited.daemon.start()
    played = uploaded(audited, sid)
    assert "before-the-kill-42" in played and "never-shown-42" not in played
    with open(os.path.join(audited.data_dir, "recordings", audited.cluster_name, f"{sid}.cast"),
              encoding="utf-8") as fh:
        assert "recording interrupted: the node stopped during the session" in fh.read()

# ---------------------------------------------------------------- the recording policy
def _role(c: Cluster, name: str, policy: str) -> None:
    ok(c.run_gatectl("create", write_yaml(os.path.join(c.tmp, f"{name}.yaml"), json.dumps(
        {"kind": "role", "version": "v5", "metadata": {"name": name},
         "spec": {"options": {"recording_failure": policy}, "allow": {"logins": ["visitor"],
                                                                      "node_labels": {"*": "*"}}}}))))


@pytest.fixture(scope="module")
def full_spool():
    """A cluster whose node's recording spool holds 1 byte: every recording fails."""
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-audit-full-")
    c = Cluster(tmp, extra_auth=", login_rate: 600")
    with open(c.config_path, encoding="utf-8") as fh:
        write_yaml(c.config_path, fh.read() + "audit: {spool_max_size: 1B}\n")
    with unix_user("visitor"):
        try:
            c.start()
            _role(c, "open", "fail_open")
            _role(c, "closed", "fail_closed")
            for user in ("opal", "clio"):
                c.add_user(user, "open" if user == "opal" else "closed", "visitor", PASSWORD)
                ok(c.login(user, PASSWORD, os.path.join(tmp, f"gate-{user}")))
            yield c
        finally:
            c.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


def test_fail_open_continues_and_audits_the_failed_recording(full_spool):
    home = os.path.join(full_spool.tmp, "gate-opal")
    for attempt in range(2):   # the first fails mid-session (the header fits no more), the next at its start
        r = full_spool.run_gate("ssh", "visitor@node1", f"echo open-marker-{attempt}", gate_home=home)
        assert f"open-marker-{attempt}" in ok(r)
    failed = wait_until(lambda: (lambda ev: ev if len(ev) >= 2 else None)(
        [e for e in full_spool.audit("session.recording_failed") if e.get("user") == "opal"]), 30,
        "opal's session.recording_failed events")
    assert all(e["policy"] == "fail_open" and "spool" in e["error"] and e["sid"] for e in failed)
    starts = {e["sid"] for e in full_spool.audit("session.start") if e.get("user") == "opal"}
    assert {e["sid"] for e in failed} <= starts


def test_fail_closed_refuses_a_session_it_cannot_record(full_spool):
    home = os.path.join(full_spool.tmp, "gate-clio")
    r = full_spool.run_gate("ssh", "visitor@node1", "echo closed-marker", gate_home=home)
    assert r.returncode != 0 and "closed-marker" not in r.stdout
    assert ('this session must be recorded (recording_failure: fail_closed in your roles) but node "node1" '
            'cannot write its recording') in r.stderr, r.stderr
    failed = wait_until(lambda: [e for e in full_spool.audit("session.recording_failed") if e.get("user") == "clio"],
                        30, "clio's session.recording_failed event")
    assert failed[0]["policy"] == "fail_closed"
