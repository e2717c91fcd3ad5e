"""Attacks on identities, performed against real processes: who a member is, and who it is talking to.

Every test below is an attack a compromised member (or a thief of a join token) could
try, run against real `gatehouse` daemons on loopback: the real auth API over mutual
TLS, a real reverse tunnel, real nodes. Each asserts that the attack fails with the one
clear sentence a user would see, and that nothing changed. The hostile helpers (a
joining member that asks for what it likes, a fake auth server, a fake leaf proxy)
are in identity_fakes.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import warnings

import pytest
import requests

from conftest import Cluster, Daemon, fails, free_port, ok, unix_user, wait_until, write_yaml
from identity_fakes import (FakeAuthServer, forge_host_cert, forge_tls_cert, hostile_join, join_error,
                            present_tunnel, tls_cert_details)

from gatehouse import pki
from gatehouse.errors import AccessDenied, GatehouseError

CLUSTER = Cluster.cluster_name          # root.test, the conftest cluster
ROOT, LEAF = "root.test", "leaf.test"
PASSWORD = "correct horse battery"


def node_token(c: Cluster, *flags) -> str:
    return json.loads(ok(c.run_gatectl("tokens", "add", "--type=node", "--ttl=10m", *flags, "--format", "json")))["token"]


def node_resource(c: Cluster, name: str) -> dict | None:
    r = c.run_gatectl("get", f"node/{name}", "--format", "json")
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def member_config(c: Cluster, name: str, *, token: str = "", pin: str | None = None, extra: str = "",
                  services: str = "", auth_addr: str | None = None) -> str:
    """A node-only (or SERVICES) process joining C, as on a host of its own."""
    data_dir = os.path.join(c.tmp, f"data-{name}")
    pin = c.ca_pin if pin is None else pin
    general = (f"nodename: {name}, data_dir: {data_dir}, auth_servers: ['{auth_addr or c.auth_addr}'], "
               f"log: {{severity: DEBUG}}" + (f", join_token: '{token}'" if token else "")
               + (f", ca_pin: '{pin}'" if pin else "") + extra)
    services = services or f"ssh_service: {{enabled: true, listen_addr: '127.0.0.1:{free_port()}'}}\n"
    return write_yaml(os.path.join(c.tmp, f"{name}.yaml"), f"gatehouse: {{{general}}}\n{services}")


def start_member(c: Cluster, name: str, **kw) -> Daemon:
    d = Daemon(member_config(c, name, **kw), os.path.join(c.tmp, f"{name}.log"))
    c.extra.append(d)
    return d.start()


def failed_start(c: Cluster, name: str, **kw) -> str:
    """The member process refuses to start: its log (it exited non-zero)."""
    d = Daemon(member_config(c, name, **kw), os.path.join(c.tmp, f"{name}.log"))
    c.extra.append(d)
    d.start(wait=False)
    assert d.wait_exit() != 0, d.log_text()[-2000:]
    return d.log_text()


@pytest.fixture(scope="module")
def cluster():
    """conftest's auth+proxy+node cluster, with room for the many joins these attacks make from one address."""
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-identity-")
    c = Cluster(tmp, extra_auth=", login_rate: 600, validate_rate: 600")
    with unix_user("visitor"):
        try:
            yield c.start()
        finally:
            c.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def alice(cluster):
    cluster.add_user("alice", "access", "visitor", PASSWORD)
    ok(cluster.login("alice", PASSWORD))
    return "alice"


