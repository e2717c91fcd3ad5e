"""The audit trail on PostgreSQL, and forwarding cut mid-batch (issue 18, Storage and item 3).

A root whose auth keeps its backend in a real PostgreSQL server (integration/pgserver.py)
and a leaf (SQLite) whose trusted_cluster says forward_audit: true, each a real
gatehouse process. The root's events of a real session are stored in PostgreSQL's
gatehouse_audit_events, found by every search filter and verified; the leaf's forwarded
events land there too. Then the leaf's node reports a stream of events (real
POST /v1/audit/events with the node's identity) while the root is killed with SIGKILL in
the middle of forwarding them; after it returns the root holds every leaf event exactly
once, in the leaf's order, and the copy verifies.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid

import pytest

from conftest import Cluster, ok, unix_user, wait_until, write_yaml
from integration.pgserver import PgServer

ROOT, LEAF = "root.test", "leaf.test"
PASSWORD = "correct horse battery"
TABLE = "gatehouse_audit_events"


class PgPair:
    def __init__(self, tmp: str, pg: PgServer, dbname: str):
        self.tmp, self.pg, self.dbname = tmp, pg, dbname
        storage = json.dumps({"type": "postgresql", "conn_string": pg.conn_string(dbname)})
        self.root = Cluster(os.path.join(tmp, "root"), extra_auth=f", login_rate: 600, storage: {storage}",
                            cluster_name=ROOT, node_name="rootnode")
        self.leaf = Cluster(os.path.join(tmp, "leaf"), extra_auth=", login_rate: 600", cluster_name=LEAF,
                            node_name="leafnode", extra_general=", insecure: true")

    def rows(self, stream: str) -> list[tuple]:
        return self.pg.query(self.dbname, f"SELECT seq, uid FROM {TABLE} WHERE stream = %s ORDER BY seq", (stream,))

    def join(self) -> None:
        token = json.loads(ok(self.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                                                    "--format", "json")))["token"]
        tc = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
              "spec": {"enabled": True, "token": token, "web_proxy_addr": self.root.web_addr,
                       "forward_audit": True, "role_map": [{"remote": "access", "local": ["access"]}]}}
        ok(self.leaf.run_gatectl("create", write_yaml(os.path.join(self.leaf.tmp, "tc.yaml"), json.dumps(tc))))
        wait_until(lambda: any(i["metadata"]["name"] == LEAF and i["status"]["connection"] == "online"
                               for i in json.loads(ok(self.root.run_gatectl("get", "rc", "--format", "json")))),
                   30, "the leaf online at the root")


@pytest.fixture(scope="module")
def pair():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    PgServer.remove_stale()
    pg = PgServer()
    tmp = tempfile.mkdtemp(prefix="gatehouse-audit-pg-")
    p = None
    try:
        pg.init()
        pg.start()
        p = PgPair(tmp, pg, pg.create_database())
        with unix_user("visitor"):
            p.root.start()
            p.leaf.start()
            p.root.add_user("alice", "access", "visitor", PASSWORD)
            ok(p.root.login("alice", PASSWORD))
            p.join()
            yield p
    finally:
        if p is not None:
            p.leaf.stop()
            p.root.stop()
        pg.destroy()
        if not os.environ.get("GATEHOUSE_E2E_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


def search(c: Cluster, *flags) -> list[dict]:
    return json.loads(ok(c.run_gatectl("audit", "search", "--format=json", "--limit=1000", *flags)))["items"]


def test_events_are_stored_in_postgresql_and_found_by_every_filter(pair):
    r = pair.root.run_gate("ssh", "visitor@rootnode", "echo pg-marker-$((6*7))")
    assert "pg-marker-42" in ok(r)
    starts = wait_until(lambda: [e for e in search(pair.root, "--event=session.start", "--user=alice")
                                 if "pg-marker" in json.dumps(e)], 30, "alice's session.start")
    sid = starts[0]["sid"]
    # In PostgreSQL itself, not in a SQLite file beside it.
    assert pair.pg.query(pair.dbname, f"SELECT count(*) FROM {TABLE} WHERE sid = %s", (sid,))[0][0] >= 2
    assert not os.path.exists(os.path.join(pair.root.data_dir, "backend.sqlite"))
    session = search(pair.root, f"--session={sid}")
    assert {"session.start", "session.end"} <= {e["event"] for e in session}
    assert all(e["sid"] == sid for e in session)
    for flags in (["--user=alice", "--since=10m"], ["--event=session.*", f"--cluster={ROOT}"],
                  [f"--until={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() + 60))}"]):
        assert sid in {e.get("sid") for e in search(pair.root, *flags)}, flags
    assert not search(pair.root, "--user=nobody-at-all")
    # Paging: a page of 1 names the cursor of the next, which continues without repeating.
    first = json.loads(ok(pair.root.run_gatectl("audit", "search", "--format=json", "--limit=1",
                                                f"--session={sid}")))
    second = json.loads(ok(pair.root.run_gatectl("audit", "search", "--format=json", "--limit=1",
                                                 f"--session={sid}", f"--cursor={first['next']}")))
    assert first["items"][0]["uid"] != second["items"][0]["uid"]
    assert f"{ROOT}: chain intact" in ok(pair.root.run_gatectl("audit", "verify", f"--cluster={ROOT}"))


def test_forwarded_leaf_events_are_stored_in_postgresql(pair):
    wait_until(lambda: len(pair.rows(LEAF)) > 0, 60, "the leaf's events in the root's PostgreSQL")
    leaf_events = search(pair.leaf, f"--cluster={LEAF}", "--limit=5")
    held = {uid for _seq, uid in pair.rows(LEAF)}
    wait_until(lambda: {e["uid"] for e in leaf_events} <= {uid for _s, uid in pair.rows(LEAF)} or None, 60,
               "the leaf's latest events at the root")
    assert held
    assert f"{LEAF}: chain intact" in ok(pair.root.run_gatectl("audit", "verify", f"--cluster={LEAF}"))


def node_client(c: Cluster):
    from gatehouse.client import APIClient
    from gatehouse.identity import IdentityFiles
    return APIClient.for_identity(IdentityFiles(os.path.join(c.data_dir, "identity", "node")),
                                  f"https://{c.auth_addr}")


def test_the_root_killed_mid_forwarding_loses_nothing_and_stores_nothing_twice(pair):
    """The leaf's node reports 60 batches of 100 events, one every 50 ms, while the root
    receives them; the root is killed (SIGKILL) once it holds some but not all of them,
    and started again 3 s later."""
    client = node_client(pair.leaf)
    uids: list[str] = []
    done = threading.Event()

    def produce():
        try:
            for b in range(60):
                batch = [{"event": "session.data", "uid": uuid.uuid4().hex,
                          "time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "success": True,
                          "cluster_name": LEAF, "node": "leafnode", "user": "burst", "n": b * 100 + i}
                         for i in range(100)]
                assert client.call("POST", "/v1/audit/events", {"events": batch})["stored"] == 100
                uids.extend(e["uid"] for e in batch)
                time.sleep(0.05)
        finally:
            done.set()
    start_seq = max((s for s, _u in pair.rows(LEAF)), default=0)
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    wait_until(lambda: sum(1 for s, _u in pair.rows(LEAF) if s > start_seq) >= 300, 60,
               "the root receiving the burst")
    pair.root.daemon.proc.kill()            # mid-forwarding: no chance to finish a batch or an answer
    pair.root.daemon.proc.wait(30)
    held_at_kill = len(pair.rows(LEAF))
    time.sleep(3)
    pair.root.daemon.start()
    assert done.wait(120) and len(uids) == 6000
    producer.join(10)
    leaf_head = search(pair.leaf, f"--cluster={LEAF}", "--limit=1")[0]["seq"]
    wait_until(lambda: max((s for s, _u in pair.rows(LEAF)), default=0) >= leaf_head, 120,
               "the root to catch up with the leaf after its restart")
    rows = pair.rows(LEAF)
    assert held_at_kill < len(rows), "the kill came after forwarding finished; the test did not cut it"
    seqs = [s for s, _u in rows]
    assert seqs == sorted(set(seqs)) and seqs[-1] - seqs[0] + 1 == len(seqs)   # no hole, no duplicate seq
    stored_uids = [u for _s, u in rows]
    assert len(stored_uids) == len(set(stored_uids))                             # no duplicate event
    assert set(uids) <= set(stored_uids)                                          # nothing lost
    assert f"{LEAF}: chain intact" in ok(pair.root.run_gatectl("audit", "verify", f"--cluster={LEAF}"))
