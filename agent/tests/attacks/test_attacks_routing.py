"""Attacks on routing, node options, the login limiter, resource caps and network parsers (issue 13).

Every attack runs against real processes: `gatehouse` daemons for a root and a leaf
cluster with trust between them, nodes that joined with real tokens (routing_fakes.
HostileNode), a fake leaf and a fake root that speak the real tunnel protocol with real
keys, and the shipped `gate`/`gatectl` CLIs. Each test says what a compromised member
tried, and asserts that it failed with a clear message and changed nothing.

Items: 4 routing data from nodes, 5 leaf role options and idle timeout, 6 the login
limiter, 8 unbounded reads and connection caps; low items: trait values as patterns and
deny on missing traits, malformed heartbeats and API bodies, log injection, the password
KDF. Notes: docs/security/routing.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time

import asyncssh
import pytest

from conftest import Cluster, fails, ok, unix_user, wait_until, write_yaml
from routing_fakes import (PASSWORD, FakeLeaf, FakeRoot, HostileNode, Listener, TrustPair, configure, member_api,
                           node_record, raw_call, user_connection, via_proxy)

from gatehouse.access import AccessChecker
from gatehouse.errors import AccessDenied, BadParameter, GatehouseError
from gatehouse.wire import NODES_SUBSYSTEM

ROOT, LEAF = "root.test", "leaf.test"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks run sessions as the visitor login (root)")


def role(name: str, allow: dict | None = None, deny: dict | None = None, options: dict | None = None) -> str:
    spec: dict = {"allow": allow or {}}
    if deny:
        spec["deny"] = deny
    if options:
        spec["options"] = options
    return json.dumps({"kind": "role", "version": "v5", "metadata": {"name": name}, "spec": spec})


def create(cluster: Cluster, name: str, text: str) -> None:
    ok(cluster.run_gatectl("create", "-f", write_yaml(os.path.join(cluster.tmp, f"{name}.json"), text)))


def add_user(cluster: Cluster, name: str, roles: str, logins: str = "visitor", traits: str = "") -> str:
    """Create user NAME and log them in with `gate` under their own GATE_HOME (returned)."""
    extra = [f"--traits={traits}"] if traits else []
    ok(cluster.run_gatectl("users", "add", name, f"--roles={roles}", f"--logins={logins}", *extra,
                           "--password-stdin", input=PASSWORD + "\n"))
    home = os.path.join(cluster.tmp, f"gate-{name}")
    ok(cluster.login(name, PASSWORD, gate_home=home))
    return home


# --------------------------------------------------------------------------- fixtures
LEAF_ROLE_MAP = [{"remote": "access", "local": ["leaf-strict"]},
                 {"remote": "short-root", "local": ["leaf-short"]}]


@pytest.fixture(scope="module")
def trust():
    """root.test (node rootnode) and leaf.test (node leafnode), trust established; root users
    with the `access` role map to `leaf-strict` on the leaf (no PTY, no port forwarding)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tmp = tempfile.mkdtemp(prefix="gatehouse-attack-route-")
    pair = TrustPair(tmp)
    with unix_user("visitor"):
        try:
            pair.start()
            create(pair.leaf, "leaf-strict", role("leaf-strict", {"logins": ["{{internal.logins}}"],
                                                                  "node_labels": {"*": "*"}},
                                                  options={"permit_pty": False, "permit_port_forwarding": False}))
            create(pair.leaf, "leaf-short", role("leaf-short", {"logins": ["{{internal.logins}}"],
                                                                "node_labels": {"*": "*"}},
                                                 options={"max_session_ttl": "5s"}))
            create(pair.root, "short-root", role("short-root", {"logins": ["{{internal.logins}}"],
                                                                "node_labels": {"*": "*"},
                                                                "cluster_labels": {"*": "*"}}))
            pair.join(LEAF_ROLE_MAP)
            pair.root.wait_node("rootnode")
            pair.alice = add_user(pair.root, "alice", "access", "visitor,root")
            yield pair
        finally:
            pair.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def limits():
    """One auth+proxy+node process at the default login rate with small caps: 2 channels per
    connection, 3 sessions, 3 unauthenticated connections per listener."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tmp = tempfile.mkdtemp(prefix="gatehouse-attack-limits-")
    c = Cluster(tmp, cluster_name="limits.test", node_name="capnode")
    caps = {"max_channels_per_connection": 2, "max_sessions": 3, "max_startups": 3}
    configure(c, ssh_service=caps, proxy_service=caps)
    with unix_user("visitor"):
        try:
            c.start()
            c.wait_node("capnode")
            yield c
        finally:
            c.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def peers():
    """root2.test and leaf2.test without nodes; leaf2's trusted_cluster dials a FakeRoot (with a
    real root2 tunnel certificate) instead of root2's proxy, so root2's only tunnel is a FakeLeaf."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tmp = tempfile.mkdtemp(prefix="gatehouse-attack-peers-")
    pair = TrustPair(tmp, "root2.test", "leaf2.test", nodes=False)
    fake_root = None
    try:
        pair.start()
        fake_root = FakeRoot(pair.root, heartbeats=["[1]\n", '"x"\n', "{bad\n", '{"proxies": "abc"}\n',
                                                    '{"proxies": [1, 2]}\n']).start()
        pair.join([{"remote": "access", "local": ["access"]}], tunnel_addr=fake_root.addr, wait_online=False)
        pair.fake_root = fake_root
        yield pair
    finally:
        if fake_root is not None:
            fake_root.stop()
        pair.stop()
        if not os.environ.get("GATEHOUSE_E2E_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


# =========================================================================== item 4: routing data from nodes
def test_node_cannot_advertise_an_address_that_is_not_its_own(trust):
    """A node with a real identity claims a metadata-service address, another host's address and
    the real node's hostname: the first two are refused, the hostname is display text, and the
    proxy keeps routing `rootnode` to the real node, never dialling what the attacker named."""
    other_host = Listener("127.0.0.2")            # an address that is not the attacker's
    own_host = Listener("127.0.0.1")              # the attacker's own address, another port
    try:
        evil = HostileNode(trust.root, "aaa-evil")  # sorts before "rootnode": the old first match
        for addr in ("169.254.169.254:80", other_host.addr, f"[::1]:{own_host.port}"):
            with pytest.raises(AccessDenied) as info:
                evil.heartbeat(addr, hostname="rootnode")
            assert info.value.message.startswith('node "aaa-evil" may advertise only the address its heartbeats '
                                                 "come from (127.0.0.1) or one approved in its identity, not ")
            assert node_record(trust.root, "aaa-evil") is None, "a refused heartbeat registers nothing"
        # Its own address (unspecified host = where it calls from) is accepted, with a stolen hostname.
        answer = evil.heartbeat(f"0.0.0.0:{own_host.port}", hostname="rootnode")
        assert answer["addr"] == f"127.0.0.1:{own_host.port}"
        record = node_record(trust.root, "aaa-evil")
        assert record["spec"]["addr"] == f"127.0.0.1:{own_host.port}" and record["spec"]["hostname"] == "rootnode"
        # It cannot write another node's record either.
        with pytest.raises(AccessDenied, match="cannot heartbeat as 'rootnode'"):
            evil.heartbeat(other_host.addr, name="rootnode")

        out = ok(trust.root.run_gate("ssh", "visitor@rootnode", "echo the-real-node; hostname",
                                     gate_home=trust.alice))
        assert out.startswith("the-real-node\n")
        assert ok(trust.root.run_gate("ssh", f"visitor@rootnode.{ROOT}", "echo again", gate_home=trust.alice)) \
            == "again\n"
        starts = [e for e in trust.root.audit("session.start") if e.get("user") == "alice"]
        assert starts and all(e["node"] == "rootnode" for e in starts)

        # An address, even a registered one, is never a route (ssh -J style direct-tcpip).
        profile = trust.root.profile_dir(trust.alice)

        async def by_address():
            proxy = await user_connection(profile, "127.0.0.1", trust.root.ssh_proxy_port, "visitor")
            try:
                with pytest.raises(asyncssh.ChannelOpenError) as err:
                    await proxy.open_connection("127.0.0.1", own_host.port)
                return err.value.reason
            finally:
                proxy.close()
        reason = asyncio.run(by_address())
        assert reason == f'node "127.0.0.1" is not registered in cluster "{ROOT}"; list nodes with \'gate ls\''
        assert other_host.connections == 0 and own_host.connections == 0, "the proxy dialled an injected address"
    finally:
        other_host.close()
        own_host.close()


def test_node_cannot_get_local_addresses_approved_by_asking_for_them_at_join(trust):
    """A node asks at join for certificate names it must never dial-route to (the proxy's own
    loopback, the metadata service): whatever auth signs, they are not approved addresses.
    The node's own name in the cluster (`name.cluster`, which auth always signs) is."""
    evil = HostileNode(trust.root, "joined-evil", principals=["169.254.169.254", "localhost", "::1"])
    for addr in ("169.254.169.254:80", "localhost:3025", "[::1]:3025"):
        with pytest.raises(AccessDenied, match="may advertise only the address its heartbeats come from"):
            evil.heartbeat(addr)
    assert node_record(trust.root, "joined-evil") is None
    answer = evil.heartbeat(f"joined-evil.{ROOT}:3022")
    assert answer["addr"] == f"joined-evil.{ROOT}:3022"


def test_leaf_proxy_routes_by_registered_name_through_the_tunnel(trust):
    """The same attack by a node of the leaf: root users still reach the real leaf node."""
    other_host = Listener("127.0.0.2")
    own_host = Listener("127.0.0.1")
    try:
        evil = HostileNode(trust.leaf, "aaa-leaf-evil")
        for addr in ("169.254.169.254:80", other_host.addr):
            with pytest.raises(AccessDenied, match="may advertise only the address its heartbeats come from"):
                evil.heartbeat(addr, hostname="leafnode")
        evil.heartbeat(f"0.0.0.0:{own_host.port}", hostname="leafnode")
        assert node_record(trust.leaf, "aaa-leaf-evil")["spec"]["hostname"] == "leafnode"
        # The leaf's cache must know the hostile record before routing is tried.
        time.sleep(1.5)
        out = ok(trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "echo the-real-leaf-node",
                                     gate_home=trust.alice))
        assert out == "the-real-leaf-node\n"
        starts = [e for e in trust.leaf.audit("session.start") if e.get("user") == "alice"]
        assert starts and all(e["node"] == "leafnode" for e in starts)
        assert other_host.connections == 0 and own_host.connections == 0, "the leaf dialled an injected address"
    finally:
        other_host.close()
        own_host.close()


