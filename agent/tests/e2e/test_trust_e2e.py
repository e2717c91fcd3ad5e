"""Trusted clusters end to end on loopback: a root and a leaf as real processes.

The seed workflow step by step (token on the root, trusted_cluster on the leaf, the
remote cluster online at the root, SSH through the tunnel with gate and stock OpenSSH),
then role-map updates, disable/enable, one-way trust, removal and re-join, a root
restart, and every handshake error message. The same workflow across network
namespaces behind a firewall and a load balancer is in tests/netns/test_trust_netns.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings

import pytest
import requests

from conftest import Cluster, free_port, ok, unix_user, wait_until, write_yaml

ROOT, LEAF = "root.test", "leaf.test"
PASSWORD = "correct horse battery"


def error_of(r: subprocess.CompletedProcess) -> str:
    """The command failed: its stderr (compared whole by some tests)."""
    assert r.returncode != 0, f"expected failure, got:\n{r.stdout}"
    return r.stderr.strip()


def tc_yaml(token: str, web: str, *, enabled: bool = True, role_map=None, name: str = ROOT,
            heartbeat_mode: str | None = None) -> str:
    role_map = role_map if role_map is not None else [{"remote": "access", "local": ["access"]}]
    spec = {"enabled": enabled, "token": token, "web_proxy_addr": web, "role_map": role_map}
    if heartbeat_mode is not None:
        spec["heartbeat_mode"] = heartbeat_mode
    return json.dumps({"kind": "trusted_cluster", "version": "v2", "metadata": {"name": name}, "spec": spec})


class Trust:
    def __init__(self, tmp: str):
        self.tmp = tmp
        # Presence summaries every 2 s (default 30), so last_heartbeat moves within a test's patience.
        self.root = Cluster(os.path.join(tmp, "root"), extra_auth=", login_rate: 600",
                            cluster_name=ROOT, node_name="rootnode", extra_proxy=", presence_interval: 2")
        self.leaf = Cluster(os.path.join(tmp, "leaf"), extra_auth=", login_rate: 600",
                            cluster_name=LEAF, node_name="leafnode", extra_general=", insecure: true")
        self.others: list[Cluster] = []

    def token(self, *extra) -> str:
        out = ok(self.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=15m", *extra,
                                       "--format", "json"))
        return json.loads(out)["token"]

    def create_tc(self, leaf: Cluster, text: str, *flags) -> subprocess.CompletedProcess:
        path = write_yaml(os.path.join(leaf.tmp, f"tc-{time.monotonic_ns()}.yaml"), text)
        return leaf.run_gatectl("create", *flags, path)

    def rc(self, name: str = LEAF) -> dict | None:
        r = self.root.run_gatectl("get", "rc", "--format", "json")
        items = json.loads(r.stdout) if r.returncode == 0 else []
        return next((i for i in items if i["metadata"]["name"] == name), None)

    def wait_status(self, want: str, timeout: float = 20.0) -> dict:
        return wait_until(lambda: (lambda rc: rc if rc and rc["status"]["connection"] == want else None)(self.rc()),
                          timeout, f"remote cluster {want}")

    def extra_leaf(self, name: str, insecure: bool = True) -> Cluster:
        c = Cluster(os.path.join(self.tmp, f"extra-{len(self.others)}"), cluster_name=name, node_name="x",
                    ssh=False, extra_general=", insecure: true" if insecure else "")
        self.others.append(c)
        return c.start()

    def stop(self):
        for c in self.others:
            c.stop()
        self.leaf.stop()
        self.root.stop()


@pytest.fixture(scope="module")
def trust():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-trust-")
    t = Trust(tmp)
    with unix_user("visitor"):
        try:
            t.root.start()
            t.leaf.start()
            t.root.add_user("alice", "access", "visitor,root", PASSWORD)
            ok(t.root.run_gatectl("create", write_yaml(os.path.join(tmp, "auditor.yaml"), json.dumps(
                {"kind": "role", "version": "v5", "metadata": {"name": "auditor"},
                 "spec": {"allow": {"logins": ["visitor"], "node_labels": {"*": "*"},
                                    "cluster_labels": {"*": "*"}}}}))))
            t.root.add_user("bob", "auditor", "visitor", PASSWORD)
            t.leaf.add_user("carol", "access", "visitor", PASSWORD)
            yield t
        finally:
            t.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- the seed workflow
def test_token_listing_shows_type_labels_and_expiry(trust):
    out = ok(trust.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=15m", "--labels=env=demo"))
    assert "The cluster invite token: " in out and "This token will expire at" in out
    listing = ok(trust.root.run_gatectl("tokens", "ls"))
    assert "trusted_cluster" in listing and "env=demo" in listing and "m" in listing.splitlines()[-1]
    name = out.split("Token name (for 'gatectl tokens rm'): ")[1].split(";")[0]
    assert f"Token {name} has been deleted" in ok(trust.root.run_gatectl("tokens", "rm", name))
    assert trust.root.audit("token.delete")


def test_leaf_joins_and_tunnel_comes_online(trust):
    token = trust.token("--labels=env=demo")
    out = ok(trust.create_tc(trust.leaf, tc_yaml(token, trust.root.web_addr)))
    assert f'trusted_cluster "{ROOT}" has been created' in out
    rc = trust.wait_status("online")
    assert rc["metadata"]["labels"] == {"env": "demo"}  # labels from the join token
    assert rc["status"]["last_heartbeat"]
    tc = json.loads(ok(trust.leaf.run_gatectl("get", f"tc/{ROOT}", "--format", "json")))[0]
    assert "token" not in tc["spec"], "the token must not be stored or shown"
    assert tc["spec"]["tunnel_addr"] == trust.root.web_addr  # defaults to web_proxy_addr …
    assert tc["status"]["tunnel_addr"] == f"127.0.0.1:{trust.root.tunnel_port}"  # … discovered from the root
    wait_until(lambda: json.loads(ok(trust.leaf.run_gatectl("get", f"tc/{ROOT}", "--format", "json")))[0]
               ["status"]["connection"] == "online", what="leaf sees the tunnel online")
    assert trust.root.audit("trusted_cluster.validate") and trust.leaf.audit("trusted_cluster.create")
    assert trust.root.audit("tunnel.connect") and trust.leaf.audit("tunnel.connect")
    with open(os.path.join(trust.leaf.data_dir, "log", "audit.jsonl"), encoding="utf-8") as fh:
        assert token not in fh.read(), "the token must never reach the audit log"
    # At DEBUG (these clusters run with log.severity DEBUG, as --debug gives) the leaf's log
    # shows the handshake and tunnel steps, and never the token.
    log = trust.leaf.log_text()
    for step in ("trust: sending the handshake for", "trust: handshake with root.test succeeded",
                 "tunnel: dialling root root.test", "tunnel: connected to root root.test proxy"):
        assert step in log, step
    assert token not in log and token not in trust.root.log_text(), "the token must never reach a log"


def test_last_heartbeat_is_monotonic(trust):
    """Heartbeats stay in the root proxy's memory; its presence summary (every presence_interval, 2 s
    here) carries the newest one to auth, so last_heartbeat moves forward and is never older than a
    summary interval plus a beat (docs/architecture.md, "Presence")."""
    from gatehouse.clock import parse_iso
    first = trust.wait_status("online")["status"]["last_heartbeat"]
    later = wait_until(lambda: (lambda rc: rc["status"]["last_heartbeat"]
                                if rc["status"]["last_heartbeat"] > first else None)(trust.rc()),
                       30, "a newer heartbeat")
    assert later > first
    assert trust.rc()["status"]["heartbeat_mode"] == "default"
    assert time.time() - parse_iso(trust.rc()["status"]["last_heartbeat"]) < 2 + 4 + 5  # summary + beat + slack


def test_root_user_reaches_leaf_node(trust):
    ok(trust.root.login("alice", PASSWORD))
    clusters = ok(trust.root.run_gate("clusters"))
    assert "Cluster Name" in clusters and "Selected" in clusters
    row = next(line for line in clusters.splitlines() if line.startswith(LEAF))
    assert "online" in row and "leaf" in row and "env=demo" in row
    assert "leafnode" in ok(trust.root.run_gate("ls", f"--cluster={LEAF}"))
    r = trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "echo through-the-tunnel; id -un")
    assert ok(r) == "through-the-tunnel\nvisitor\n"
    r = trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "exit 7")
    assert r.returncode == 7
    sessions = [e for e in trust.leaf.audit("session.start") if e.get("user") == "alice"]
    assert sessions, "the leaf audits the root user's session"


def test_stock_openssh_through_the_tunnel(trust):
    ok(trust.root.login("alice", PASSWORD))
    cfg_text = ok(trust.root.run_gate("config"))
    assert f"Host *.{LEAF}" in cfg_text
    cfg = write_yaml(os.path.join(trust.tmp, "ssh_config"), cfg_text)
    r = subprocess.run(["ssh", "-F", cfg, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                        f"visitor@leafnode.{LEAF}", "echo via-openssh"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "via-openssh\n"


def test_proxy_subsystem_route_through_the_tunnel(trust):
    """ProxyCommand-style clients ask for `proxy:HOST:PORT@CLUSTER` instead of direct-tcpip."""
    ok(trust.root.login("alice", PASSWORD))
    cfg = write_yaml(os.path.join(trust.tmp, "ssh_config_sub"), ok(trust.root.run_gate("config")))
    proxy_cmd = f"ssh -F {cfg} -s gatehouse-proxy-{ROOT} proxy:leafnode:3022@{LEAF}"
    r = subprocess.run(["ssh", "-F", cfg, "-o", f"ProxyCommand={proxy_cmd}", "-o", "ProxyJump=none",
                        "-o", "BatchMode=yes", f"visitor@leafnode.{LEAF}", "echo via-subsystem"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "via-subsystem\n"


def test_root_routes_only_to_registered_leaf_nodes(trust):
    ok(trust.root.login("alice", PASSWORD))
    err = error_of(trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@127.0.0.1", "true"))
    assert f'node "127.0.0.1" is not registered in cluster "{LEAF}"' in err
    err = error_of(trust.root.run_gate("ssh", "--cluster=nosuch.test", "visitor@leafnode", "true"))
    # Via the subsystem route the proxy sees the cluster name; via direct-tcpip it sees node.cluster.
    assert 'cluster "nosuch.test" is not found' in err or 'node "leafnode.nosuch.test" is not registered' in err


def test_unmapped_root_role_is_denied_with_reason(trust):
    home = os.path.join(trust.tmp, "gate-bob")
    ok(trust.root.run_gate("login", f"--proxy={trust.root.web_addr}", "--user=bob", "--insecure",
                           "--password-stdin", input=PASSWORD + "\n", gate_home=home))
    err = error_of(trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true", gate_home=home))
    assert "no role" in err and "auditor" in err, err


def test_role_map_update_with_force(trust):
    token = "unused-for-updates-0000"
    role_map = [{"remote": "access", "local": ["access"]}, {"remote": "auditor", "local": ["access"]}]
    out = ok(trust.create_tc(trust.leaf, tc_yaml(token, trust.root.web_addr, role_map=role_map), "--force"))
    assert f'trusted_cluster "{ROOT}" has been updated' in out
    home = os.path.join(trust.tmp, "gate-bob")
    wait_until(lambda: trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true",
                                           gate_home=home).returncode == 0, 10, "bob mapped through auditor")
    # Back to the original map: bob is denied again.
    ok(trust.create_tc(trust.leaf, tc_yaml(token, trust.root.web_addr), "--force"))
    wait_until(lambda: trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true",
                                           gate_home=home).returncode != 0, 10, "bob unmapped")
    err = error_of(trust.create_tc(trust.leaf, tc_yaml(token, trust.root.web_addr)))
    assert "already exists" in err and "-f" in err


def test_role_map_validation_on_create(trust):
    bad = tc_yaml("x" * 20, trust.root.web_addr, role_map=[{"remote": "access", "local": ["nosuchrole"]}])
    err = error_of(trust.create_tc(trust.leaf, bad, "--force"))
    assert "nosuchrole" in err and "does not exist" in err, err


def test_leaf_users_cannot_reach_root(trust):
    home = os.path.join(trust.tmp, "gate-carol")
    ok(trust.leaf.run_gate("login", f"--proxy={trust.leaf.web_addr}", "--user=carol", "--insecure",
                           "--password-stdin", input=PASSWORD + "\n", gate_home=home))
    clusters = ok(trust.leaf.run_gate("clusters", gate_home=home))
    assert ROOT not in clusters
    err = error_of(trust.leaf.run_gate("ssh", f"--cluster={ROOT}", "visitor@rootnode", "true", gate_home=home))
    assert f'cluster "{ROOT}" is not found' in err
    # The leaf user's certificate used directly at the root proxy: its CA is not trusted there.
    profile = os.path.join(home, "profiles", "127.0.0.1")
    r = subprocess.run(["ssh", "-i", os.path.join(profile, "key"), "-o", f"CertificateFile={profile}/key-cert.pub",
                        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-p", str(trust.root.node_port), "visitor@127.0.0.1", "true"],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "does not trust" in r.stderr, r.stderr


def test_disable_and_enable(trust):
    ok(trust.root.login("alice", PASSWORD))
    ok(trust.create_tc(trust.leaf, tc_yaml("x" * 20, trust.root.web_addr, enabled=False), "--force"))
    trust.wait_status("offline", 10)
    assert trust.leaf.audit("trusted_cluster.disable")
    # The root-issued certificate, used directly against the leaf node, stops working at once.
    profile = trust.root.profile_dir()
    direct = ["ssh", "-i", os.path.join(profile, "key"), "-o", f"CertificateFile={profile}/key-cert.pub",
              "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
              "-p", str(trust.leaf.node_port), "visitor@127.0.0.1", "true"]
    r = wait_until(lambda: (lambda r: r if r.returncode != 0 else None)(
        subprocess.run(direct, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)), 1.5,
        "root cert refused after disable")
    assert "does not trust" in r.stderr, r.stderr
    err = error_of(trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true"))
    assert "offline" in err or "not found" in err, err
    err = error_of(trust.root.run_gatectl("access", "check", "--user=alice", f"--cluster={LEAF}", "--login=visitor",
                                       "--node=leafnode"))
    assert err == (f'ERROR: cluster "{LEAF}" is offline: no reverse tunnel from it reaches a root proxy, so the leaf '
                   f"cannot be asked; check 'gatectl get rc/{LEAF}' here and the leaf's trusted_cluster"), err
    # Enable again: no token needed.
    ok(trust.create_tc(trust.leaf, tc_yaml("x" * 20, trust.root.web_addr, enabled=True), "--force"))
    trust.wait_status("online", 15)
    assert trust.leaf.audit("trusted_cluster.enable")
    wait_until(lambda: trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true").returncode == 0,
               10, "ssh after enable")


def test_root_restart_tunnel_recovers(trust):
    trust.wait_status("online")
    trust.root.daemon.stop()
    trust.root.daemon.start()
    trust.wait_status("online", 30)
    ok(trust.root.login("alice", PASSWORD))
    wait_until(lambda: trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true").returncode == 0,
               15, "ssh after root restart")


def test_leaf_follows_root_tunnel_listener_to_a_new_port(trust):
    """tunnel_addr left at web_proxy_addr: the leaf asks the root again where its tunnel listener is."""
    trust.wait_status("online")
    old, new = f"127.0.0.1:{trust.root.tunnel_port}", f"127.0.0.1:{free_port()}"
    trust.root.daemon.stop()
    with open(trust.root.config_path) as f:
        text = f.read()
    write_yaml(trust.root.config_path, text.replace(old, new))
    trust.root.tunnel_port = int(new.rsplit(":", 1)[1])
    trust.root.daemon.start()
    # Generous: the leaf's redials back off up to MAX_BACKOFF (30 s, +50% jitter) while the root is away.
    trust.wait_status("online", 120)
    tc = json.loads(ok(trust.leaf.run_gatectl("get", f"tc/{ROOT}", "--format", "json")))
    tc = tc[0] if isinstance(tc, list) else tc
    assert tc["status"]["tunnel_addr"] == new, tc["status"]
    assert "now advertises its tunnel address" in trust.leaf.log_text()
    ok(trust.root.login("alice", PASSWORD))
    wait_until(lambda: trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true").returncode == 0,
               15, "ssh after the root moved its tunnel listener")

def test_low_bandwidth_leaf_online_then_offline_when_it_stops_answering(trust):
    """heartbeat_mode low_bandwidth on the leaf's trusted_cluster: the leaf redials with it, the root
    shows the mode, and when the leaf freezes (SIGSTOP: its TCP connection stays open, only the
    heartbeats stop) the root proxy closes the tunnel after MISSED_HEARTBEATS of the leaf's 25 s
    beats and reports it offline (the bound is 90 s; no timing is asserted, only the reason)."""
    import signal
    trust.wait_status("online")
    ok(trust.create_tc(trust.leaf, tc_yaml("x" * 20, trust.root.web_addr, heartbeat_mode="low_bandwidth"),
                       "--force"))
    rc = wait_until(lambda: (lambda rc: rc if rc and rc["status"]["connection"] == "online"
                             and rc["status"].get("heartbeat_mode") == "low_bandwidth" else None)(trust.rc()),
                    60, "the leaf online in low-bandwidth mode")
    assert rc["status"]["last_heartbeat"]
    assert "heartbeat mode low_bandwidth, every 25s" in trust.leaf.log_text()
    closed = trust.root.log_text().count(f"tunnel: leaf {LEAF} (")
    pid = trust.leaf.daemon.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        trust.wait_status("offline", 240)
        log = trust.root.log_text()
        assert log.count(f"tunnel: leaf {LEAF} (") > closed and "missed 3 heartbeats; closing its tunnel" in log
        assert trust.rc()["status"]["last_heartbeat"]  # kept while offline
    finally:
        os.kill(pid, signal.SIGCONT)
    trust.wait_status("online", 240)
    # Back to the default mode for the tests that follow.
    ok(trust.create_tc(trust.leaf, tc_yaml("x" * 20, trust.root.web_addr), "--force"))
    wait_until(lambda: (lambda rc: rc if rc and rc["status"]["connection"] == "online"
                        and rc["status"].get("heartbeat_mode") == "default" else None)(trust.rc()),
               60, "the leaf online in the default mode again")


def test_update_rc_labels_and_cluster_visibility(trust):
    out = ok(trust.root.run_gatectl("update", f"rc/{LEAF}", "--set-labels=env=prod,team=ops"))
    assert "has been updated" in out
    assert trust.rc()["metadata"]["labels"] == {"env": "prod", "team": "ops"}
    # A role limited to env=demo clusters no longer sees or reaches the leaf.
    ok(trust.root.run_gatectl("create", write_yaml(os.path.join(trust.tmp, "demo-only.yaml"), json.dumps(
        {"kind": "role", "version": "v5", "metadata": {"name": "demo-only"},
         "spec": {"allow": {"logins": ["visitor"], "node_labels": {"*": "*"}, "cluster_labels": {"env": "demo"}}}}))))
    trust.root.add_user("dave", "demo-only", "visitor", PASSWORD)
    home = os.path.join(trust.tmp, "gate-dave")
    ok(trust.root.run_gate("login", f"--proxy={trust.root.web_addr}", "--user=dave", "--insecure",
                           "--password-stdin", input=PASSWORD + "\n", gate_home=home))
    assert LEAF not in ok(trust.root.run_gate("clusters", gate_home=home))
    err = error_of(trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true", gate_home=home))
    assert f'cluster "{LEAF}" is not found' in err
    # Nor does dave's profile trust (or name) the hidden leaf's host CA.
    with open(os.path.join(trust.root.profile_dir(home), "known_hosts"), encoding="utf-8") as fh:
        known = fh.read()
    assert f"*.{ROOT}" in known and LEAF not in known
    ok(trust.root.run_gatectl("update", f"rc/{LEAF}", "--set-labels=env=demo"))
    assert LEAF in ok(trust.root.run_gate("clusters", gate_home=home))
    err = error_of(trust.leaf.run_gatectl("update", f"rc/{ROOT}", "--set-labels=env=x"))
    assert f'remote_cluster "{ROOT}" not found' in err  # a leaf cannot label itself on the root
    err = error_of(trust.root.run_gatectl("update", "rc/nosuch", "--set-labels=env=x"))
    assert 'remote_cluster "nosuch" not found' in err


# ---------------------------------------------------------------- explaining access
def test_gate_status_shows_leaf_roles(trust):
    ok(trust.root.login("alice", PASSWORD))
    out = ok(trust.root.run_gate("status"))
    assert re.search(rf"Leaf roles:\s+{re.escape(LEAF)}: access", out), out
    home = os.path.join(trust.tmp, "gate-bob")
    out = ok(trust.root.run_gate("status", gate_home=home))
    assert f"{LEAF}: (none) access denied: no role" in out, out


def test_access_check_on_the_leaf_for_a_root_user(trust):
    r = trust.leaf.run_gatectl("access", "check", "--user=alice", f"--from={ROOT}", "--roles=access",
                               "--logins=visitor,root", "--login=visitor", "--node=leafnode", f"--cluster={LEAF}")
    out = ok(r)
    assert "Mapped roles  access" in out and "Decision      ALLOWED" in out
    assert "Logins        visitor, root" in out and "env=dev" in out
    r = trust.leaf.run_gatectl("access", "check", "--user=bob", f"--from={ROOT}", "--roles=auditor",
                               "--logins=visitor", "--login=visitor", "--node=leafnode")
    assert r.returncode == 1
    assert "Decision      DENIED" in r.stdout and "no role in the role map" in r.stdout and "auditor" in r.stdout
    r = trust.leaf.run_gatectl("access", "check", "--user=alice", f"--from={ROOT}", "--roles=access",
                               "--logins=visitor", "--login=nobody", "--node=leafnode", "--format", "json")
    res = json.loads(r.stdout)
    assert r.returncode == 1 and not res["allowed"] and "nobody" in res["reason"]


def test_access_check_local_user_and_errors(trust):
    out = ok(trust.root.run_gatectl("access", "check", "--user=alice", "--login=visitor", "--node=rootnode"))
    assert "Decision      ALLOWED" in out
    err = error_of(trust.root.run_gatectl("access", "check", "--user=alice", "--login=visitor", "--node=nope"))
    assert 'node "nope" is not registered' in err
    err = error_of(trust.leaf.run_gatectl("access", "check", "--user=alice", "--login=visitor", "--node=rootnode",
                                       f"--cluster={ROOT}"))
    assert f'this is cluster "{LEAF}", a leaf of "{ROOT}"; run the check on the auth server of "{ROOT}"' in err
    err = error_of(trust.root.run_gatectl("access", "check", "--user=alice", "--login=visitor", "--node=x",
                                       "--cluster=nosuch.test"))
    assert f'cluster "nosuch.test" is neither this cluster ("{ROOT}") nor one of its leaf clusters' in err
    err = error_of(trust.leaf.run_gatectl("access", "check", "--user=alice", "--login=visitor", "--node=leafnode"))
    assert 'user "alice" not found here' in err and "--from" in err


def _check_json(cluster: Cluster, *args) -> tuple[int, dict]:
    r = cluster.run_gatectl("access", "check", *args, "--format", "json")
    assert r.returncode in (0, 1) and r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_access_check_on_the_root_asks_the_leaf(trust):
    """On the root: the root's cluster labels first, then the leaf's own explanation through the tunnel."""
    trust.wait_status("online")
    out = ok(trust.root.run_gatectl("access", "check", "--user=alice", f"--cluster={LEAF}", "--login=visitor",
                                    "--node=leafnode"))
    assert f"User          alice (from {ROOT}, roles access)" in out
    assert f"Cluster       {LEAF} (visible at the root: role \"access\" allows cluster" in out
    assert "Mapped roles  access" in out and "Logins        visitor, root" in out
    assert "Node          leafnode (env=dev)" in out and "Decision      ALLOWED by allow.logins" in out
    # The same explanation, field by field, as the leaf gives for that root certificate.
    cases = [("alice", "access", "visitor,root", "visitor", 0), ("alice", "access", "visitor,root", "nobody", 1),
             ("bob", "auditor", "visitor", "visitor", 1)]
    for user, roles, logins, login, code in cases:
        rc_root, at_root = _check_json(trust.root, f"--user={user}", f"--cluster={LEAF}", f"--login={login}",
                                       "--node=leafnode")
        rc_leaf, at_leaf = _check_json(trust.leaf, f"--user={user}", f"--from={ROOT}", f"--roles={roles}",
                                       f"--logins={logins}", f"--login={login}", "--node=leafnode")
        assert rc_root == rc_leaf == code, (at_root, at_leaf)
        assert at_root.pop("cluster_access")["allowed"] is True
        assert at_root == at_leaf
    r = trust.root.run_gatectl("access", "check", "--user=bob", f"--cluster={LEAF}", "--login=visitor",
                               "--node=leafnode")
    assert r.returncode == 1 and "Decision      DENIED" in r.stdout
    assert f'no role in the role map of trusted cluster "{ROOT}" matches the remote roles [auditor]' in r.stdout
    # Errors the leaf finds come back as they are; --from makes no sense on the root.
    err = error_of(trust.root.run_gatectl("access", "check", "--user=alice", f"--cluster={LEAF}", "--login=visitor",
                                       "--node=nope"))
    assert f'node "nope" is not registered in cluster "{LEAF}"' in err
    err = error_of(trust.root.run_gatectl("access", "check", "--user=nobody", f"--cluster={LEAF}", "--login=visitor",
                                       "--node=leafnode"))
    assert f'user "nobody" not found on "{ROOT}"' in err
    err = error_of(trust.root.run_gatectl("access", "check", "--user=alice", f"--cluster={LEAF}", f"--from={ROOT}",
                                       "--login=visitor", "--node=leafnode"))
    assert "--from describes a user of a trusted root while checking on the leaf" in err


def test_access_check_on_the_root_hides_what_cluster_labels_hide(trust):
    """A leaf hidden by the root's cluster labels is denied at the root, and the leaf is not asked."""
    ok(trust.root.run_gatectl("update", f"rc/{LEAF}", "--set-labels=env=prod"))
    try:
        r = trust.root.run_gatectl("access", "check", "--user=dave", f"--cluster={LEAF}", "--login=visitor",
                                   "--node=leafnode")
        assert r.returncode == 1, r.stderr
        assert f'Cluster       {LEAF} (hidden at the root: the user is told cluster "{LEAF}" is not found)' in r.stdout
        assert "Node          leafnode (labels unknown: the leaf was not asked)" in r.stdout
        assert "Decision      DENIED by allow.cluster_labels" in r.stdout
        assert (f'Reason        access denied: no role allows cluster "{LEAF}" with labels env=prod; '
                f"roles [demo-only] require env in [demo]") in r.stdout
        # Even for a node the leaf does not have: the root answers before asking the leaf.
        r = trust.root.run_gatectl("access", "check", "--user=dave", f"--cluster={LEAF}", "--login=visitor",
                                   "--node=nope")
        assert r.returncode == 1 and "Decision      DENIED" in r.stdout and not r.stderr
    finally:
        ok(trust.root.run_gatectl("update", f"rc/{LEAF}", "--set-labels=env=demo"))
    code, res = _check_json(trust.root, "--user=dave", f"--cluster={LEAF}", "--login=visitor", "--node=leafnode")
    assert res["cluster_access"]["allowed"] and res["node_labels"] == {"env": "dev"}
    assert code == 1 and res["reason"].startswith("access denied: no role in the role map")  # demo-only unmapped