# =====================================================================================
# Item 1: join trusts the caller's name and principals
# =====================================================================================
def test_rejoin_as_a_live_node_with_new_keys_is_refused(cluster, alice):
    """A node token holder re-joins as node1 (and as a node that joined with a token) to take its route."""
    token = node_token(cluster)
    before = node_resource(cluster, cluster.node_name)
    message = join_error(cluster.auth_addr, token, cluster.node_name)
    assert message.startswith(f'node name "{cluster.node_name}" is already held by a node that joined at '), message
    assert f"revoke it with 'gatectl rm node/{cluster.node_name}'" in message

    victim = start_member(cluster, "victim", token=token)
    cluster.wait_node("victim")
    victim_before = node_resource(cluster, "victim")
    message = join_error(cluster.auth_addr, token, "victim")
    assert 'node name "victim" is already held by a node that joined at ' in message and "from 127.0.0.1" in message
    # Nothing moved: both nodes keep their registration and their route.
    assert node_resource(cluster, cluster.node_name)["spec"]["addr"] == before["spec"]["addr"]
    assert node_resource(cluster, "victim")["spec"]["addr"] == victim_before["spec"]["addr"]
    assert ok(cluster.run_gate("ssh", "visitor@victim", "echo still-the-victim")) == "still-the-victim\n"
    refused = [e for e in cluster.audit("join") if e.get("success") is False and e["name"] == "victim"]
    assert refused and "already held" in refused[-1]["error"]
    victim.stop()


def test_join_ignores_the_principals_a_member_asks_for(cluster):
    """A node token holder asks for other nodes' names, the proxy's host name and the tunnel principal."""
    token = node_token(cluster)
    wanted = [cluster.node_name, f"{cluster.node_name}.{CLUSTER}", "proxy.example.com", "gatehouse-tunnel",
              "10.9.9.9", "localhost"]
    stolen = hostile_join(cluster.auth_addr, token, "greedy", principals=wanted)
    info = stolen.ssh_info
    assert info.principals == ["greedy", f"greedy.{CLUSTER}", "127.0.0.1"]
    assert info.key_id == "node:greedy" and info.member_kind == "node"
    tls = tls_cert_details(stolen.tls_cert)
    assert tls == {"kind": "node", "names": ["127.0.0.1", "greedy", f"greedy.{CLUSTER}"], "server": False,
                   "client": True}


def test_admin_approved_principals_and_what_cannot_be_approved(cluster):
    token = node_token(cluster, "--principals=web.example.com,10.1.2.3")
    info = hostile_join(cluster.auth_addr, token, "approved", principals=["evil.example.com"]).ssh_info
    assert info.principals == ["approved", f"approved.{CLUSTER}", "127.0.0.1", "10.1.2.3", "web.example.com"]
    for bad in ("gatehouse-tunnel", "*.example.com", "cluster.gatehouse.invalid"):
        fails(cluster.run_gatectl("tokens", "add", "--type=node", f"--principals={bad}"),
              f'"{bad}" cannot be approved as a member principal; list host names or IP addresses')
    fails(cluster.run_gatectl("tokens", "add", "--type=trusted_cluster", "--single-use"),
          "--bind-name, --single-use and --principals apply to node and proxy tokens only")