@pytest.mark.parametrize("reported, observed, approved, expected", [
    ("0.0.0.0:3022", "10.0.0.5", (), "10.0.0.5:3022"),               # no host: where it calls from
    ("[::]:4022", "2001:db8::7", (), "[2001:db8::7]:4022"),
    ("10.0.0.5:3022", "::ffff:10.0.0.5", (), "10.0.0.5:3022"),          # the same address, IPv4-mapped
    ("db3.example.net:3022", "10.0.0.5", ("db3.example.net",), "db3.example.net:3022"),  # approved name
    ("DB3.example.net:3022", "10.0.0.5", ("db3.example.net",), "DB3.example.net:3022"),
    ("127.0.0.1:3022", "127.0.0.1", (), "127.0.0.1:3022"),              # loopback only when it calls from there
    ("10.0.0.6:3022", "10.0.0.5", (), None),                            # a neighbour's address
    ("127.0.0.1:3025", "10.0.0.5", ("127.0.0.1",), None),               # the proxy's own loopback
    ("169.254.169.254:80", "10.0.0.5", ("169.254.169.254",), None),     # the metadata service
    ("localhost:3025", "10.0.0.5", ("localhost",), None),
])
def test_node_dial_address_rule(reported, observed, approved, expected):
    from gatehouse.auth.service import node_dial_addr
    if expected is None:
        with pytest.raises(AccessDenied, match=r'^node "n1" may advertise only the address its heartbeats come '):
            node_dial_addr("n1", reported, observed, frozenset(approved))
        assert node_dial_addr("n1", reported, observed, trusted=True)  # an admin may register anything
    else:
        assert node_dial_addr("n1", reported, observed, frozenset(approved)) == expected


