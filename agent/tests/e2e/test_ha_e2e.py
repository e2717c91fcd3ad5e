"""A root that never goes down, end to end on loopback (issue 15), with real processes:

  PostgreSQL -- auth0, auth1 (one config, no leader) -- proxy0, proxy1 -- haproxy -- users
                                 |                          |  reverse tunnels
                              rootnode                    leaf (auth + proxy + leafnode)

Both auth servers share every piece of state through PostgreSQL; proxies, the root node
and gatectl list both auth servers and fail over; the leaf trusts the root through the
load balancer and holds a tunnel to each proxy. The tests kill one auth server (logins,
`gate clusters`, `gate ssh --cluster=leaf` keep working, a running session survives,
members resume their long-poll on the other server), count rate limits and token use
across servers, kill -9 an auth server during a write storm, take proxies away and back,
and lose the database while running (the leaf's tunnels stay up while the proxies cannot
record them). Database failover to a promoted standby under all of this is in
test_ha_db_failover_e2e.py; moving a site from SQLite is in test_ha_migrate_e2e.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time

import pytest

from conftest import Cluster, Daemon, fails, free_port, ok, unix_user, wait_until, write_yaml
from hasite import PASSWORD, ROOT, HARoot, haproxy_missing
from integration.pgserver import PgServer

LEAF = "leaf.test"


class Site:
    def __init__(self, tmp: str, pg: PgServer, dbname: str, conn_string: str = ""):
        self.tmp = tmp
        self.pg = pg
        self.root = HARoot(os.path.join(tmp, "root"), conn_string or pg.conn_string(dbname),
                           extra_auth=", validate_rate: 30")
        self.leaf = Cluster(os.path.join(tmp, "leaf"), extra_auth=", login_rate: 600", cluster_name=LEAF,
                            node_name="leafnode", extra_general=", insecure: true")

    def rc(self, i: int = 0) -> dict | None:
        r = self.root.gatectl(i, "get", "rc", "--format", "json")
        items = json.loads(r.stdout) if r.returncode == 0 else []
        return next((item for item in items if item["metadata"]["name"] == LEAF), None)

    def online(self, i: int = 0) -> bool:
        return (self.rc(i) or {}).get("status", {}).get("connection") == "online"

    def leaf_tunnels(self) -> int:
        r = self.leaf.run_gatectl("get", f"tc/{ROOT}", "--format", "json")
        if r.returncode != 0:
            return 0
        tc = json.loads(r.stdout)[0]
        return tc["status"]["tunnels"] if tc["status"]["connection"] == "online" else 0

    def announced(self) -> str:
        """The last proxy list the leaf heard from the root (its log)."""
        lines = [line for line in self.leaf.log_text().splitlines() if f"root {ROOT} announces proxies" in line]
        return lines[-1].split("announces proxies ", 1)[1].strip() if lines else ""

    def home(self, name: str) -> str:
        return os.path.join(self.tmp, "gate", name)

    def ssh_leaf(self, home: str, command: str = "echo leafnode; id -un", timeout: float = 60):
        return self.root.gate(home, "ssh", f"--cluster={LEAF}", "visitor@leafnode", command, timeout=timeout)


@pytest.fixture(scope="module")
def site():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    if haproxy_missing():
        pytest.skip("haproxy is not installed (apt-get install haproxy; make deps installs it)")
    PgServer.remove_stale()
    pg = PgServer()
    tmp = tempfile.mkdtemp(prefix="gatehouse-ha-")
    s = None
    try:
        pg.init()
        pg.start()
        s = Site(tmp, pg, pg.create_database())
        with unix_user("visitor"):
            s.root.start()
            s.leaf.start()
            s.root.add_user("alice", "access", "visitor")
            s.leaf.add_user("carol", "access", "visitor", PASSWORD)
            token = json.loads(s.root.ok(1, "tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                                         "--labels=env=ha", "--format", "json"))["token"]
            tc = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
                  "spec": {"enabled": True, "token": token, "web_proxy_addr": s.root.web_addr,
                           "forward_audit": True, "role_map": [{"remote": "access", "local": ["access"]}]}}
            ok(s.leaf.run_gatectl("create", write_yaml(os.path.join(tmp, "tc.yaml"), json.dumps(tc))))
            yield s
    finally:
        if s is not None:
            s.leaf.stop()
            s.root.stop()
        pg.destroy()
        if os.environ.get("GATEHOUSE_E2E_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- one state, two servers
def test_auth_servers_share_one_state(site):
    root = site.root
    status = [[line for line in root.ok(i, "status").splitlines() if " CA" in line] for i in (0, 1)]
    assert status[0] == status[1] and len(status[0]) >= 3     # one set of CAs
    # What one server writes, the other reads; each admin identity lists both servers.
    role = {"kind": "role", "version": "v5", "metadata": {"name": "shared"},
            "spec": {"allow": {"logins": ["visitor"], "node_labels": {"site": "root"}}}}
    root.ok(0, "create", write_yaml(os.path.join(site.tmp, "shared.yaml"), json.dumps(role)))
    assert json.loads(root.ok(1, "get", "role/shared", "--format", "json"))[0]["metadata"]["name"] == "shared"
    with open(os.path.join(root.data_dir("auth1"), "admin", "auth_addr"), encoding="utf-8") as fh:
        assert fh.read().split() == [root.auth_addrs[1], root.auth_addrs[0]]
    # gatectl takes a list: an address where nothing listens is skipped.
    assert "shared" in root.ok(0, "get", "roles", auth_server=f"127.0.0.1:1,{root.auth_addrs[1]}")


def test_leaf_reaches_every_proxy_through_the_load_balancer(site):
    wait_until(lambda: site.online(1), 60, "the leaf online at the root")
    wait_until(lambda: site.leaf_tunnels() == 2, 60, "a tunnel to each root proxy")
    assert site.announced() == "proxy0, proxy1"
    home = site.home("alice")
    ok(site.root.login(home, "alice"))
    assert ok(site.ssh_leaf(home)).split() == ["leafnode", "visitor"]
    assert ok(site.root.gate(home, "ssh", "visitor@rootnode", "echo root")) == "root\n"


# ---------------------------------------------------------------- limits and tokens held in the backend
def test_single_use_token_across_auth_servers(site, tmp_path):
    """A single-use node token admits one node, whichever auth server each node asks."""
    root = site.root
    token = json.loads(root.ok(0, "tokens", "add", "--type=node", "--single-use", "--format", "json"))["token"]
    daemons = []
    try:
        for i in (0, 1):
            cfg = (f"gatehouse: {{nodename: single{i}, data_dir: '{tmp_path}/n{i}', "
                   f"auth_servers: ['{root.auth_addrs[i]}'], join_token: '{token}', ca_pin: '{root.ca_pin()}'}}\n"
                   f"ssh_service: {{enabled: true, listen_addr: '127.0.0.1:{free_port()}'}}\n")
            daemons.append(Daemon(write_yaml(str(tmp_path / f"n{i}.yaml"), cfg), str(tmp_path / f"n{i}.log")))
        daemons[0].start()
        daemons[1].start(wait=False)
        assert daemons[1].wait_exit() == 1
        assert 'is single-use and already admitted node "single0"' in daemons[1].log_text()
    finally:
        for d in daemons:
            d.stop()


def test_join_limit_holds_across_auth_servers(site):
    """Joins with a wrong token, from one address, to both auth servers in turn: validate_rate (30 a
    minute here) is one budget for the cluster, not one per server, so both servers refuse long
    before 60 attempts. (After this test no join from 127.0.0.1 fits for a minute: it runs last of
    the joins. Counted exactly, with a fixed clock, in integration/test_ha_auth.py.)"""
    from gatehouse import pki
    from gatehouse.client import APIClient
    from gatehouse.errors import AccessDenied, LimitExceeded
    apis = [APIClient(f"https://{addr}", insecure=True) for addr in site.root.auth_addrs]
    body = {"token": "not-a-token-0000000", "role": "node", "name": "intruder",
            "ssh_public_key": pki.new_ssh_key().public_line, "tls_public_key": pki.new_tls_key()[1]}
    refused_by, allowed = set(), 0
    for i in range(60):
        try:
            apis[i % 2].post("/v1/join", body)
        except AccessDenied:
            allowed += 1
        except LimitExceeded as exc:
            assert str(exc).startswith("too many join attempts; wait ")
            refused_by.add(i % 2)
            if refused_by == {0, 1}:
                break
    assert refused_by == {0, 1}
    assert allowed <= 45, f"{allowed} wrong-token joins got through two servers with one budget of 30"


# ---------------------------------------------------------------- one auth server dies
def test_killing_an_auth_server_keeps_the_root_working(site):
    """kill -9 of auth0 while a session runs through the root to the leaf: new logins, `gate clusters`
    and `gate ssh --cluster=leaf` go on through auth1, the running session is untouched, and the
    members that long-polled auth0 resume on auth1 without missing a change."""
    root = site.root
    home = site.home("alice")
    ok(root.login(home, "alice"))
    session = root.gate_popen(home, "ssh", f"--cluster={LEAF}", "visitor@leafnode",
                              "echo started; sleep 6; echo survived")
    try:
        assert session.stdout.readline() == "started\n"
        root.kill(root.auths[0])
        # A change after the kill, made through the other server (gatectl fails over by itself):
        # a role only the updated caches know, for a user who logs in afterwards.
        late = {"kind": "role", "version": "v5", "metadata": {"name": "late"},
                "spec": {"allow": {"logins": ["visitor"], "node_labels": {"site": "root"}}}}
        root.ok(0, "create", write_yaml(os.path.join(site.tmp, "late.yaml"), json.dumps(late)))
        root.add_user("dave", "late", "visitor", i=0)
        home2 = site.home("after-kill")
        r = wait_until(lambda: (lambda r: r if r.returncode == 0 else None)(root.login(home2, "alice")), 30,
                       "a login after the auth kill")
        assert r.returncode == 0
        clusters = ok(root.gate(home2, "clusters"))  # with the certificates that login wrote
        assert LEAF in clusters and "online" in clusters.split(LEAF)[1].splitlines()[0]
        assert ok(site.ssh_leaf(home2)).split() == ["leafnode", "visitor"]
        # rootnode and the proxies resumed their long-poll on auth1: they know role "late".
        home3 = site.home("dave")
        ok(root.login(home3, "dave"))
        r = wait_until(lambda: (lambda r: r if r.returncode == 0 else None)(
            root.gate(home3, "ssh", "visitor@rootnode", "echo late-role")), 20, "rootnode knows role late")
        assert r.stdout == "late-role\n"
        out, err = session.communicate(timeout=60)
        assert session.returncode == 0 and out == "survived\n", err
    finally:
        if session.poll() is None:
            session.kill()
        root.auths[0].start()
    assert "switched to https://" + root.auth_addrs[1] in root.node.log_text()


def test_write_storm_with_kill9_loses_no_acknowledged_write(site):
    """Writers on both auth servers; auth1 is killed with -9 mid-storm. Every write either server
    acknowledged is there afterwards, whole; writes that got an error are whole or absent."""
    root = site.root
    acked: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def writer(server: int, wid: int):
        api = root.admin_api(server)
        n = 0
        while not stop.is_set():
            name = f"storm-{server}-{wid}-{n}"
            role = {"kind": "role", "version": "v5", "metadata": {"name": name, "description": "x" * (n % 50)},
                    "spec": {"allow": {"logins": [f"u{n}"], "node_labels": {"storm": name}}}}
            try:
                api.put("/v1/resources", {"resource": role})
                with lock:
                    acked[name] = role
            except Exception:   # noqa: BLE001 - the server died under it: outcome unknown
                with lock:
                    errors[name] = role
                if server == 1:
                    return
            n += 1
    threads = [threading.Thread(target=writer, args=(server, wid)) for server in (0, 1) for wid in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acked) > 60, 60, "the storm under way")
        root.kill(root.auths[1])
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    stored = {r["metadata"]["name"]: r for r in json.loads(root.ok(0, "get", "roles", "--format", "json"))}
    missing = [name for name in acked if name not in stored]
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:5]}"
    for name, role in {**acked, **errors}.items():
        if name in stored:
            assert stored[name]["spec"]["allow"]["node_labels"] == {"storm": [name]}
            assert stored[name]["metadata"].get("description", "") == role["metadata"]["description"]
    root.auths[1].start()


# ---------------------------------------------------------------- proxies come and go
def test_proxy_leaving_and_coming_back_is_seen_by_the_leaf(site):
    root = site.root
    wait_until(lambda: site.leaf_tunnels() == 2, 60, "both tunnels")
    root.proxies[1].stop()            # a proxy that stops says so: it is no longer announced
    wait_until(lambda: site.announced() == "proxy0", 20, "the leaf hears that proxy1 left")
    wait_until(lambda: site.leaf_tunnels() == 1, 20, "one tunnel")
    home = site.home("alice")
    ok(root.login(home, "alice"))
    assert ok(site.ssh_leaf(home, "echo one-proxy")) == "one-proxy\n"
    root.proxies[1].start()
    wait_until(lambda: site.announced() == "proxy0, proxy1", 30, "the leaf hears that proxy1 is back")
    wait_until(lambda: site.leaf_tunnels() == 2, 60, "two tunnels again")
    root.kill(root.proxies[0])        # a proxy that dies is dropped when its record expires
    wait_until(lambda: site.announced() == "proxy1", 45, "the leaf hears that proxy0 is gone")
    assert ok(site.ssh_leaf(home, "echo after-kill")) == "after-kill\n"
    root.proxies[0].start()
    wait_until(lambda: site.leaf_tunnels() == 2, 60, "two tunnels again")


def test_forwarding_moves_to_another_proxy_when_its_proxy_dies(site):
    """One root proxy at a time forwards the leaf's audit, holding a lease with no expiry (an idle
    leaf costs no write); when that proxy dies, another takes over once the dead one's record
    expires, and the leaf's new events still reach the root. proxy1 is killed second, after
    proxy0 came back: by then it is the forwarder whichever it was before (proxy0's death
    moved the lease to it, or it held it all along)."""
    root = site.root
    home = site.home("carol-leaf")
    ok(site.leaf.login("carol", PASSWORD, home))

    def sessions() -> set[str]:
        return {e["sid"] for e in json.loads(ok(site.leaf.run_gatectl(
            "audit", "search", "--format=json", "--event=session.start", "--user=carol", "--limit=1000")))["items"]}

    def forwarded(marker: str) -> None:
        before = sessions()
        assert marker in ok(site.leaf.run_gate("ssh", "visitor@leafnode", f"echo {marker}", gate_home=home))
        sid, = wait_until(lambda: sessions() - before or None, 30, f"the session {marker}")
        wait_until(lambda: json.loads(ok(root.gatectl(0, "audit", "search", "--format=json", f"--cluster={LEAF}",
                                                      f"--session={sid}")))["items"] or None,
                   120, f"the leaf's session {sid} ({marker}) at the root")

    wait_until(lambda: site.leaf_tunnels() == 2, 60, "both tunnels")
    forwarded("both-proxies")
    for i in (0, 1):
        root.kill(root.proxies[i])
        forwarded(f"without-proxy{i}")
        root.proxies[i].start()
        wait_until(lambda: site.leaf_tunnels() == 2, 60, "two tunnels again")


# ---------------------------------------------------------------- the database goes away
def test_database_lost_while_running(site):
    """Writes fail with one clear sentence, sessions keep working from the members' caches, and
    the auth servers recover by themselves when the database is back."""
    root = site.root
    home = site.home("alice")
    ok(root.login(home, "alice"))
    site.pg.stop()
    try:
        role = write_yaml(os.path.join(site.tmp, "while-down.yaml"), json.dumps(
            {"kind": "role", "version": "v5", "metadata": {"name": "while-down"}, "spec": {"allow": {}}}))
        out = fails(root.gatectl(0, "create", role), "cannot reach the PostgreSQL database")
        assert f"at 127.0.0.1:{site.pg.port}" in out and "check that the server runs" in out
        assert out.count("\n") == 1 and "pg-Secret" not in out
        # Nodes decide from their cache, proxies route from theirs: an existing login still works,
        # also after the proxies failed to report the leaf's tunnel presence (the tunnels stay).
        wait_until(lambda: all("cannot report tunnel presence to auth" in p.log_text() for p in root.proxies),
                   90, "a presence summary on each proxy while the database is down")
        assert ok(root.gate(home, "ssh", "visitor@rootnode", "echo cached")) == "cached\n"
        assert ok(site.ssh_leaf(home, "echo leaf-cached")) == "leaf-cached\n"
    finally:
        site.pg.start()
    wait_until(lambda: root.gatectl(0, "create", role).returncode == 0, 30, "writes work again")
    assert "while-down" in root.ok(1, "get", "roles")
    for auth in root.auths:
        assert "pg-Secret" not in auth.log_text()


def test_unreachable_database_at_start(site, tmp_path):
    cfg = (f"gatehouse: {{nodename: lonely, data_dir: '{tmp_path}/d'}}\n"
           f"auth_service: {{enabled: true, cluster_name: {ROOT}, listen_addr: '127.0.0.1:{free_port()}', "
           f"storage: {{type: postgresql, conn_string: 'host=127.0.0.1 port=1 dbname=gh user=gh "
           f"password=Top-Secret-1'}}}}\n")
    daemon = Daemon(write_yaml(str(tmp_path / "lonely.yaml"), cfg), str(tmp_path / "lonely.log"))
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    log = daemon.log_text()
    error = [line for line in log.splitlines() if line.startswith("ERROR: ")]
    assert len(error) == 1, log
    assert error[0].startswith('ERROR: cannot reach the PostgreSQL database "gh" at 127.0.0.1:1 (connection ')
    assert error[0].endswith("Connection refused); check that the server runs and accepts this host, and the "
                             "host, port, user, password and TLS settings in storage.conn_string")
    assert "Top-Secret-1" not in log