def test_root_cert_used_directly_against_the_leaf_is_gated_by_role_mapping(trust):
    """Cluster labels only steer the root's proxy: at the leaf, the role map decides."""
    ok(trust.root.run_gatectl("update", f"rc/{LEAF}", "--set-labels=env=prod"))  # hidden from dave's demo-only
    mapped = [{"remote": "access", "local": ["access"]}, {"remote": "demo-only", "local": ["access"]}]
    ok(trust.create_tc(trust.leaf, tc_yaml("x" * 20, trust.root.web_addr, role_map=mapped), "--force"))
    try:
        dave, bob = os.path.join(trust.tmp, "gate-dave"), os.path.join(trust.tmp, "gate-bob")
        for user, home in (("dave", dave), ("bob", bob)):
            ok(trust.root.run_gate("login", f"--proxy={trust.root.web_addr}", f"--user={user}", "--insecure",
                                   "--password-stdin", input=PASSWORD + "\n", gate_home=home))
        # Through the root: the hidden leaf is not found for dave.
        assert LEAF not in ok(trust.root.run_gate("clusters", gate_home=dave))
        err = error_of(trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true", gate_home=dave))
        assert f'cluster "{LEAF}" is not found' in err

        def direct(home: str) -> subprocess.CompletedProcess:
            profile = trust.root.profile_dir(home)
            return subprocess.run(
                ["ssh", "-i", os.path.join(profile, "key"), "-o", f"CertificateFile={profile}/key-cert.pub",
                 "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-p", str(trust.leaf.node_port), "visitor@127.0.0.1", "echo direct; id -un"],
                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)

        # Straight to the leaf node with the same root-signed certificate: mapped, so allowed.
        r = wait_until(lambda: (lambda r: r if r.returncode == 0 else None)(direct(dave)), 10,
                       "dave mapped at the leaf")
        assert r.stdout == "direct\nvisitor\n"
        assert any(e.get("user") == "dave" and e.get("user_cluster") == ROOT for e in trust.leaf.audit("session.start"))
        # bob sees the leaf at the root (auditor allows every cluster label), but auditor is not mapped.
        assert LEAF in ok(trust.root.run_gate("clusters", gate_home=bob))
        r = direct(bob)
        assert r.returncode != 0 and "direct" not in r.stdout
        reason = (f'access denied: no role in the role map of trusted cluster "{ROOT}" matches the remote roles '
                  f"[auditor]; add a role_map entry for one of them")
        assert reason in r.stderr, r.stderr
        denied = [e for e in trust.leaf.audit("access.denied") if e.get("user") == "bob"]
        assert denied and denied[-1]["reason"] == reason and denied[-1]["user_cluster"] == ROOT
    finally:
        ok(trust.create_tc(trust.leaf, tc_yaml("x" * 20, trust.root.web_addr), "--force"))
        ok(trust.root.run_gatectl("update", f"rc/{LEAF}", "--set-labels=env=demo"))


def test_rolemap_test_command(trust):
    path = write_yaml(os.path.join(trust.tmp, "tc-map.yaml"), tc_yaml("x" * 20, trust.root.web_addr, role_map=[
        {"remote": "^dev-(.*)$", "local": ["$1", "dev"]}, {"remote": "admin", "local": ["access"]}]))
    out = ok(trust.leaf.run_gatectl("rolemap", "test", "-f", path, "--roles=dev-ops,admin"))
    assert "map to local roles: ops, dev, access" in out
    r = trust.leaf.run_gatectl("rolemap", "test", "-f", path, "--roles=auditor")
    assert r.returncode == 1 and "no role in the role map" in r.stdout


# ---------------------------------------------------------------- handshake errors
def test_bad_and_expired_tokens(trust):
    leaf2 = trust.extra_leaf("leaf2.test")
    err = error_of(trust.create_tc(leaf2, tc_yaml("not-a-real-token-000", trust.root.web_addr)))
    assert "the root cluster refused trust" in err and "invalid or has expired" in err, err
    out = ok(trust.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=1s", "--format", "json"))
    time.sleep(1.5)
    err = error_of(trust.create_tc(leaf2, tc_yaml(json.loads(out)["token"], trust.root.web_addr)))
    assert "invalid or has expired" in err
    node_token = json.loads(ok(trust.root.run_gatectl("tokens", "add", "--type=node", "--format", "json")))["token"]
    err = error_of(trust.create_tc(leaf2, tc_yaml(node_token, trust.root.web_addr)))
    assert "not trusted_cluster" in err, err
    assert error_of(leaf2.run_gatectl("get", f"tc/{ROOT}"))  # nothing half-written on the leaf
    assert trust.rc("leaf2.test") is None                  # nor on the root
    assert [e for e in trust.root.audit("trusted_cluster.validate") if not e["success"]]


def test_static_token_never_expires(trust):
    # The root fixture has no static token; a dedicated root with one proves the config path.
    tmp = os.path.join(trust.tmp, "static-root")
    root2 = Cluster(tmp, extra_auth=", tokens: ['trusted_cluster:static-secret-value-123'], validate_rate: 3",
                    cluster_name="root2.test", node_name="r2", ssh=False)
    trust.others.append(root2)
    root2.start()
    leaf3 = trust.extra_leaf("leaf3.test")
    ok(trust.create_tc(leaf3, tc_yaml("static-secret-value-123", root2.web_addr, name="root2.test")))
    # The public validate endpoint is rate-limited per client address (3 per minute here).
    statuses = []
    for _ in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = requests.post(f"https://{root2.web_addr}/webapi/trustedclusters/validate", verify=False, timeout=10,
                              json={"token": "guess-guess-guess", "cluster_name": "g.test", "version": "1.0.0",
                                    "host_cas": ["ssh-ed25519 AAAA x"]})
        statuses.append(r.status_code)
    assert statuses[-1] == 429 and "trust validation" in r.json()["error"]["message"], (statuses, r.text)


def test_self_signed_root_certificate_needs_insecure(trust):
    strict = trust.extra_leaf("strict.test", insecure=False)
    err = error_of(trust.create_tc(strict, tc_yaml(trust.token(), trust.root.web_addr)))
    assert "the trusted cluster uses misconfigured HTTP/TLS certificate" in err and "self-signed" in err, err


def test_name_clash_and_already_registered(trust):
    clash = trust.extra_leaf(LEAF)  # another cluster that calls itself leaf.test, with its own CAs
    err = error_of(trust.create_tc(clash, tc_yaml(trust.token(), trust.root.web_addr)))
    assert f'a cluster named "{LEAF}" is already registered with the root' in err, err
    err = error_of(trust.create_tc(clash, tc_yaml(trust.token(), trust.root.web_addr, name=LEAF)))
    assert "has this cluster's own name" in err
    err = error_of(trust.create_tc(clash, tc_yaml(trust.token(), trust.root.web_addr, name="wrong.test")))
    assert f'the root cluster is called "{ROOT}"' in err, err


def test_unreachable_root(trust):
    leaf4 = trust.extra_leaf("leaf4.test")
    err = error_of(trust.create_tc(leaf4, tc_yaml("x" * 20, "127.0.0.1:1")))
    assert "cannot reach the root cluster at 127.0.0.1:1" in err, err


def test_validate_endpoint_checks_version_and_host_cas(trust):
    url = f"https://{trust.root.web_addr}/webapi/trustedclusters/validate"
    token = trust.token()
    base = {"token": token, "cluster_name": "v.test", "host_cas": ["ssh-ed25519 AAAA x"], "version": "1.0.0"}

    def post(**change):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the test root's web certificate is self-signed
            r = requests.post(url, json={**base, **change}, verify=False, timeout=10)
        return r.status_code, r.json()["error"]["message"]

    status, msg = post(version="3.0.0")
    assert status == 400 and "newer than the root" in msg
    status, msg = post(host_cas=[])
    assert "exactly one host certificate authority" in msg
    status, msg = post(cluster_name=ROOT)
    assert "same name as the root" in msg
    status, msg = post()
    assert "not a valid SSH public key" in msg
    assert trust.rc("v.test") is None


# ---------------------------------------------------------------- removal and re-join
def test_remove_on_both_sides_and_rejoin(trust):
    trust.wait_status("online", 20)
    t0 = time.monotonic()
    assert f'remote_cluster "{LEAF}" has been deleted' in ok(trust.root.run_gatectl("rm", f"rc/{LEAF}"))
    wait_until(lambda: "tunnel: leaf leaf.test was removed" in trust.root.log_text(), 5, "tunnel dropped")
    assert time.monotonic() - t0 < 5
    assert trust.rc() is None
    ok(trust.leaf.run_gatectl("rm", f"tc/{ROOT}"))
    assert trust.leaf.audit("trusted_cluster.delete") and trust.root.audit("remote_cluster.delete")
    # alice logs in while the leaf is gone: her profile trusts no host CA of the leaf.
    ok(trust.root.login("alice", PASSWORD))
    known_hosts = os.path.join(trust.root.profile_dir(), "known_hosts")
    with open(known_hosts, encoding="utf-8") as fh:
        assert LEAF not in fh.read()
    ok(trust.create_tc(trust.leaf, tc_yaml(trust.token(), trust.root.web_addr)))
    trust.wait_status("online", 20)
    # Without logging in again: gate ssh fetches the host CAs once more when the leaf node's key is unknown.
    wait_until(lambda: trust.root.run_gate("ssh", f"--cluster={LEAF}", "visitor@leafnode", "true").returncode == 0,
               10, "ssh after re-join")
    with open(known_hosts, encoding="utf-8") as fh:
        assert f"@cert-authority *.{LEAF},[*.{LEAF}]:* " in fh.read()
    assert oct(os.stat(known_hosts).st_mode & 0o777) == "0o600"
