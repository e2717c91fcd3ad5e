"""Attacks by hostile trust members (issue 13: items 2 and 3, and the trust items of "Low").

Real processes throughout: a root ("root.example.com", whose proxy is also known as
"proxy.gate.test"), a leaf ("leaf.example.com") that trusts it, and a victim leaf that
trusts no one yet, each a `gatehouse start` process; the attackers are the fakes in
trust_fakes.py (a leaf, a root and an SSH host with their own keys, speaking the real
protocols) or a real member's stolen identity. Each test performs the attack, asserts
the one-sentence refusal, and checks that nothing was stored or changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time

import pytest

from conftest import Cluster, ok, unix_user, wait_until, write_yaml
from trust_fakes import (FakeLeaf, FakeRoot, HostileSSHHost, LoopThread, backend_edit, backend_keys, error_message,
                         present_user_certificate, tunnel_identity)

ROOT, LEAF, VICTIM = "root.example.com", "leaf.example.com", "victim.example.org"
PROXY_HOST = "proxy.gate.test"
PASSWORD = "correct horse battery"


def error_of(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, f"expected failure, got:\n{r.stdout}"
    return r.stderr.strip()


def tc_json(name: str, web: str, token: str = "x" * 20, role_map=None) -> str:
    role_map = role_map or [{"remote": "access", "local": ["access"]}]
    return json.dumps({"kind": "trusted_cluster", "version": "v2", "metadata": {"name": name},
                       "spec": {"enabled": True, "token": token, "web_proxy_addr": web, "role_map": role_map}})


class World:
    def __init__(self, tmp: str):
        self.tmp = tmp
        self.loop = LoopThread()
        self.root = Cluster(os.path.join(tmp, "root"), extra_auth=", login_rate: 600, validate_rate: 6000",
                            cluster_name=ROOT, node_name="rootnode")
        # The root proxy is also reached as proxy.gate.test (public_addr): no leaf may be named over it.
        with open(self.root.config_path, encoding="utf-8") as fh:
            text = fh.read()
        write_yaml(self.root.config_path, text.replace(
            "proxy_service: {enabled: true, ",
            f"proxy_service: {{enabled: true, public_addr: '{PROXY_HOST}:{self.root.web_port}', "
            f"ssh_public_addr: '127.0.0.1:{self.root.ssh_proxy_port}', "
            f"tunnel_public_addr: '127.0.0.1:{self.root.tunnel_port}', "))
        self.leaf = Cluster(os.path.join(tmp, "leaf"), extra_auth=", login_rate: 600", cluster_name=LEAF,
                            node_name="leafnode", extra_general=", insecure: true")
        self.victim = Cluster(os.path.join(tmp, "victim"), cluster_name=VICTIM, node_name="victimproxy", ssh=False,
                              extra_general=", insecure: true")

    def token(self, *extra) -> str:
        out = ok(self.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=30m", *extra,
                                       "--format", "json"))
        return json.loads(out)["token"]

    def create_tc(self, cluster: Cluster, text: str) -> subprocess.CompletedProcess:
        return cluster.run_gatectl("create", write_yaml(os.path.join(cluster.tmp, f"tc-{time.monotonic_ns()}.json"),
                                                        text))

    def rc_status(self, name: str) -> str | None:
        items = json.loads(ok(self.root.run_gatectl("get", "rc", "--format", "json")))
        return next((i["status"]["connection"] for i in items if i["metadata"]["name"] == name), None)

    def assert_nothing_stored_at_root(self, leaf: str) -> None:
        cas = backend_keys(self.root.data_dir, "cas/")
        assert not [k for k in cas if k.startswith(f"cas/{leaf}/")], cas
        assert f"remote_clusters/{leaf}" not in backend_keys(self.root.data_dir, "remote_clusters/")
        refused = [e for e in self.root.audit("trusted_cluster.validate") if e.get("leaf") == leaf]
        assert refused and not refused[-1]["success"], refused

    def cas_of(self, cluster: Cluster) -> dict[str, str]:
        """{"CLUSTER/TYPE": public key line} as the cluster's own gatectl lists them."""
        items = json.loads(ok(cluster.run_gatectl("get", "ca", "--format", "json")))
        return {i["metadata"]["name"]: i["spec"]["active_keys"][0] for i in items}

    def stop(self) -> None:
        for c in (self.victim, self.leaf, self.root):
            c.stop()
        self.loop.stop()