def test_proxy_does_not_route_users_to_nodes_their_roles_hide(trust):
    create(trust.root, "prod-only", role("prod-only", {"logins": ["visitor"], "node_labels": {"env": "prod"}}))
    home = add_user(trust.root, "mallory", "prod-only")
    fails(trust.root.run_gate("ssh", "visitor@rootnode", "echo should-not-run", gate_home=home),
          f'node "rootnode" is not registered in cluster "{ROOT}"; list nodes with \'gate ls\'')
    denied = [e for e in trust.root.audit("session.denied") if e.get("user") == "mallory"]
    assert denied and denied[-1]["node"] == "rootnode"
    assert not [e for e in trust.root.audit("session.start") if e.get("user") == "mallory"]


# =========================================================================== item 5: leaf role options
def test_mapped_leaf_role_forbids_pty_and_port_forwarding_for_root_users(trust):
    status = ok(trust.root.run_gate("status", gate_home=trust.alice))
    assert "permit-pty" in status and "permit-port-forwarding" in status  # the root certificate permits both

    # PTY: allowed on the root's node, refused by the leaf role on the leaf's node.
    out = ok(trust.root.run_gate("ssh", "-t", "visitor@rootnode", "tty", gate_home=trust.alice))
    assert "/dev/pts/" in out
    r = trust.root.run_gate("ssh", "-t", f"--cluster={LEAF}", "visitor@leafnode", "tty", gate_home=trust.alice)
    assert "gatehouse: PTY not permitted by your roles; running without a terminal" in r.stderr + r.stdout
    assert "not a tty" in r.stdout

    # Port forwarding: works on the root's node, refused on the leaf's node.
    target = Listener("127.0.0.1")
    profile = trust.root.profile_dir(trust.alice)

    async def forward(node: str):
        proxy, conn = await via_proxy(profile, trust.root.ssh_proxy_port, node, "visitor")
        try:
            try:
                _reader, writer = await conn.open_connection("127.0.0.1", target.port)
            except asyncssh.ChannelOpenError as exc:
                return exc.reason
            writer.close()
            return "opened"
        finally:
            conn.close()
            proxy.close()

    try:
        assert asyncio.run(forward(f"rootnode.{ROOT}")) == "opened"
        wait_until(lambda: target.connections == 1, 10, "the root node's forward")
        assert asyncio.run(forward(f"leafnode.{LEAF}")) == "port forwarding is not permitted by your roles"
        time.sleep(0.5)
        assert target.connections == 1, "the leaf node forwarded although its role forbids it"
    finally:
        target.close()


