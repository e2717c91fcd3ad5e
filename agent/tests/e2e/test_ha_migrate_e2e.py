"""Growing up from SQLite (issue 15 items 5 and 6), end to end with real processes.

The root of a live trust runs on embedded SQLite, with a leaf holding a reverse tunnel
to it. The root is stopped, `gatehouse migrate` copies its site into PostgreSQL, the
root starts again on PostgreSQL: the leaf comes back online by itself with the trust it
had (no new token, no second handshake), certificates issued before the move still
work, and passwords moved with the users. While the root is down the leaf's own users
log in and open sessions at the leaf (leaf autonomy). The copy itself, counted record
by record, and its refusals are in integration/test_ha_auth.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from conftest import Cluster, fails, ok, run_module, unix_user, wait_until, write_yaml
from integration.pgserver import PASSWORD as PG_PASSWORD
from integration.pgserver import PgServer

ROOT, LEAF = "root.test", "leaf.test"
PASSWORD = "correct horse battery"


class Move:
    def __init__(self, tmp: str):
        self.tmp = tmp
        self.root = Cluster(os.path.join(tmp, "root"), extra_auth=", login_rate: 600", cluster_name=ROOT,
                            node_name="rootnode")
        self.leaf = Cluster(os.path.join(tmp, "leaf"), extra_auth=", login_rate: 600", cluster_name=LEAF,
                            node_name="leafnode", extra_general=", insecure: true")

    def rc_status(self) -> str:
        r = self.root.run_gatectl("get", "rc", "--format", "json")
        items = json.loads(r.stdout) if r.returncode == 0 else []
        rc = next((i for i in items if i["metadata"]["name"] == LEAF), None)
        return rc["status"]["connection"] if rc else ""

    def tc_status(self) -> str:
        r = self.leaf.run_gatectl("get", f"tc/{ROOT}", "--format", "json")
        return json.loads(r.stdout)[0]["status"]["connection"] if r.returncode == 0 else ""

    def handshakes(self) -> int:
        return self.leaf.log_text().count(f"trust: handshake with {ROOT} succeeded")

    def home(self, name: str) -> str:
        return os.path.join(self.tmp, "gate", name)


@pytest.fixture(scope="module")
def move():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    PgServer.remove_stale()
    pg = PgServer()
    tmp = tempfile.mkdtemp(prefix="gatehouse-move-")
    m = Move(tmp)
    try:
        pg.init()
        pg.start()
        with unix_user("visitor"):
            m.root.start()
            m.leaf.start()
            m.root.add_user("alice", "access", "visitor", PASSWORD)
            m.leaf.add_user("carol", "access", "visitor", PASSWORD)
            token = json.loads(ok(m.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                                                     "--format", "json")))["token"]
            tc = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
                  "spec": {"enabled": True, "token": token, "web_proxy_addr": m.root.web_addr,
                           "role_map": [{"remote": "access", "local": ["access"]}]}}
            ok(m.leaf.run_gatectl("create", write_yaml(os.path.join(tmp, "tc.yaml"), json.dumps(tc))))
            ok(m.root.run_gatectl("tokens", "rm", token))    # no token left to re-join with
            m.pg, m.dbname = pg, pg.create_database()
            yield m
    finally:
        m.leaf.stop()
        m.root.stop()
        pg.destroy()
        if os.environ.get("GATEHOUSE_E2E_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def test_root_of_a_live_trust_moves_to_postgresql(move):
    root, leaf = move.root, move.leaf
    wait_until(lambda: move.rc_status() == "online", 30, "the leaf online at the root")
    wait_until(lambda: move.tc_status() == "online", 30, "the root online at the leaf")
    alice = move.home("alice")
    ok(root.login("alice", PASSWORD, alice))
    assert ok(root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "echo before", gate_home=alice)) \
        == "before\n"
    assert move.handshakes() == 1
    conn_string = move.pg.conn_string(move.dbname)
    sqlite_file = os.path.join(root.data_dir, "backend.sqlite")
    assert os.path.isfile(sqlite_file)

    # Refused while the root still answers: a write after the copy would be lost.
    fails(run_module("daemon", "migrate", "-c", root.config_path, "--to", conn_string),
          "still answers at 127.0.0.1:")
    root.daemon.stop()

    # ---- the whole root is down: the leaf's own users keep working at the leaf (item 6)
    carol = move.home("carol")
    ok(leaf.login("carol", PASSWORD, carol))
    assert ok(leaf.run_gate("ssh", "visitor@leafnode", "echo leaf-alone", gate_home=carol)) == "leaf-alone\n"
    wait_until(lambda: move.tc_status() == "offline", 60, "the leaf notices the root is gone")
    assert ok(leaf.run_gate("ssh", "visitor@leafnode", "echo still-alone", gate_home=carol)) == "still-alone\n"

    # ---- gatehouse migrate, then the root starts again on PostgreSQL
    r = run_module("daemon", "migrate", "-c", root.config_path, "--to", conn_string)
    out = ok(r)
    assert out.startswith("Copied ") and f"from {sqlite_file} to the PostgreSQL " in out, out
    assert PG_PASSWORD not in out + r.stderr, "the database password must not be printed"
    copied = move.pg.query(move.dbname, "SELECT key FROM gatehouse_items")
    kinds = {key.split("/", 1)[0] for (key,) in copied}
    assert {"cas", "users", "passwords", "roles", "remote_clusters"} <= kinds, kinds
    os.rename(sqlite_file, sqlite_file + ".moved")          # nothing may still read it
    with open(root.config_path, encoding="utf-8") as fh:
        text = fh.read()
    storage = json.dumps({"type": "postgresql", "conn_string": conn_string})
    write_yaml(root.config_path, text.replace(f"listen_addr: '{root.auth_addr}'",
                                              f"listen_addr: '{root.auth_addr}', storage: {storage}"))
    root.daemon.start()

    # The leaf reconnects by itself, with the trust it had: no token, no second handshake.
    wait_until(lambda: move.rc_status() == "online", 60, "the leaf online at the moved root")
    wait_until(lambda: move.tc_status() == "online", 60, "the moved root online at the leaf")
    assert move.handshakes() == 1
    assert not os.path.exists(sqlite_file)
    # The certificate alice got before the move still works (same CAs, nothing re-issued) ...
    r = wait_until(lambda: (lambda r: r if r.returncode == 0 else None)(
        root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "echo after", gate_home=alice)),
        30, "ssh to the leaf with the certificate from before the move")
    assert r.stdout == "after\n"
    # ... her password moved with her, and what the root writes now lands in PostgreSQL.
    again = move.home("alice-again")
    ok(root.login("alice", PASSWORD, again))
    assert ok(root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "echo relogin", gate_home=again)) \
        == "relogin\n"
    assert ok(root.run_gate("ssh", "visitor@rootnode", "echo rootnode", gate_home=again)) == "rootnode\n"
    ok(root.run_gatectl("create", write_yaml(os.path.join(move.tmp, "after.yaml"), json.dumps(
        {"kind": "role", "version": "v5", "metadata": {"name": "after-move"}, "spec": {"allow": {}}}))))
    assert move.pg.query(move.dbname, "SELECT count(*) FROM gatehouse_items WHERE key = %s",
                         ("roles/after-move",)) == [(1,)]
    assert PG_PASSWORD not in root.log_text()