@pytest.fixture(scope="module")
def world():
    if os.geteuid() != 0:
        pytest.skip("attack tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-attack-trust-")
    w = World(tmp)
    with unix_user("visitor"):
        try:
            w.root.start()
            w.leaf.start()
            w.victim.start()
            w.root.add_user("alice", "access", "visitor", PASSWORD)
            w.leaf.add_user("carol", "access", "visitor", PASSWORD)
            # "*" maps every root role, as many real role maps do: the role-less tunnel
            # certificate must still never become a leaf user.
            ok(w.create_tc(w.leaf, tc_json(ROOT, w.root.web_addr, w.token(), role_map=[
                {"remote": "access", "local": ["access"]}, {"remote": "*", "local": ["access"]}])))
            wait_until(lambda: w.rc_status(LEAF) == "online", 30, "the leaf online at the root")
            yield w
        finally:
            w.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


# ================================================================ item 2: leaf names
@pytest.mark.parametrize("name, refusal", [
    ("com", 'leaf cluster name "com" is a single label, and users\' machines would trust it for every host '
            'matching "*.com"; use a name of two labels or more, e.g. com.example.com'),
    ("example.com", f'the leaf cluster name "example.com" overlaps the root cluster\'s name "{ROOT}"'),
    (f"east.{ROOT}", f'the leaf cluster name "east.{ROOT}" overlaps the root cluster\'s name "{ROOT}"'),
    ("gate.test", f'the leaf cluster name "gate.test" is a suffix of the root proxy address "{PROXY_HOST}", so '
                  f'users\' machines would trust the leaf\'s host CA for it ("*.gate.test"); rename the leaf\'s '
                  f"auth_service.cluster_name"),
    (f"x.{LEAF}", f'the leaf cluster name "x.{LEAF}" overlaps the name of another cluster the root knows'),
    ("10.0.1", 'leaf cluster name "10.0.1" ends in a number, so "*.10.0.1" would match IP addresses; end it '
               "with a name, e.g. 10.0.1.example"),
])
def test_leaf_names_that_would_cover_other_hosts_are_refused(world, name, refusal):
    status, answer = FakeLeaf(name).handshake(world.root.web_addr, world.token())
    message = error_message(answer)
    assert status == 400 and refusal in message and "\n" not in message, (status, answer)
    world.assert_nothing_stored_at_root(name)


def test_leaf_name_above_another_leaf_is_refused(world):
    token = world.token()
    below = FakeLeaf("a.b.site.test")
    assert below.handshake(world.root.web_addr, token)[0] == 200
    try:
        status, answer = FakeLeaf("b.site.test").handshake(world.root.web_addr, token)
        assert status == 400, answer
        assert error_message(answer) == (
            'the leaf cluster name "b.site.test" overlaps the name of another cluster the root knows ("*.b.site.test" '
            "and \"*.NAME\" would cover each other's hosts); rename the leaf's auth_service.cluster_name")
        world.assert_nothing_stored_at_root("b.site.test")
    finally:
        ok(world.root.run_gatectl("rm", "rc/a.b.site.test"))