def test_mapped_leaf_role_max_session_ttl_ends_the_session(trust):
    home = add_user(trust.root, "shorty", "short-root")
    started = time.monotonic()
    r = trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "sleep 60", gate_home=home, timeout=50)
    assert time.monotonic() - started < 50
    assert r.returncode != 0
    assert ('gatehouse: the session reached the max_session_ttl of your roles on node "leafnode" (5s) and was '
            "closed") in r.stderr
    ended = [e for e in trust.leaf.audit("session.disconnect") if e.get("user") == "shorty"]
    assert ended and ended[-1]["ended_by"] == "deadline"


def test_client_idle_timeout_closes_the_session(trust):
    create(trust.root, "idle", role("idle", {"logins": ["visitor"], "node_labels": {"*": "*"}},
                                    options={"client_idle_timeout": "2s"}))
    home = add_user(trust.root, "idler", "idle")
    r = trust.root.run_gate("ssh", "visitor@rootnode", "sleep 60", gate_home=home, timeout=50)
    assert r.returncode != 0
    message = ('gatehouse: session closed after 2 seconds without input from the client (client_idle_timeout of '
               'your roles on node "rootnode")')
    assert message in r.stderr
    events = [e for e in trust.root.audit("session.disconnect") if e.get("user") == "idler"]
    assert events and events[-1]["ended_by"] == "idle_timeout" and events[-1]["reason"] == \
        message.removeprefix("gatehouse: ")
    ends = [e for e in trust.root.audit("session.end") if e.get("user") == "idler"]
    assert ends and ends[-1]["ended_by"] == "idle_timeout"
    # A session that finishes in time is not touched.
    assert ok(trust.root.run_gate("ssh", "visitor@rootnode", "echo quick", gate_home=home)) == "quick\n"


# =========================================================================== item 6: the login limiter
def _login_body(user: str, addr: str) -> dict:
    # What a proxy sends to auth: the client's address is in the body.
    return {"user": user, "password": "wrong-password-9", "ssh_public_key": "x", "tls_public_key": "x",
            "client_addr": addr}


def test_login_limiter_checks_the_address_before_the_user(tmp_path):
    """Over the real API: once an address is limited, its attempts reach no per-user bucket, and a
    guessed user stays limited from any address. (One attempt per 10 minutes: nothing refills.)"""
    c = Cluster(str(tmp_path / "flood"), cluster_name="flood.test", ssh=False, extra_auth=", login_rate: 0.1")
    c.start()
    try:
        c.add_user("target", "access", "visitor", "target-password-1")
        api = member_api(c, "proxy")
        assert raw_call(api, "POST", "/v1/login", _login_body("target", "198.51.100.1"))[0] == 403
        for user, addr in (("target", "198.51.100.2"), ("junk1", "198.51.100.1"), ("junk2", "198.51.100.1")):
            status, answer = raw_call(api, "POST", "/v1/login", _login_body(user, addr))
            assert status == 429 and answer["error"]["message"].startswith("too many login attempts; wait "), \
                (user, addr, answer)
        # junk1 and junk2 were refused at the address: they never took a token of their own.
        assert raw_call(api, "POST", "/v1/login", _login_body("junk1", "198.51.100.3"))[0] == 403
    finally:
        c.stop()


@pytest.fixture
async def slow_auth(tmp_path):
    """An auth service in process (real SQLite) allowing one login attempt per 10 minutes."""
    from gatehouse.auth.service import AuthService
    from gatehouse.config import parse
    cfg = parse({"gatehouse": {"nodename": "auth", "data_dir": str(tmp_path / "data")},
                 "auth_service": {"enabled": True, "cluster_name": "flood.test", "login_rate": 0.1,
                                  "listen_addr": "127.0.0.1:3025"}}, str(tmp_path / "gatehouse.yaml"))
    svc = await AuthService.open(cfg)
    try:
        yield svc
    finally:
        await svc.close()


