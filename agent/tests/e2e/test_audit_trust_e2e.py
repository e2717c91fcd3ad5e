"""The audit trail across a trust (issue 18, items 2 and 3): one session id, leaf events at the root.

A root and a leaf as real processes; the leaf's trusted_cluster says forward_audit:
true. A root user's session to a leaf node is routed (and audited) by the root proxy
under a session id that the leaf node uses for its events and its recording; the root
then holds the leaf's events (`gatectl audit search --cluster=LEAF`), an unaltered copy
of its chain (`gatectl audit verify`) and the recording (`gate play`). While the root
is down the leaf keeps what it has not forwarded, across its own restart too, and the
root catches up when it returns.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time

import pytest

from conftest import Cluster, ok, unix_user, wait_until, write_yaml

ROOT, LEAF = "root.test", "leaf.test"
PASSWORD = "correct horse battery"


class Pair:
    def __init__(self, tmp: str):
        self.tmp = tmp
        self.root = Cluster(os.path.join(tmp, "root"), extra_auth=", login_rate: 600", cluster_name=ROOT,
                            node_name="rootnode")
        self.leaf = Cluster(os.path.join(tmp, "leaf"), extra_auth=", login_rate: 600", cluster_name=LEAF,
                            node_name="leafnode", extra_general=", insecure: true")

    def trusted_cluster(self, forward: bool, token: str = "") -> str:
        """The leaf's trusted_cluster for the root, as a file for `gatectl create`."""
        tc = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
              "spec": {"enabled": True, "token": token, "web_proxy_addr": self.root.web_addr,
                       "forward_audit": forward, "role_map": [{"remote": "access", "local": ["access"]}]}}
        return write_yaml(os.path.join(self.leaf.tmp, "tc.yaml"), json.dumps(tc))

    def join(self, forward: bool = True) -> None:
        token = json.loads(ok(self.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                                                    "--format", "json")))["token"]
        ok(self.leaf.run_gatectl("create", self.trusted_cluster(forward, token)))
        wait_until(lambda: any(i["metadata"]["name"] == LEAF and i["status"]["connection"] == "online"
                               for i in json.loads(ok(self.root.run_gatectl("get", "rc", "--format", "json")))),
                   30, "the leaf online at the root")


def search(c: Cluster, *flags) -> list[dict]:
    return json.loads(ok(c.run_gatectl("audit", "search", "--format=json", "--limit=1000", *flags)))["items"]


@pytest.fixture(scope="module")
def pair():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-audit-trust-")
    p = Pair(tmp)
    with unix_user("visitor"):
        try:
            p.root.start()
            p.leaf.start()
            p.root.add_user("alice", "access", "visitor", PASSWORD)
            p.leaf.add_user("carol", "access", "visitor", PASSWORD)
            p.join()
            ok(p.root.login("alice", PASSWORD))
            ok(p.leaf.login("carol", PASSWORD))
            yield p
        finally:
            p.leaf.stop()
            p.root.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


def test_one_session_id_from_the_root_proxy_to_the_leaf_node(pair):
    r = pair.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "echo across-marker-$((6*7))")
    assert "across-marker-42" in ok(r)
    route = wait_until(lambda: [e for e in search(pair.root, "--event=session.route", "--user=alice")
                                if e.get("cluster") == LEAF] or None, 30, "the root's session.route event")
    sid = route[0]["sid"]
    assert route[0]["node"] == "leafnode"
    # The leaf node's own events of the session carry the root's id.
    leaf_events = wait_until(lambda: (lambda ev: ev if {"session.start", "session.end"} <= {e["event"] for e in ev}
                                      else None)(search(pair.leaf, f"--session={sid}")),
                             30, "the leaf's events of the session")
    assert all(e["sid"] == sid for e in leaf_events)
    start = next(e for e in leaf_events if e["event"] == "session.start")
    assert start["user"] == "alice" and start.get("user_cluster") == ROOT, start
    # The root holds the leaf's events of it, under the leaf's name.
    at_root = wait_until(lambda: (lambda ev: ev if {"session.start", "session.end"} <= {e["event"] for e in ev}
                                  else None)(search(pair.root, f"--cluster={LEAF}", f"--session={sid}")),
                         60, "the leaf's events forwarded to the root")
    assert {e["stream"] for e in at_root} == {LEAF}
    assert {e["uid"] for e in at_root} <= {e["uid"] for e in search(pair.leaf, f"--session={sid}")}
    # A search for the session id on the root finds the routing event and the leaf's events together.
    both = search(pair.root, f"--session={sid}")
    assert {ROOT, LEAF} <= {e["stream"] for e in both}
    # The recording reaches the root and alice replays her own session there.
    played = wait_until(lambda: (lambda r: r.stdout if r.returncode == 0 else None)(
        pair.root.run_gate("play", "--no-timing", f"--cluster={LEAF}", sid)), 90, "the forwarded recording")
    assert "across-marker-42" in played
    # The root's copy is the leaf's chain unaltered.
    out = ok(pair.root.run_gatectl("audit", "verify", f"--cluster={LEAF}"))
    assert f"{LEAF}: chain intact" in out