def test_token_bound_to_a_leaf_name_admits_only_that_name(world):
    token = world.token("--leaf-name=bound.site.test")
    listed = json.loads(ok(world.root.run_gatectl("tokens", "ls", "--format", "json")))
    assert any(t["spec"].get("leaf_name") == "bound.site.test" for t in listed)
    status, answer = FakeLeaf("other.site.test").handshake(world.root.web_addr, token)
    assert status == 403
    assert error_message(answer) == (
        'this trusted_cluster join token admits only the leaf cluster "bound.site.test", not "other.site.test"; ask '
        'the root\'s admin for a token for "other.site.test" or name the leaf "bound.site.test"')
    world.assert_nothing_stored_at_root("other.site.test")
    # The bound name itself joins with it.
    assert FakeLeaf("bound.site.test").handshake(world.root.web_addr, token)[0] == 200
    ok(world.root.run_gatectl("rm", "rc/bound.site.test"))
    # Binding a name that breaks the rules, or binding a node token, is refused at creation.
    err = error_of(world.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--leaf-name=com"))
    assert '--leaf-name "com" is a single label' in err, err
    err = error_of(world.root.run_gatectl("tokens", "add", "--type=node", "--leaf-name=bound.site.test"))
    assert "--leaf-name applies to trusted_cluster tokens only" in err, err


def test_gate_trusts_a_host_only_through_the_host_ca_of_its_cluster(world):
    """A leaf registered before the name rules as "example.com": users' known_hosts trust its CA for
    "*.example.com", which also matches the real leaf's nodes. Its CA signs a host certificate for
    a node of the real leaf; gate must refuse it before authenticating."""
    evil = FakeLeaf("example.com")

    async def register_old_leaf(backend):
        await backend.put("cas/example.com/host", {"cluster_name": "example.com", "type": "host", "active": True,
                                                   "local": False, "public": evil.host_ca.public_line})
        await backend.put("remote_clusters/example.com", {"kind": "remote_cluster", "version": "v3",
                                                          "metadata": {"name": "example.com", "labels": {}}})

    async def forget_old_leaf(backend):
        await backend.delete_range("cas/example.com/")
        await backend.delete("remote_clusters/example.com")

    backend_edit(world.root.data_dir, register_old_leaf)
    host = HostileSSHHost(world.loop, evil.host_ca, ["evilnode", f"evilnode.{LEAF}"]).start()
    try:
        ok(world.root.login("alice", PASSWORD))
        with open(os.path.join(world.root.profile_dir(), "known_hosts"), encoding="utf-8") as fh:
            assert "@cert-authority *.example.com,[*.example.com]:* " in fh.read()  # the pattern matches leaf nodes
        # The hostile host is registered as a node of the real leaf (its admin, or a node, put it there).
        from gatehouse.client import APIClient
        from gatehouse.identity import IdentityFiles
        APIClient.for_identity(IdentityFiles(os.path.join(world.leaf.data_dir, "admin"))).post(
            "/v1/nodes/heartbeat", {"name": "evilnode", "addr": f"127.0.0.1:{host.port}", "labels": {},
                                    "hostname": "evilnode", "interval": 300})
        wait_until(lambda: "evilnode" in world.root.run_gate("ls", f"--cluster={LEAF}").stdout, 20,
                   "the node listed in the leaf")
        err = error_of(world.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@evilnode", "true"))
        assert f'node "evilnode" presented a host key not signed by cluster "{LEAF}"' in err, err
        assert host.auth_attempts == 0, "gate must not authenticate to a host vouched for by another cluster's CA"
        # The real leaf node, signed by the leaf's own CA, is still reached with the same profile.
        assert ok(world.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "echo ok")) == "ok\n"
    finally:
        host.stop()
        backend_edit(world.root.data_dir, forget_old_leaf)
        backend_edit(world.leaf.data_dir, lambda backend: backend.delete("nodes/evilnode"))


# ================================================================ item 3: CA keys
def test_leaf_cannot_register_a_host_ca_another_cluster_holds(world):
    root_cas, token = world.cas_of(world.root), world.token()
    for line in (root_cas[f"{LEAF}/host"], root_cas[f"{ROOT}/host"], root_cas[f"{ROOT}/user"]):
        status, answer = FakeLeaf("copycat.site.test").handshake(world.root.web_addr, token, host_cas=[line])
        assert status == 400 and error_message(answer) == (
            "the leaf's host certificate authority is already registered here for another cluster; every cluster "
            "needs its own CA keys — check that the leaf's auth service data was not copied from another cluster")
        world.assert_nothing_stored_at_root("copycat.site.test")
    # The real leaf's tunnels are still filed under the real leaf.
    assert world.rc_status(LEAF) == "online"


def _own(ca_type: str):
    return lambda world, fake: world.cas_of(world.victim)[f"{VICTIM}/{ca_type}"]


HOSTILE_ANSWERS = [
    ("its user CA is the leaf's own user CA", lambda w, f: {**f.honest_answer(), "user_ca": _own("user")(w, f)},
     "the root's user certificate authority is this cluster's own user certificate authority; refusing trust — "
     "a root must use its own CA keys"),
    ("its host CA is the leaf's own host CA", lambda w, f: {**f.honest_answer(), "host_ca": _own("host")(w, f)},
     "the root's host certificate authority is this cluster's own host certificate authority; refusing trust"),
    ("its user CA is the leaf's own host CA", lambda w, f: {**f.honest_answer(), "user_ca": _own("host")(w, f)},
     "the root's user certificate authority is this cluster's own host certificate authority; refusing trust"),
    ("a malformed CA", lambda w, f: {**f.honest_answer(), "user_ca": "ssh-ed25519 AAAA broken"},
     "the root's user certificate authority is not one valid SSH public key (the SSH key line does not contain "
     "valid base64 key data); "
     "refusing trust"),
    ("two CAs in one field", lambda w, f: {**f.honest_answer(),
                                           "host_ca": f.host_ca.public_line + "\n" + f.user_ca.public_line},
     "the root's host certificate authority is not one valid SSH public key (it is not one line of printable text"),
    ("a list of CAs", lambda w, f: {**f.honest_answer(), "user_ca": [f.user_ca.public_line, f.host_ca.public_line]},
     "the root's answer to the handshake has no user_ca"),
    ("one key for both CAs", lambda w, f: {**f.honest_answer(), "user_ca": f.host_ca.public_line},
     "the root answered with one key as both its host and its user certificate authority; refusing trust"),
    ("an enormous answer", lambda w, f: {**f.honest_answer(), "user_ca": "A" * (2 * 1024 * 1024)},
     "answered the trust handshake with more than 64 KiB; is web_proxy_addr a Gatehouse root proxy?"),
    ("a tunnel address that is not one", lambda w, f: {**f.honest_answer(),
                                                        "tunnel_addr": "169.254.169.254:80; rm -rf /"},
     'the root\'s tunnel_addr "169.254.169.254:80; rm -rf /" is not a host:port address with a port from 1 to '
     "65535; refusing trust"),
]


@pytest.fixture
def fake_root(world):
    root = FakeRoot(world.loop).start()
    yield root
    world.victim.run_gatectl("rm", f"tc/{root.name}")  # if a test let it in
    root.stop()


@pytest.mark.parametrize("what, answer, refusal", HOSTILE_ANSWERS, ids=[a[0] for a in HOSTILE_ANSWERS])
def test_hostile_root_answers_are_refused(world, fake_root, what, answer, refusal):
    crafted = answer(world, fake_root)
    fake_root.answer = lambda request: crafted
    before = backend_keys(world.victim.data_dir, "cas/")
    err = error_of(world.create_tc(world.victim, tc_json(fake_root.name, fake_root.web_addr)))
    assert refusal in err and "\n" not in err, err
    assert fake_root.handshakes, "the victim really asked the hostile root"
    # Nothing stored: no trusted_cluster, no CA, and the victim's own CAs untouched.
    assert backend_keys(world.victim.data_dir, "cas/") == before == sorted(f"cas/{VICTIM}/{t}" for t in
                                                                           ("host", "tls", "user"))
    assert backend_keys(world.victim.data_dir, "trusted_clusters/") == []
    failed = [e for e in world.victim.audit("trusted_cluster.create") if not e["success"]]
    assert failed and refusal.split(";")[0][:60] in failed[-1]["error"]


def test_corrupt_ca_records_do_not_break_the_snapshot_or_logins(world):
    """Records no current code writes (a bug, an older version, a hand edit): the leaf skips them."""
    bad = {"cas/broken1.site.test/user": {"cluster_name": "broken1.site.test", "type": "user", "active": True,
                                          "public": "ssh-ed25519 AAAA broken", "role_map": [{"remote": "*",
                                                                                             "local": ["access"]}]},
           "cas/broken2.site.test/host": {"cluster_name": "broken2.site.test", "type": "host", "active": True,
                                          "public": 12345},
           "cas/broken3.site.test/user": {"type": "user", "public": "A" * 100_000}}

    async def inject(backend):
        for key, value in bad.items():
            await backend.put(key, value)

    async def remove(backend):
        for key in bad:
            await backend.delete(key)

    backend_edit(world.leaf.data_dir, inject)
    try:
        # A change after the bad records: a new role and user the leaf's node must learn from its snapshot.
        ok(world.leaf.run_gatectl("create", write_yaml(os.path.join(world.tmp, "probe.json"), json.dumps(
            {"kind": "role", "version": "v5", "metadata": {"name": "probe"},
             "spec": {"allow": {"logins": ["visitor"], "node_labels": {"*": "*"}}}}))))
        world.leaf.add_user("erin", "probe", "visitor", PASSWORD)
        home = os.path.join(world.tmp, "gate-erin")
        ok(world.leaf.run_gate("login", f"--proxy={world.leaf.web_addr}", "--user=erin", "--insecure",
                               "--password-stdin", input=PASSWORD + "\n", gate_home=home))
        r = wait_until(lambda: (lambda r: r if r.returncode == 0 else None)(
            world.leaf.run_gate("ssh", "visitor@leafnode", "echo still-works", gate_home=home)), 20,
            "the leaf node decides with the new role")
        assert r.stdout == "still-works\n"
        assert "Cluster" in ok(world.leaf.run_gatectl("status"))
        assert "skipping the certificate authority record 'cas/broken1.site.test/user'" in world.leaf.log_text()
        # Root users still reach the leaf through the tunnel.
        ok(world.root.login("alice", PASSWORD))
        assert ok(world.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "echo ok")) == "ok\n"
    finally:
        backend_edit(world.leaf.data_dir, remove)