async def test_login_flood_of_junk_user_names_cannot_reset_the_limiter(slow_auth):
    """10,001 distinct user names from one address through AuthService.login (what /v1/login runs;
    the old limiter cleared every bucket at 10,000 keys): the address stays limited and a
    guessed user's bucket is not reset. In process, so the flood takes seconds, not minutes."""
    from gatehouse.auth.authz import Identity
    from gatehouse.errors import LimitExceeded

    auth = slow_auth
    proxy = Identity("proxy1", "proxy", auth.cluster_name)

    async def attempt(user: str, addr: str) -> str:
        try:
            await auth.login(proxy, user, "wrong-password-9", "x", "x", 0, addr)
        except (AccessDenied, LimitExceeded) as exc:
            return exc.code
        return "ok"

    assert [await attempt("target", f"198.51.100.{i}") for i in (1, 2)] == ["access_denied", "limit_exceeded"]
    flood = [await attempt(f"junk{i}", "203.0.113.7") for i in range(10_001)]
    assert flood[0] == "access_denied" and set(flood[1:]) == {"limit_exceeded"}
    assert await attempt("junk-last", "203.0.113.7") == "limit_exceeded", "the address is no longer limited"
    assert await attempt("target", "198.51.100.200") == "limit_exceeded", "the guessed user's bucket was reset"


# =========================================================================== item 8: bounds and caps
def test_endless_answer_from_a_leaf_is_refused(peers):
    """A fake leaf (leaf2's real proxy identity) streams an endless answer to the root's node-list
    question: `gate ls` fails with one sentence and the root cuts the stream off."""
    fake = FakeLeaf(os.path.join(peers.leaf.data_dir, "identity", "proxy"), peers.root.tunnel_port,
                    cluster=peers.leaf.cluster_name, heartbeats=["[1, 2]\n", '"a string"\n',
                                                                 '{"interval": "soon", "proxy": 7}\n', "not json\n"])
    fake.start()
    try:
        peers.wait_leaf("online")  # junk heartbeats first did not kill the root's tunnel loop
        assert peers.root.log_text().count("sent a heartbeat that is not a JSON object") == 1
        home = add_user(peers.root, "ann", "access")
        r = peers.root.run_gate("ls", f"--cluster={peers.leaf.cluster_name}", gate_home=home, timeout=60)
        fails(r, f'cluster "{peers.leaf.cluster_name}" answered through its reverse tunnel with more than 1 MiB, '
                 f"so the answer was refused; check the leaf's log")
        assert "Traceback" not in r.stderr
        assert fake.stream_ended.wait(20), "the root kept reading the endless answer"
        assert fake.streamed < 64 * 1024 * 1024
        # The tunnel is still there and the root still answers.
        assert peers.leaf_status() == "online"
    finally:
        fake.stop()


async def _sessions(profile: str, port: int, n: int, login: str = "visitor"):
    """Open N sessions (`sleep 30`) on one connection to PORT: (connection, channels, refusal or None)."""
    conn = await user_connection(profile, "127.0.0.1", port, login)
    chans = []
    for _ in range(n):
        try:
            chan, _ = await conn.create_session(asyncssh.SSHClientSession, "sleep 30")
        except asyncssh.ChannelOpenError as exc:
            return conn, chans, exc.reason
        chans.append(chan)
    return conn, chans, None


def test_channel_and_session_caps_refuse_with_a_message(limits):
    c = limits
    home = add_user(c, "chatty", "access", "visitor")
    profile = c.profile_dir(home)

    async def attack():
        # Node: 2 channels per connection.
        conn, chans, refusal = await _sessions(profile, c.node_port, 3)
        assert len(chans) == 2 and refusal == (
            "too many channels on this connection: 2 are open, the limit of this node is 2 "
            "(ssh_service.max_channels_per_connection); close some or use another connection")
        # Node: 3 sessions in all.
        conn2, chans2, refusal2 = await _sessions(profile, c.node_port, 2)
        assert len(chans2) == 1 and refusal2 == (
            "this node is at its limit of 3 concurrent sessions (ssh_service.max_sessions); try again later")
        for ch in chans + chans2:
            ch.close()
        conn.close()
        conn2.close()
        await asyncio.sleep(0.5)
        # Capacity comes back when channels close.
        conn3, chans3, refusal3 = await _sessions(profile, c.node_port, 2)
        assert refusal3 is None and len(chans3) == 2
        conn3.close()
        # Proxy: 2 channels per user connection.
        proxy = await user_connection(profile, "127.0.0.1", c.ssh_proxy_port, "visitor")
        opened, reason = 0, None
        for _ in range(3):
            try:
                await proxy.open_connection("capnode", 3022)
                opened += 1
            except asyncssh.ChannelOpenError as exc:
                reason = exc.reason
                break
        proxy.close()
        assert opened == 2 and reason == (
            "too many channels on this connection: 2 are open, the limit of this proxy is 2 "
            "(proxy_service.max_channels_per_connection); close some or use another connection")

    asyncio.run(attack())