def test_single_use_token_is_used_once_even_by_concurrent_joins(cluster):
    token = node_token(cluster, "--single-use")
    hostile_join(cluster.auth_addr, token, "once-a")
    message = join_error(cluster.auth_addr, token, "once-b")
    assert message.startswith('the join token "') and "is single-use and already admitted node \"once-a\"" in message
    assert node_resource(cluster, "once-b") is None

    # Two joins at the same moment: exactly one gets in, the other is told why.
    token = node_token(cluster, "--single-use")
    outcomes: dict[str, str] = {}
    start = threading.Barrier(2)

    def join(name):
        start.wait()
        try:
            hostile_join(cluster.auth_addr, token, name)
            outcomes[name] = "joined"
        except GatehouseError as exc:
            outcomes[name] = str(exc)
    threads = [threading.Thread(target=join, args=(n,)) for n in ("race-a", "race-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes.values()).count("joined") == 1, outcomes
    loser = next(v for v in outcomes.values() if v != "joined")
    assert "is single-use and already admitted node" in loser, loser
    listed = json.loads(ok(cluster.run_gatectl("tokens", "ls", "--format", "json")))
    used = [t for t in listed if t.get("status", {}).get("used")]
    assert any(set(t["status"]["used"]) == {"node"} for t in used), used


def test_single_use_token_admits_the_proxy_and_node_of_one_process(cluster):
    """A process running proxy and node joins twice with one single-use token; a second process cannot."""
    out = ok(cluster.run_gatectl("tokens", "add", "--type=node,proxy", "--single-use", "--format", "json"))
    token = json.loads(out)["token"]
    services = (f"proxy_service: {{enabled: true, web_listen_addr: '127.0.0.1:{free_port()}', "
                f"listen_addr: '127.0.0.1:{free_port()}', tunnel_listen_addr: '127.0.0.1:{free_port()}'}}\n"
                f"ssh_service: {{enabled: true, listen_addr: '127.0.0.1:{free_port()}'}}\n")
    both = start_member(cluster, "edge1", token=token, services=services)
    cluster.wait_node("edge1")
    assert ok(cluster.run_gatectl("get", "proxy/edge1", "--format", "json"))
    log = failed_start(cluster, "edge2", token=token, services=services)
    assert 'is single-use and already admitted proxy "edge1"' in log, log[-2000:]
    both.stop()


def test_name_bound_token_admits_only_its_name(cluster):
    token = node_token(cluster, "--bind-name=bound1")
    message = join_error(cluster.auth_addr, token, "bound2")
    assert message == ('the join token "' + message.split('"')[1] + '" admits only the member named "bound1", not '
                       '"bound2"; set gatehouse.nodename: bound1, or create a token for "bound2" with '
                       "'gatectl tokens add --type=node --bind-name=bound2'")
    assert hostile_join(cluster.auth_addr, token, "bound1").ssh_info.key_id == "node:bound1"


# =====================================================================================
# Item 7: the join token is sent only after the CA pin is checked
# =====================================================================================
def test_token_never_reaches_an_auth_server_with_another_ca(cluster):
    other_key, other_ca = pki.new_tls_ca("impostor.test")
    key_pem, pub_pem = pki.new_tls_key()
    cert = pki.issue_tls_cert(other_key, other_ca, pub_pem, common_name="auth", organization="impostor.test",
                              unit="auth", dns_names=["localhost"], ip_addresses=["127.0.0.1"], ttl_seconds=3600,
                              server=True, client=False)
    token = node_token(cluster)
    with FakeAuthServer(cert, key_pem, ca_pem=other_ca) as fake:
        log = failed_start(cluster, "pinned", token=token, auth_addr=fake.addr)
        assert f"does not match gatehouse.ca_pin {cluster.ca_pin}" in log, log[-2000:]
        assert [r["path"] for r in fake.requests] == ["/v1/ca"]
        assert not fake.received(token)
        # Without a pin, and without saying join_insecure, nothing is sent at all.
        log = failed_start(cluster, "unpinned", token=token, pin="", auth_addr=fake.addr)
        assert ("gatehouse.ca_pin is not set, so the join token could be sent to an impostor; set it to the tls CA "
                "fingerprint that 'gatectl status' shows on the auth server, or set gatehouse.join_insecure: true "
                "to trust the first auth server that answers") in log, log[-2000:]
        assert [r["path"] for r in fake.requests] == ["/v1/ca"]
        assert not fake.received(token)
    assert node_resource(cluster, "pinned") is None and node_resource(cluster, "unpinned") is None


def test_join_insecure_is_an_explicit_choice(cluster):
    token = node_token(cluster)
    node = start_member(cluster, "tofu", token=token, pin="", extra=", join_insecure: true")
    cluster.wait_node("tofu")
    assert "gatehouse.join_insecure is set: trusting the auth server's CA on first use" in node.log_text()
    node.stop()


# =====================================================================================
# Item 10: a member playing auth (or a proxy) is refused
# =====================================================================================
def test_a_node_identity_cannot_play_auth(cluster):
    token = node_token(cluster)
    stolen = hostile_join(cluster.auth_addr, token, "mitm")
    key = stolen.ident.read("identity.key")
    # 1. The node's own certificate is for clients only: TLS clients of the cluster refuse it as a server.
    with FakeAuthServer(stolen.tls_cert, key) as fake:
        err = fails(cluster.run_gatectl("--auth-server", fake.addr, "status"), "TLS handshake with")
        assert "its certificate was refused (unsuitable certificate purpose)" in err, err
        assert fake.requests == []
    # 2. A node certificate that could serve (as issued before this fix) is refused for what it is.
    key_pem, cert = forge_tls_cert(cluster.data_dir, CLUSTER, name="mitm", kind="node", server=True)
    with FakeAuthServer(cert, key_pem) as fake:
        err = fails(cluster.run_gatectl("--auth-server", fake.addr, "status"),
                    f'the server is node "mitm" of cluster "{CLUSTER}", not the auth service it must be; a member '
                    f"of the cluster may be impersonating it")
        assert fake.requests == [], err
        # A member (a joined node restarting) is refused the same way and sends nothing: no heartbeat, no poll.
        data_dir = os.path.join(cluster.tmp, "data-victim2")
        start_member(cluster, "victim2", token=token).stop()
        pki.write_secret(os.path.join(data_dir, "identity", "node", "auth_addr"), fake.addr + "\n")
        log = failed_start(cluster, "victim2")
        assert f'the server is node "mitm" of cluster "{CLUSTER}", not the auth service' in log, log[-2000:]
        assert fake.requests == []


# =====================================================================================
# Item 9: revocation and renewal
# =====================================================================================
def test_revoked_node_is_refused_everywhere_at_once(cluster, alice):
    token = node_token(cluster)
    node = start_member(cluster, "doomed", token=token)
    cluster.wait_node("doomed")
    assert ok(cluster.run_gate("ssh", "visitor@doomed", "echo alive")) == "alive\n"
    out = ok(cluster.run_gatectl("rm", "node/doomed"))
    assert out.startswith('node "doomed" has been revoked: its certificates are refused from now on, and it can '
                          "join again only with a token created from now on; it joined with token "), out
    # Its API calls are refused (the node's own identity files, as the node would call).
    from gatehouse.client import APIClient
    from gatehouse.identity import IdentityFiles
    ident = IdentityFiles(os.path.join(cluster.tmp, "data-doomed", "identity", "node"))
    with pytest.raises(AccessDenied) as info:
        APIClient.for_identity(ident).get("/v1/snapshot")
    assert str(info.value) == ('the node identity "doomed" has been revoked (or replaced by a newer join); this '
                               "certificate is refused — join again with a new token")
    # It is gone from routing, and stays gone although it keeps trying to heartbeat.
    assert node_resource(cluster, "doomed") is None
    fails(cluster.run_gate("ssh", "visitor@doomed", "true"), f'node "doomed" is not registered in cluster "{CLUSTER}"')
    wait_until(lambda: "node heartbeat failed" in node.log_text(), 30, "the revoked node to be refused")
    assert node_resource(cluster, "doomed") is None
    # It cannot join again with the token it had, only with a new one.
    message = join_error(cluster.auth_addr, token, "doomed")
    assert message.startswith('node "doomed" was revoked at ') and "it can join again only with a token created " \
                                                                   "since then" in message
    node.stop()
    assert hostile_join(cluster.auth_addr, node_token(cluster), "doomed").ssh_info.key_id == "node:doomed"
    assert cluster.audit("member.revoke")[-1]["name"] == "doomed"


def test_revoked_proxy_is_refused(cluster):
    token = json.loads(ok(cluster.run_gatectl("tokens", "add", "--type=proxy", "--format", "json")))["token"]
    stolen = hostile_join(cluster.auth_addr, token, "rogue-proxy", role="proxy")
    assert stolen.api().get("/v1/snapshot")["cluster_name"] == CLUSTER
    assert "rogue-proxy" in ok(cluster.run_gatectl("get", "proxies"))
    assert 'proxy "rogue-proxy" has been revoked' in ok(cluster.run_gatectl("rm", "proxy/rogue-proxy"))
    with pytest.raises(AccessDenied, match='the proxy identity "rogue-proxy" has been revoked'):
        stolen.api().post("/v1/proxies/heartbeat", {"interval": 5})
    # Forwarding a user's identity is refused too: the proxy's own certificate is what is checked.
    with pytest.raises(AccessDenied, match="has been revoked"):
        stolen.api(forwarded_user="alice").get("/v1/whoami")
    fails(cluster.run_gatectl("rm", "proxy/rogue-proxy"), 'proxy "rogue-proxy" not found')


# =====================================================================================
# A root and a leaf: tunnels
# =====================================================================================
class Pair:
    """A root with short certificate lifetimes and a leaf that trusts it, as real processes."""

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.root = Cluster(os.path.join(tmp, "root"), cluster_name=ROOT, node_name="rootnode",
                            extra_auth=", login_rate: 600, validate_rate: 600, tunnel_cert_ttl: 10s, "
                                       "identity_ttl: 20s")
        self.leaf = Cluster(os.path.join(tmp, "leaf"), cluster_name=LEAF, node_name="leafnode",
                            extra_auth=", login_rate: 600, validate_rate: 600", extra_general=", insecure: true")

    @property
    def tunnel_addr(self) -> str:
        return f"127.0.0.1:{self.root.tunnel_port}"

    def online(self) -> bool:
        r = self.root.run_gatectl("get", f"rc/{LEAF}", "--format", "json")
        return r.returncode == 0 and json.loads(r.stdout)[0]["status"]["connection"] == "online"


@pytest.fixture(scope="module")
def pair():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-identity-")
    p = Pair(tmp)
    with unix_user("visitor"):
        try:
            p.root.start()
            p.leaf.start()
            p.root.add_user("alice", "access", "visitor", PASSWORD)
            token = json.loads(ok(p.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--format",
                                                     "json")))["token"]
            tc = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
                  "spec": {"enabled": True, "token": token, "web_proxy_addr": p.root.web_addr,
                           "role_map": [{"remote": "access", "local": ["access"]}]}}
            ok(p.leaf.run_gatectl("create", write_yaml(os.path.join(tmp, "tc.yaml"), json.dumps(tc))))
            wait_until(p.online, 30, "the leaf's tunnel")
            ok(p.root.login("alice", PASSWORD))
            yield p
        finally:
            p.leaf.stop()
            p.root.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


