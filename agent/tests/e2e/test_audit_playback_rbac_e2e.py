"""Who may replay a recording (issue 18 item 4, RBAC): real gatehouse process, real `gate play`.

alice and bob hold the ordinary `access` role; audrey's role says `options.audit: read`.
alice's session is recorded. bob cannot replay it (one sentence naming the rule that
would allow it), and does not see it in his list; alice replays her own
session; audrey replays alice's and lists every recording.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from conftest import Cluster, ok, unix_user, wait_until, write_yaml

PASSWORD = "rbac-password-1"


@pytest.fixture(scope="module")
def site():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-audit-rbac-")
    c = Cluster(tmp, extra_auth=", login_rate: 600")
    with unix_user("visitor"):
        try:
            c.start()
            ok(c.run_gatectl("create", write_yaml(os.path.join(tmp, "auditor.yaml"), json.dumps(
                {"kind": "role", "version": "v5", "metadata": {"name": "auditor"},
                 "spec": {"options": {"audit": "read"},
                          "allow": {"logins": ["visitor"], "node_labels": {"*": "*"}}}}))))
            for user, role in (("alice", "access"), ("bob", "access"), ("audrey", "auditor")):
                c.add_user(user, role, "visitor", PASSWORD)
                ok(c.login(user, PASSWORD, home(c, user)))
            yield c
        finally:
            c.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


def home(c: Cluster, user: str) -> str:
    return os.path.join(c.tmp, f"gate-{user}")


def play(c: Cluster, user: str, *args):
    return c.run_gate("play", *args, gate_home=home(c, user))


@pytest.fixture(scope="module")
def alices_session(site) -> str:
    assert "alice-secret-42" in ok(site.run_gate("ssh", "visitor@node1", "echo alice-secret-$((6*7))",
                                                 gate_home=home(site, "alice")))

    def sid():
        hits = [e for e in json.loads(ok(site.run_gatectl("audit", "search", "--format=json", "--user=alice",
                                                          "--event=session.recording")))["items"]]
        return hits[0]["sid"] if hits else None
    return wait_until(sid, 60, "the recording of alice's session at auth")


def test_a_user_without_the_audit_rule_cannot_replay_another_users_session(site, alices_session):
    r = play(site, "bob", "--no-timing", alices_session)
    assert r.returncode != 0 and "alice-secret-42" not in r.stdout
    assert (f"recording {alices_session} is of another user's session; a role with options.audit: read may "
            f"replay it") in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert alices_session not in ok(play(site, "bob", "--list"))


def test_a_user_replays_their_own_session(site, alices_session):
    out = ok(play(site, "alice", "--no-timing", alices_session))
    assert "alice-secret-42" in out
    assert alices_session in ok(play(site, "alice", "--list"))


def test_a_user_with_the_audit_rule_replays_anyones_session(site, alices_session):
    assert "alice-secret-42" in ok(play(site, "audrey", "--no-timing", alices_session))
    assert alices_session in ok(play(site, "audrey", "--list"))