def test_an_idle_forwarding_leaf_costs_the_root_no_backend_write(pair):
    """Forwarding is on and has delivered; with nothing new on the leaf, the root proxy's long
    poll over the tunnel waits and its lease is not renewed: no audit_forwarders/ write while idle
    (issue 16: the root's writes must not grow with its leaves): the lease has no expiry."""
    from gatehouse.tunnel.forwarding import LEASE_EVERY
    wait_until(lambda: search(pair.root, f"--cluster={LEAF}") or None, 60, "the leaf's events at the root")
    time.sleep(3)  # the delivery in flight, if any, ends
    start = pair.root.backend_revision()
    time.sleep(LEASE_EVERY * 2.5)  # an observation window of more than two lease periods
    written = pair.root.keys_written_since(start, "put")
    assert not [k for k in written if k.startswith("audit_forwarders/")], written


def test_a_denial_at_the_leaf_carries_the_root_session_id(pair):
    ok(pair.root.run_gatectl("create", write_yaml(os.path.join(pair.tmp, "unmapped.yaml"), json.dumps(
        {"kind": "role", "version": "v5", "metadata": {"name": "unmapped"},
         "spec": {"allow": {"logins": ["visitor"], "node_labels": {"*": "*"}, "cluster_labels": {"*": "*"}}}}))))
    pair.root.add_user("eve", "unmapped", "visitor", PASSWORD)
    home = os.path.join(pair.tmp, "gate-eve")
    ok(pair.root.login("eve", PASSWORD, gate_home=home))
    r = pair.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true", gate_home=home)
    assert r.returncode != 0 and "no role in the role map" in r.stderr
    route = wait_until(lambda: search(pair.root, "--event=session.route", "--user=eve") or None, 30,
                       "the root's session.route event")
    sid = route[0]["sid"]
    denied = wait_until(lambda: search(pair.leaf, f"--session={sid}") or None, 30, "the leaf's denial")
    assert [e["event"] for e in denied] == ["access.denied"] and denied[0]["success"] is False
    both = wait_until(lambda: (lambda ev: ev if len({e["stream"] for e in ev}) == 2 else None)(
        search(pair.root, f"--session={sid}")), 60, "the leaf's denial forwarded to the root")
    assert sorted((e["stream"], e["event"]) for e in both) == [(LEAF, "access.denied"), (ROOT, "session.route")]


def test_the_leaf_buffers_while_the_root_is_down_and_the_root_catches_up(pair):
    pair.root.daemon.stop()
    try:
        for i in range(3):
            r = pair.leaf.run_gate("ssh", "visitor@leafnode", f"echo offline-{i}")
            assert f"offline-{i}" in ok(r)
        pair.leaf.restart()     # what was not forwarded survives the leaf's restart
        assert "offline-after" in ok(pair.leaf.run_gate("ssh", "visitor@leafnode", "echo offline-after"))
    finally:
        pair.root.daemon.start()
    leaf_starts = wait_until(lambda: (lambda ev: ev if len(ev) >= 4 else None)(
        search(pair.leaf, "--event=session.start", "--user=carol")), 30, "carol's sessions on the leaf")
    want = {e["uid"] for e in leaf_starts}
    wait_until(lambda: want <= {e["uid"] for e in search(pair.root, f"--cluster={LEAF}", "--event=session.start",
                                                         "--user=carol")} or None,
               120, "the root caught up with the leaf")
    out = ok(pair.root.run_gatectl("audit", "verify", f"--cluster={LEAF}"))
    assert f"{LEAF}: chain intact" in out


def test_a_leaf_that_keeps_its_audit_costs_the_root_nothing_until_it_turns_forwarding_on(pair):
    """The leaf's heartbeats say whether it forwards (issue 16): with forward_audit: false the root
    proxy takes no lease and opens no audit channel for it (before, a lease write and a refused
    channel per leaf every minute), and when the leaf turns forwarding on the root asks at once."""
    def count(text: str) -> int:
        return pair.root.log_text().count(text)

    offs, connects = count("says its audit forwarding is now off"), count(f"tunnel: leaf {LEAF} is connected")
    ok(pair.leaf.run_gatectl("create", "-f", pair.trusted_cluster(False)))
    wait_until(lambda: count("says its audit forwarding is now off") > offs or None, 60,
               "the root proxy told by the leaf's heartbeat that forwarding is off")
    start = pair.root.backend_revision()
    # A fresh proxy: the leaf's first heartbeat on the new tunnel says "off". The root stops by itself
    # with the leaf's tunnel up (it once lost SIGTERM's cancellation in its presence reporter: waits.py).
    pair.root.daemon.proc.send_signal(signal.SIGTERM)
    pair.root.daemon.wait_exit(60)
    pair.root.daemon.start()
    wait_until(lambda: count(f"tunnel: leaf {LEAF} is connected") > connects or None, 60,
               "the leaf's tunnel registered at the restarted root")
    time.sleep(5)           # a forwarding start, if any, takes its lease right at registration
    written = pair.root.keys_written_since(start, "put")
    assert not [k for k in written if k.startswith("audit_forwarders/")], written

    def carols_starts(c: Cluster, *flags) -> set[str]:
        return {e["uid"] for e in search(c, *flags, "--event=session.start", "--user=carol")}

    ok(pair.leaf.run_gatectl("create", "-f", pair.trusted_cluster(True)))
    before = carols_starts(pair.leaf)
    assert "after-on" in ok(pair.leaf.run_gate("ssh", "visitor@leafnode", "echo after-on"))
    new = wait_until(lambda: carols_starts(pair.leaf) - before or None, 30, "carol's new session on the leaf")
    wait_until(lambda: new <= carols_starts(pair.root, f"--cluster={LEAF}") or None, 60,
               "the leaf's new event forwarded once it turned forwarding on")