def test_leaf_node_certificate_is_refused_as_a_tunnel(pair):
    """A leaf node-token holder presents its node host certificate to the root proxy as the leaf's tunnel."""
    token = node_token(pair.leaf)
    stolen = hostile_join(pair.leaf.auth_addr, token, "sneaky", principals=["gatehouse-tunnel"])
    assert "gatehouse-tunnel" not in stolen.ssh_info.principals
    outcome = present_tunnel(pair.tunnel_addr, stolen.host_keypair())
    assert outcome.startswith("refused"), outcome
    # Even with the tunnel principal (a leaf auth that still signs whatever is asked, or an older one),
    # a certificate that is not a proxy's is refused, and the root says why.
    import asyncssh
    key = stolen.ident.ssh_key()
    public = key.export_public_key().decode().strip()
    for key_id, kind in (("node:sneaky", "node"), ("node:sneaky", None), ("proxy:sneaky", "node")):
        cert = forge_host_cert(pair.leaf.data_dir, LEAF, public, key_id=key_id, principals=["gatehouse-tunnel"],
                               kind=kind)
        outcome = present_tunnel(pair.tunnel_addr, (key, asyncssh.import_certificate(cert)))
        assert outcome.startswith("refused"), (key_id, kind, outcome)
    log = pair.root.log_text()
    assert (f'claiming to be leaf {LEAF}: its host certificate belongs to node "sneaky", not to a proxy of the '
            f"leaf; only leaf proxies open tunnels, so this is a leaf member posing as its proxy") in log
    assert (f'claiming to be leaf {LEAF}: its host certificate belongs to proxy "sneaky", not to a proxy') in log
    # The helper does see an acceptance: a real proxy certificate from the leaf CA is taken.
    cert = forge_host_cert(pair.leaf.data_dir, LEAF, public, key_id="proxy:sneaky", principals=["gatehouse-tunnel"],
                           kind="proxy")
    assert present_tunnel(pair.tunnel_addr, (key, asyncssh.import_certificate(cert))) == "accepted"
    assert pair.online()