def test_preauth_connection_cap(limits):
    """Unauthenticated connections beyond max_startups are refused; authenticated sessions go on."""
    c = limits
    home = add_user(c, "steady", "access", "visitor")
    profile = c.profile_dir(home)

    async def attack():
        steady = await user_connection(profile, "127.0.0.1", c.node_port, "visitor")
        idle = []
        for _ in range(3):  # the cap: connections that never authenticate
            sock = socket.create_connection(("127.0.0.1", c.node_port))
            sock.sendall(b"SSH-2.0-attacker\r\n")
            idle.append(sock)
        await asyncio.sleep(1)
        refused = []
        for _ in range(3):
            with pytest.raises((asyncssh.Error, OSError)) as info:
                await user_connection(profile, "127.0.0.1", c.node_port, "visitor", connect_timeout=10)
            refused.append(str(info.value))
        assert all("this node has too many unauthenticated connections; try again later" in r for r in refused), \
            refused
        # The authenticated connection is unaffected.
        result = await steady.run("echo still-here", check=True)
        assert result.stdout == "still-here\n"
        for sock in idle:
            sock.close()
        await asyncio.sleep(1)
        again = await user_connection(profile, "127.0.0.1", c.node_port, "visitor")
        assert (await again.run("echo new-one", check=True)).stdout == "new-one\n"
        again.close()
        steady.close()

    asyncio.run(attack())
    log = c.log_text()
    assert log.count("connections have not authenticated yet (ssh_service.max_startups)") == 1, \
        "the cap is logged once, not per refused connection"


# =========================================================================== low: traits as patterns, deny
CHECK_NODE = {"env": "prod", "team": "db"}


def _allowed(roles: list[dict], traits: dict, labels=CHECK_NODE, login="visitor") -> bool:
    return AccessChecker(roles, traits).check_ssh(login, "n1", labels).allowed


def _role(allow=None, deny=None) -> dict:
    return {"kind": "role", "version": "v5", "metadata": {"name": "r"},
            "spec": {"allow": allow or {}, "deny": deny or {}}}


@pytest.mark.parametrize("value", ["*", "^.*$", "pro?", "p*", "^prod$"])
def test_trait_values_are_literal_in_label_patterns(value):
    by_trait = _role({"logins": ["visitor"], "node_labels": {"env": "{{external.env}}"}})
    assert not _allowed([by_trait], {"env": [value]}), f"trait value {value!r} acted as a pattern"
    assert _allowed([by_trait], {"env": ["prod"]})
    # A node whose label really is that text still matches.
    assert _allowed([by_trait], {"env": [value]}, {"env": value})
    # Keys too, and the role's own text around the trait keeps its meaning.
    by_key = _role({"logins": ["visitor"], "node_labels": {"{{external.key}}": "*"}})
    assert not _allowed([by_key], {"key": [value]})
    around = _role({"logins": ["visitor"], "node_labels": {"env": "{{external.env}}-*"}})
    assert _allowed([around], {"env": ["prod"]}, {"env": "prod-eu"})
    assert not _allowed([around], {"env": [value]}, {"env": "prod-eu"})
    regex = _role({"logins": ["visitor"], "node_labels": {"env": "^{{external.env}}(-[a-z]+)?$"}})
    assert _allowed([regex], {"env": ["prod"]}, {"env": "prod-eu"})
    assert not _allowed([regex], {"env": [value]}, {"env": "prod-eu"})


def test_deny_rules_with_missing_traits_fail_closed():
    allow_all = _role({"logins": ["visitor"], "node_labels": {"*": "*"}, "cluster_labels": {"*": "*"}})
    deny_nodes = _role(deny={"node_labels": {"team": "{{external.team}}"}})
    checker = AccessChecker([allow_all, deny_nodes], {})
    decision = checker.check_ssh("visitor", "n1", CHECK_NODE)
    assert not decision.allowed and decision.rule == "deny.node_labels"
    assert decision.reason == (
        'access denied: role "r" denies all nodes because its deny.node_labels cannot be expanded for this user '
        '(a deny rule that cannot be expanded denies): trait "team" is not set for this user; add it to the '
        'user\'s traits or remove "{{external.team}}" from the role')
    assert not checker.can_see_node("n1", CHECK_NODE)
    # With the trait set, the deny rule means what it says.
    assert AccessChecker([allow_all, deny_nodes], {"team": ["web"]}).check_ssh("visitor", "n1", CHECK_NODE).allowed
    deny_clusters = _role(deny={"cluster_labels": {"{{external.region}}": "*"}})
    assert not AccessChecker([allow_all, deny_clusters], {}).check_cluster("leaf", {"env": "x"}).allowed
    deny_logins = _role(deny={"logins": ["{{external.blocked}}"]})
    checker = AccessChecker([allow_all, deny_logins], {})
    assert checker.logins() == [] and not checker.check_ssh("visitor", "n1", CHECK_NODE).allowed
    assert AccessChecker([allow_all, deny_logins], {"blocked": ["root"]}).logins() == ["visitor"]