# ================================================================ low: tunnel identities as users
def test_root_proxy_tunnel_certificate_cannot_log_in_as_a_user(world):
    """A compromised root proxy holds its role-less tunnel certificate; the leaf maps remote "*"."""
    from gatehouse.wire import TUNNEL_LOGIN
    private, cert = tunnel_identity(world.root.data_dir)
    sessions_before = len(world.leaf.audit("session.start"))
    for cluster, port, where in ((LEAF, world.leaf.node_port, "this node"),
                                 (LEAF, world.leaf.ssh_proxy_port, "this proxy"),
                                 (ROOT, world.root.node_port, "this node")):
        authenticated, banners = present_user_certificate(world.loop, "127.0.0.1", port, TUNNEL_LOGIN, private, cert)
        assert not authenticated
        assert (f"gatehouse: a root proxy's tunnel certificate cannot log in as a user on {where} in cluster "
                f"\"{cluster}\"; users log in with 'gate login'") in banners, banners
    assert len(world.leaf.audit("session.start")) == sessions_before
    # The tunnels themselves keep working.
    assert world.rc_status(LEAF) == "online"


# ================================================================ low: values reported by proxies
def test_proxy_reports_are_validated_and_bounded(world):
    """A compromised root proxy (its real identity) reports intervals and addresses to auth."""
    from gatehouse.client import APIClient
    from gatehouse.errors import BadParameter
    from gatehouse.identity import IdentityFiles
    proxy = APIClient.for_identity(IdentityFiles(os.path.join(world.root.data_dir, "identity", "proxy")))
    for path, body in (("/v1/proxies/heartbeat", {"interval": 1e12}),
                       ("/v1/proxies/heartbeat", {"interval": "soon"}),
                       ("/v1/tunnels/heartbeat", {"cluster": LEAF, "connected": True, "interval": 1e12}),
                       ("/v1/tunnels/heartbeat", {"cluster": LEAF, "connected": True, "interval": 0.001})):
        with pytest.raises(BadParameter) as info:
            proxy.post(path, body)
        assert str(info.value).startswith("the heartbeat interval must be a number of seconds from 0.5 to 300, "
                                          "not "), info.value
    # Presence (what root proxies report instead of every heartbeat): intervals, shards, names and times
    # are checked; a heartbeat "from the future" is stored as now, so it cannot keep a leaf fresh.
    from gatehouse.wire import PRESENCE_SHARDS, presence_shard
    shard = presence_shard(LEAF)
    for body, refusal in (
            ({"summary_interval": 1e12, "shards": []}, "summary_interval must be a number of seconds from 0.5 to 300"),
            ({"summary_interval": 30, "shards": [{"shard": shard, "leaves": {LEAF: [1.0, 1, 1e12, "default"]}}]},
             f'the heartbeat interval of leaf "{LEAF}" must be a number of seconds from 0.5 to 300'),
            ({"summary_interval": 30, "shards": [{"shard": (shard + 1) % PRESENCE_SHARDS,
                                                  "leaves": {LEAF: [1.0, 1, 4, "default"]}}]},
             f'leaf "{LEAF}" does not belong to presence shard {(shard + 1) % PRESENCE_SHARDS}'),
            ({"summary_interval": 30, "shards": [{"shard": 99, "leaves": {}}]}, "shard must be a number from 0 to 15"),
            ({"summary_interval": 30, "shards": [{"shard": 0, "leaves": {}}] * 17},
             "shards must be a list of at most 16 presence shards"),
            ({"summary_interval": 30, "shards": [{"shard": shard, "leaves": {"../x": [1.0, 1, 4, "default"]}}]},
             "leaf cluster name")):
        with pytest.raises(BadParameter) as info:
            proxy.post("/v1/tunnels/presence", body)
        assert refusal in str(info.value), info.value
    proxy.post("/v1/tunnels/presence", {"summary_interval": 30, "shards": [
        {"shard": shard, "leaves": {LEAF: [time.time() + 1e9, 1, 4, "weird"]}}]})
    records = []
    backend_edit(world.root.data_dir, lambda b: _collect(b, "presence/", records))
    rows = [row for r in records for row in r["leaves"].values()]
    assert rows and all(row[2] <= 300 and row[0] <= time.time() and row[3] in ("default", "low_bandwidth")
                        for row in rows), rows
    # A web address the proxy names is never where auth calls it: only the port is the proxy's.
    proxy.post("/v1/proxies/heartbeat", {"interval": 3, "web_listen_addr": "169.254.169.254:80"})
    records.clear()
    backend_edit(world.root.data_dir, lambda b: _collect(b, "proxies/", records))
    assert records and all(r["web_addr"].startswith("127.0.0.1:") for r in records), records