def test_revoked_leaf_proxy_is_refused_by_the_root(pair):
    """The leaf revokes a proxy; its tunnels learn it through the leaf's healthy tunnel and refuse that key."""
    token = json.loads(ok(pair.leaf.run_gatectl("tokens", "add", "--type=proxy", "--format", "json")))["token"]
    stolen = hostile_join(pair.leaf.auth_addr, token, "leafproxy2", role="proxy")
    assert present_tunnel(pair.tunnel_addr, stolen.host_keypair()) == "accepted"
    assert 'proxy "leafproxy2" has been revoked' in ok(pair.leaf.run_gatectl("rm", "proxy/leafproxy2"))
    wait_until(lambda: present_tunnel(pair.tunnel_addr, stolen.host_keypair()) != "accepted", 30,
               "the root to refuse the revoked leaf proxy")
    assert "its leaf reported this proxy's key as revoked ('gatectl rm proxy/NAME' on the leaf)" in \
        pair.root.log_text()
    assert pair.online()  # the leaf's own proxy keeps its tunnel


def _count(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text))


def test_certificates_renew_and_tunnels_stay_up(pair):
    """Tunnel certificate (10 s) and the root's identities (20 s) renew at half-life; nothing drops."""
    connects = len(pair.leaf.audit("tunnel.connect"))
    # Three renewals of a 10-second certificate: the first one has expired by then.
    wait_until(lambda: _count(pair.root.log_text(), r"renewed the tunnel certificate") >= 3, 90,
               "three tunnel certificate renewals")
    wait_until(lambda: _count(pair.root.log_text(), r"renewed the node identity") >= 3, 90,
               "three node identity renewals")
    assert _count(pair.root.log_text(), r"renewed the proxy identity") >= 2
    # The tunnel opened before the renewals is the one still carrying sessions.
    assert len(pair.leaf.audit("tunnel.connect")) == connects
    assert ok(pair.root.run_gate("ssh", "--cluster", LEAF, "visitor@leafnode", "echo through-the-tunnel")) == \
        "through-the-tunnel\n"
    # A node whose first host certificate has expired presents its renewed one to new connections...
    assert ok(pair.root.run_gate("ssh", "visitor@rootnode", "echo renewed-host")) == "renewed-host\n"
    # ... and new tunnels use the renewed tunnel certificate (the first one has expired).
    pair.leaf.daemon.stop()
    pair.leaf.daemon.start()
    wait_until(lambda: len(pair.leaf.audit("tunnel.connect")) > connects, 30, "the leaf to reconnect")
    wait_until(pair.online, 30, "the leaf online again")
    assert ok(pair.root.run_gate("ssh", "--cluster", LEAF, "visitor@leafnode", "echo again")) == "again\n"