def test_user_whose_trait_is_a_wildcard_reaches_no_node(trust):
    create(trust.root, "env-by-trait", role("env-by-trait", {"logins": ["visitor"],
                                                             "node_labels": {"env": "{{external.env}}"}}))
    home = add_user(trust.root, "wild", "env-by-trait", traits="env=*")
    assert "rootnode" not in ok(trust.root.run_gate("ls", gate_home=home))
    fails(trust.root.run_gate("ssh", "visitor@rootnode", "echo should-not-run", gate_home=home),
          f'node "rootnode" is not registered in cluster "{ROOT}"')
    home = add_user(trust.root, "regexy", "env-by-trait", traits="env=^.*$")
    fails(trust.root.run_gate("ssh", "visitor@rootnode", "echo should-not-run", gate_home=home),
          f'node "rootnode" is not registered in cluster "{ROOT}"')
    # The same role with the real value works (the node is env=dev).
    home = add_user(trust.root, "tamed", "env-by-trait", traits="env=dev")
    assert ok(trust.root.run_gate("ssh", "visitor@rootnode", "echo fine", gate_home=home)) == "fine\n"


# =========================================================================== low: malformed input
def test_malformed_api_input_gets_a_400_with_one_sentence(limits):
    c = limits
    evil = HostileNode(c, "junk-node")
    proxy = member_api(c, "proxy")
    cases = [
        (evil.raw("POST", "/v1/nodes/heartbeat", b"[1, 2, 3]"), "the request body must be a JSON object"),
        (evil.raw("POST", "/v1/nodes/heartbeat", b"{not json"), "the request body is not valid JSON"),
        (evil.raw("POST", "/v1/nodes/heartbeat", {"name": "junk-node", "addr": ["x"]}), "addr must be a string"),
        (evil.raw("POST", "/v1/nodes/heartbeat", {"name": "junk-node", "addr": "0.0.0.0:3022", "labels": [1]}),
         "node labels must be a mapping"),
        (evil.raw("POST", "/v1/nodes/heartbeat", {"name": "junk-node", "addr": "0.0.0.0:3022",
                                                  "hostname": "a\nb"}), "must be printable text"),
        (evil.raw("POST", "/v1/nodes/heartbeat", {"name": "junk-node", "addr": "0.0.0.0:99999"}),
         "has an invalid port"),
        (evil.raw("GET", "/v1/snapshot", params={"since": "yesterday"}),
         "since must be a revision number (0 or more), not 'yesterday'"),
        (evil.raw("GET", "/v1/snapshot", params={"since": "5", "timeout": "forever"}),
         "timeout must be a number of seconds up to 3600"),
        (raw_call(proxy, "POST", "/v1/login", {"user": "x", "password": "y", "ssh_public_key": "k",
                                               "tls_public_key": "k", "ttl": "long"}),
         "ttl must be a number of seconds, not 'long'"),
        (raw_call(proxy, "POST", "/v1/tunnels/heartbeat", {"cluster": "x", "interval": "soon"}),
         "interval must be a number"),
        (raw_call(proxy, "POST", "/v1/tunnels/heartbeat", {"cluster": "x", "interval": 1e12}),
         "the heartbeat interval must be a number of seconds from 0.5 to 300"),
        (raw_call(proxy, "POST", "/v1/proxies/heartbeat", {"interval": [1]}), "interval must be a number"),
        (raw_call(proxy, "POST", "/v1/tunnels/agent_status", {"cluster": "x", "proxies": "abc"}),
         "proxies must be a list"),
    ]
    for (status, answer), fragment in cases:
        message = answer.get("error", {}).get("message", "")
        assert status == 400, (status, answer, fragment)
        assert fragment in message and "\n" not in message, (message, fragment)
    assert node_record(c, "junk-node") is None, "a malformed heartbeat registered something"
    assert "internal error" not in c.log_text()


def test_malformed_heartbeats_and_requests_from_a_root_do_not_kill_the_leaf(peers):
    """A fake root (real tunnel certificate) sends the leaf heartbeat lines that are not JSON
    objects, then valid ones: the leaf's heartbeat loop survives and the tunnel comes up. An
    oversized request is answered with one sentence."""
    fake = peers.fake_root
    assert fake.connected.wait(30), "the leaf never dialled the fake root"
    wait_until(lambda: json.loads(ok(peers.leaf.run_gatectl("get", f"tc/{peers.root.cluster_name}", "--format",
                                                            "json")))[0]["status"]["connection"] == "online",
               30, "the leaf reports its tunnel to the fake root online")
    # The leaf kept answering heartbeats after the junk ones, and said so once per tunnel.
    wait_until(lambda: len(fake.received) >= 2, 20, "heartbeats from the leaf")
    warnings = peers.leaf.log_text().count("sent a heartbeat that is not a JSON object")
    assert 1 <= warnings <= len(fake.conns)
    answer = json.loads(fake.ask(NODES_SUBSYSTEM, b"{" + b" " * (100 * 1024) + b"}"))
    assert answer["error"]["message"] == "the request on the tunnel is larger than 64 KiB"
    answer = json.loads(fake.ask(NODES_SUBSYSTEM, b"[1, 2]"))
    assert answer["error"]["message"] == "the request on the tunnel is not a JSON object"