async def _collect(backend, prefix: str, out: list) -> None:
    out.extend(i.value for i in await backend.get_range(prefix))


def test_hostile_leaf_heartbeat_interval_closes_its_tunnel(world):
    """A leaf reporting a huge interval would stay "online" for ages after it vanished."""
    leaf = FakeLeaf("slowbeat.site.test")
    assert leaf.handshake(world.root.web_addr, world.token())[0] == 200
    try:
        tunnel = leaf.open_tunnel(world.loop, f"127.0.0.1:{world.root.tunnel_port}", interval=1e12)
        assert tunnel.closed.wait(30), "the root must close a tunnel whose heartbeats claim a 1e12 s interval"
        assert "the leaf sent the heartbeat interval '1000000000000.0', not a number of seconds from 0.5 to 300" \
            in world.root.log_text()
        assert world.rc_status("slowbeat.site.test") == "offline"
        assert backend_keys(world.root.data_dir, "tunnels/slowbeat.site.test/") == []
        # The same fake leaf with a sane interval is online: the root refused the value, not the leaf.
        good = leaf.open_tunnel(world.loop, f"127.0.0.1:{world.root.tunnel_port}", interval=1.0)
        wait_until(lambda: world.rc_status("slowbeat.site.test") == "online", 20, "the fake leaf online")
        assert good.root_login == "-gatehouse-tunnel-"
        good.close(world.loop)
    finally:
        ok(world.root.run_gatectl("rm", "rc/slowbeat.site.test"))