# =====================================================================================
# Low: static token length, strict versions
# =====================================================================================
def test_short_static_token_is_refused_at_start(tmp_path):
    c = Cluster(str(tmp_path), extra_auth=", tokens: ['node:short-secret']", ssh=False)
    c.daemon.start(wait=False)
    assert c.daemon.wait_exit() != 0
    assert ("the secret of static node token is shorter than 16 characters; use a longer random secret, e.g. from "
            "'openssl rand -hex 16'") in c.daemon.log_text()


@pytest.mark.parametrize("version", ["1.0.0-evil", "v1", "01", "1.0", "01.0.0", "1.0.0 "])
def test_handshake_with_a_malformed_version_is_refused(cluster, version):
    token = json.loads(ok(cluster.run_gatectl("tokens", "add", "--type=trusted_cluster", "--format",
                                              "json")))["token"]
    host_ca = pki.new_ssh_key().public_line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test proxy's web certificate is self-signed
        r = requests.post(f"https://{cluster.web_addr}/webapi/trustedclusters/validate", verify=False, timeout=30,
                          json={"token": token, "cluster_name": "evil.leaf", "host_cas": [host_ca],
                                "version": version})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(f'version "{version}" is not a valid version like 1.2.3')
    fails(cluster.run_gatectl("get", "rc/evil.leaf"), 'remote_cluster "evil.leaf" not found')
