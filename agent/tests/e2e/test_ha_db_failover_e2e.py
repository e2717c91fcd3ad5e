"""Database failover with the whole root running on top (issue 15 item 4), end to end:

  primary ==sync==> standby          (real PostgreSQL servers, streaming replication)
     \\ multi-host conn_string, target_session_attrs=read-write
  auth0, auth1 -- proxy0, proxy1 -- haproxy -- users      rootnode
                         |  reverse tunnels
                       leaf (auth + proxy + leafnode)

Writers put roles through each auth server while a `gate ssh --cluster=leaf` session
runs; the primary is killed with SIGKILL and the standby promoted. The auth servers find
the new primary by themselves (each acknowledges writes again, nobody restarts them),
every write acknowledged before the kill is on the new primary, logins, `gate clusters`
and `gate ssh --cluster=leaf` work again, a change made after the failover reaches the
members' caches through the change feed, the running session survives, and the leaf is
online again at the root with the trust it had (no new token, no second handshake).
Then the whole root stops (issue 15 item 6): the leaf's own users keep working at the
leaf, and the leaf reconnects by itself when the root is back. Backend-level failover,
counted write by write, is in integration/test_ha_db_failover.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import ok, unix_user, wait_until, write_yaml
from hasite import PASSWORD, ROOT, RoleWriters, haproxy_missing, trust_leaf
from integration.pgserver import PASSWORD as PG_PASSWORD
from integration.pgserver import PgServer
from test_ha_e2e import LEAF, Site


@pytest.fixture(scope="module")
def failover_site():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    if haproxy_missing():
        pytest.skip("haproxy is not installed (apt-get install haproxy; make deps installs it)")
    PgServer.remove_stale()
    primary = PgServer()
    standby = None
    tmp = tempfile.mkdtemp(prefix="gatehouse-ha-dbfail-")
    s = None
    try:
        primary.init(replication=True)
        primary.start()
        dbname = primary.create_database()
        standby = primary.standby(synchronous=True)
        s = Site(tmp, primary, dbname, conn_string=primary.failover_conn_string(standby, dbname))
        s.standby, s.dbname = standby, dbname
        with unix_user("visitor"):
            s.root.start()
            s.leaf.start()
            s.root.add_user("alice", "access", "visitor")
            s.leaf.add_user("carol", "access", "visitor", PASSWORD)
            trust_leaf(s.root, s.leaf, os.path.join(tmp, "tc.yaml"))
            yield s
    finally:
        if s is not None:
            s.leaf.stop()
            s.root.stop()
        for server in (standby, primary):
            if server is not None:
                server.destroy(mode="immediate")
        if os.environ.get("GATEHOUSE_E2E_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def test_primary_killed_and_standby_promoted_under_a_running_root(failover_site):
    site, root = failover_site, failover_site.root
    wait_until(lambda: site.online(0), 60, "the leaf online at the root")
    wait_until(lambda: site.leaf_tunnels() == 2, 60, "a tunnel to each root proxy")
    handshakes = site.leaf.log_text().count(f"trust: handshake with {ROOT} succeeded")
    assert handshakes == 1
    home = site.home("alice")
    ok(root.login(home, "alice"))
    session = root.gate_popen(home, "ssh", f"--cluster={LEAF}", "visitor@leafnode",
                              "echo started; read line; echo \"survived $line\"", stdin=subprocess.PIPE)
    try:
        assert session.stdout.readline() == "started\n"
        with RoleWriters(root, prefix="fo") as writers:
            wait_until(lambda: writers.acked_by(0) > 30 and writers.acked_by(1) > 30, 60, "writes on both servers")
            before_kill = writers.snapshot()
            site.pg.kill()
            site.standby.promote()
            promoted = time.monotonic()
            # Each auth server acknowledges writes again by itself: its pool and its change-feed
            # listener reconnect through the multi-host string to the new primary.
            wait_until(lambda: writers.acked_by(0, promoted) > 10 and writers.acked_by(1, promoted) > 10,
                       60, "writes acknowledged by both auth servers after the promotion")
        assert writers.failed > 0, "the kill went unnoticed: the writers cannot have used the killed primary"

        # No write acknowledged before the kill is lost: they are all on the new primary.
        rows = {key for (key,) in site.standby.query(site.dbname, "SELECT key FROM gatehouse_items WHERE key "
                                                                  "LIKE %s", ("roles/fo-%",))}
        lost = [name for name in before_kill if f"roles/{name}" not in rows]
        assert not lost, f"{len(lost)} of {len(before_kill)} acknowledged writes lost: {lost[:5]}"

        # Logins, `gate clusters` and `gate ssh --cluster=leaf` work again, through the load balancer.
        home2 = site.home("after-failover")
        wait_until(lambda: root.login(home2, "alice").returncode == 0, 30, "a login after the failover")
        wait_until(lambda: site.online(0) and site.online(1), 60, "the leaf online again at the root")
        clusters = ok(root.gate(home2, "clusters"))
        assert LEAF in clusters and "online" in clusters.split(LEAF)[1].splitlines()[0]
        assert ok(site.ssh_leaf(home2)).split() == ["leafnode", "visitor"]

        # A change made after the failover reaches the members through the change feed: rootnode
        # admits a user whose only role was created on the new primary.
        role = json.dumps(RoleWriters.role("promoted"))
        root.ok(1, "create", write_yaml(os.path.join(site.tmp, "promoted.yaml"), role))
        root.add_user("erin", "promoted", "visitor", i=1)
        home3 = site.home("erin")
        ok(root.login(home3, "erin"))
        r = wait_until(lambda: (lambda r: r if r.returncode == 0 else None)(
            root.gate(home3, "ssh", "visitor@rootnode", "echo new-primary")), 30, "rootnode knows role promoted")
        assert r.stdout == "new-primary\n"

        # The session that ran through the failover is still there and still answers.
        out, err = session.communicate("after-failover\n", timeout=60)
        assert session.returncode == 0 and out == "survived after-failover\n", err
    finally:
        if session.poll() is None:
            session.kill()
    # The leaf came back with the trust it had: no token (removed above), no second handshake.
    assert site.leaf.log_text().count(f"trust: handshake with {ROOT} succeeded") == handshakes
    for auth in root.auths:
        log = auth.log_text()
        assert PG_PASSWORD not in log and PASSWORD not in log


def test_leaf_works_alone_while_the_whole_root_is_down_and_reconnects_by_itself(failover_site):
    """Issue 15 item 6 with the HA root: both auth servers, both proxies, haproxy and rootnode
    stopped. The leaf's own users log in at the leaf and reach its node; when the root comes
    back the leaf reconnects to both proxies by itself, with the trust it had, and root users
    reach the leaf again with the certificates they had. (The same with a one-process root
    that moves to PostgreSQL meanwhile: test_ha_migrate_e2e.py.)"""
    site, root, leaf = failover_site, failover_site.root, failover_site.leaf
    wait_until(lambda: site.online(0) and site.leaf_tunnels() == 2, 60, "the leaf online with two tunnels")
    handshakes = leaf.log_text().count(f"trust: handshake with {ROOT} succeeded")
    alice = site.home("alice-before-outage")
    ok(root.login(alice, "alice"))
    root.stop()
    try:
        carol = site.home("carol")
        ok(leaf.login("carol", PASSWORD, carol))
        assert ok(leaf.run_gate("ssh", "visitor@leafnode", "echo leaf-alone", gate_home=carol)) == "leaf-alone\n"
        assert site.ssh_leaf(alice, timeout=30).returncode != 0      # the way through the root is shut
    finally:
        root.start_again()
    wait_until(lambda: site.online(0) and site.leaf_tunnels() == 2, 60, "the leaf back with a tunnel to each proxy")
    assert leaf.log_text().count(f"trust: handshake with {ROOT} succeeded") == handshakes
    r = wait_until(lambda: (lambda r: r if r.returncode == 0 else None)(site.ssh_leaf(alice)), 30,
                   "alice reaches the leaf with the certificate from before the outage")
    assert r.stdout.split() == ["leafnode", "visitor"]