def test_hostile_root_announcements_are_bounded(world, fake_root):
    """A root announcing thousands of proxies, bad names, or proxies no dial reaches cannot make
    the leaf dial in a loop."""
    from gatehouse.tunnel.agent import DUPLICATE_DIALS_PER_PROXY
    fake_root.hello = lambda: {"cluster": fake_root.name, "proxy": "p1", "interval": 1.0,
                               "proxies": [f"p{i}" for i in range(1000)]}
    ok(world.create_tc(world.victim, tc_json(fake_root.name, fake_root.web_addr)))
    wait_until(lambda: "the root's heartbeat announces 1000 proxies, more than 64; closing this tunnel"
               in world.victim.log_text(), 30, "the victim refusing the announcement")
    wait_until(lambda: fake_root.tunnels_closed >= 1, 10, "the tunnel closed")
    fake_root.hello = lambda: {"cluster": fake_root.name, "proxy": "p1", "interval": 1.0,
                               "proxies": ["p1", "../../etc/passwd"]}
    wait_until(lambda: "the root's heartbeat names a proxy badly" in world.victim.log_text(), 40,
               "the victim refusing a bad proxy name")
    # Proxies that no dial reaches: every dial lands on p1, which the leaf already holds.
    dials = fake_root.dials
    fake_root.hello = lambda: {"cluster": fake_root.name, "proxy": "p1", "interval": 1.0, "proxies": ["p1", "ghost"]}
    wait_until(lambda: "announces proxies (ghost) that" in world.victim.log_text(), 60, "the victim backing off")
    assert fake_root.dials - dials <= 1 + DUPLICATE_DIALS_PER_PROXY + 3, fake_root.dials - dials
    ok(world.victim.run_gatectl("rm", f"tc/{fake_root.name}"))