# =========================================================================== low: logs
def test_names_and_commands_with_newlines_cannot_forge_a_log_line(trust):
    """A user name, a command and a subsystem name are the values a user controls that reach
    the daemons' text logs (asyncssh refuses control characters in SSH user names): none of
    them can start a line that looks like the daemon's own."""
    import requests
    import urllib3
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the test proxy's certificate
    forged = "2030-01-01 00:00:00,000 INFO  [gatehouse] forged: alice logged in as root"
    resp = requests.post(f"https://{trust.root.web_addr}/webapi/login", verify=False, timeout=30,
                         json={"user": "alice\n" + forged, "password": "x", "ssh_public_key": "k",
                               "tls_public_key": "k"})
    assert resp.status_code == 403
    fails(trust.root.run_gate("ssh", "visitor@rootnode", "true\n" + forged + "\nfalse", gate_home=trust.alice),
          "")

    async def subsystem():
        conn = await user_connection(trust.root.profile_dir(trust.alice), "127.0.0.1", trust.root.node_port,
                                     "visitor")
        try:
            with pytest.raises(asyncssh.Error):
                await conn.run(subsystem="sftp\n" + forged, check=True, timeout=20)
        finally:
            conn.close()
    asyncio.run(subsystem())
    time.sleep(0.5)
    lines = trust.root.log_text().splitlines()
    assert not [line for line in lines if line.startswith(forged)], "a log line was forged"
    assert any("\\n" + forged in line for line in lines), "the command is logged (at DEBUG), escaped"
    logins = [e for e in trust.root.audit("user.login") if e.get("success") is False]
    assert any(e["user"] == "alice\n" + forged for e in logins), "the audit log keeps the name as it was sent"


def test_commands_are_logged_only_at_debug(tmp_path):
    from gatehouse import logs
    out = tmp_path / "info.log"
    root_logger, saved = logging.getLogger(), list(logging.getLogger().handlers)
    try:
        logs.setup(str(out), "INFO")
        logging.getLogger("asyncssh").info("[conn=0, chan=0]   Command: %s", "mysql -psecret")
        logging.getLogger("asyncssh").info("[conn=0] Beginning auth for user %s", "a\nb")
        logs.setup(str(tmp_path / "debug.log"), "DEBUG")
        logging.getLogger("asyncssh").info("[conn=0, chan=0]   Command: %s", "mysql -psecret")
    finally:
        root_logger.handlers[:] = saved
    info = out.read_text()
    assert "mysql -psecret" not in info and "Beginning auth for user a\\nb" in info
    debug = (tmp_path / "debug.log").read_text()
    assert "DEBUG [asyncssh] [conn=0, chan=0]   Command: mysql -psecret" in debug


# =========================================================================== low: password KDF
async def test_old_scrypt_hash_is_rehashed_on_the_next_login(auth):
    import base64
    import hashlib

    from gatehouse.auth import keys, passwords
    from gatehouse.auth.authz import Identity
    from gatehouse.pki import new_ssh_key, new_tls_key

    admin = Identity("admin", "admin", auth.cluster_name)
    await auth.resources.put(admin, {"kind": "user", "version": "v2", "metadata": {"name": "olduser"},
                                     "spec": {"roles": ["access"], "traits": {"logins": ["visitor"]}}})
    salt = os.urandom(16)
    digest = hashlib.scrypt(b"old-password-1", salt=salt, n=2 ** 15, r=8, p=1, maxmem=64 * 1024 * 1024, dklen=32)
    old = f"scrypt$32768$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    await auth.backend.put(keys.password("olduser"), {"hash": old, "updated": "2020-01-01T00:00:00Z"})
    assert passwords.needs_rehash(old) and not passwords.needs_rehash(passwords.hash_password("x" * 8))

    proxy = Identity("proxy1", "proxy", auth.cluster_name)

    async def login(password: str):
        return await auth.login(proxy, "olduser", password, new_ssh_key().public_line, new_tls_key()[1], 0,
                                "192.0.2.1")

    with pytest.raises(AccessDenied):
        await login("wrong-password-1")
    assert (await auth.backend.get(keys.password("olduser"))).value["hash"] == old, "a failed login rehashed"
    await login("old-password-1")
    new = (await auth.backend.get(keys.password("olduser"))).value["hash"]
    assert new != old and new.startswith("scrypt$131072$8$1$")
    await login("old-password-1")  # the new hash verifies
    with pytest.raises(AccessDenied):
        await login("wrong-password-1")