def test_hostile_root_saying_it_hands_over_cannot_pile_up_tunnels(world, fake_root):
    """A root whose every heartbeat says its proxy hands over to a new process (what a reload
    says once) makes the leaf dial again, but the leaf keeps at most MAX_HANDED_OVER of the
    tunnels it was told about open, closing the oldest."""
    from gatehouse.tunnel.agent import MAX_HANDED_OVER
    fake_root.hello = lambda: {"cluster": fake_root.name, "proxy": "p1", "interval": 1.0, "proxies": ["p1"],
                               "draining": True}
    ok(world.create_tc(world.victim, tc_json(fake_root.name, fake_root.web_addr)))
    try:
        wait_until(lambda: fake_root.dials >= MAX_HANDED_OVER + 4, 90, "the victim dialling the 'new process'")
        assert "proxy p1 is handing over to a new process; dialling it" in world.victim.log_text()
        # Open now: the handed-over ones it keeps, the current one, and at most one being dialled.
        wait_until(lambda: fake_root.dials - fake_root.tunnels_closed <= MAX_HANDED_OVER + 2, 20,
                   "the victim closing the oldest handed-over tunnels")
    finally:
        ok(world.victim.run_gatectl("rm", f"tc/{fake_root.name}"))


# ================================================================ low: gate login --insecure
def test_insecure_login_pins_the_proxy_certificate(world):
    home = os.path.join(world.tmp, "gate-pin")
    ok(world.root.login("alice", PASSWORD, home))
    profile_path = os.path.join(world.root.profile_dir(home), "profile.json")
    with open(profile_path, encoding="utf-8") as fh:
        profile = json.load(fh)
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", world.root.web_port)))
    assert profile["insecure"] and profile["web_cert_sha256"] == hashlib.sha256(der).hexdigest()
    impostor = FakeRoot(world.loop, name=ROOT).start()  # another certificate, e.g. after a DNS hijack
    try:
        write_yaml(profile_path, json.dumps({**profile, "web_proxy_addr": impostor.web_addr}))
        for args in (("clusters",), ("ls",)):
            err = error_of(world.root.run_gate(*args, gate_home=home))
            assert (f"https://{impostor.web_addr} presented a TLS certificate other than the one pinned when you "
                    f"logged in with --insecure") in err and "log in again" in err, err
        assert impostor.requests == [], "no request may reach a proxy that is not the pinned one"
        # A login saved by an older gate (no pin) is not trusted either.
        write_yaml(profile_path, json.dumps({k: v for k, v in profile.items() if k != "web_cert_sha256"}))
        err = error_of(world.root.run_gate("clusters", gate_home=home))
        assert "has no pinned proxy certificate" in err and f"gate login --proxy={world.root.web_addr} --insecure" \
            in err, err
    finally:
        write_yaml(profile_path, json.dumps(profile))
        impostor.stop()
    assert ROOT in ok(world.root.run_gate("clusters", gate_home=home))
