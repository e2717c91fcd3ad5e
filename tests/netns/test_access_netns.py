"""Access across the trust on separate test hosts: role mapping, traits, cluster labels, deny rules, explanations.

Topology on bridge ghaccess0 (198.18.3.0/24), shared by every test in this module:
  ac-auth   198.18.3.10  root auth service only (cluster root.access)
  ac-proxy  198.18.3.11  root proxy only, joined to ac-auth with a proxy token; users log in here
  ac-leaf   198.18.3.20  leaf auth + proxy (cluster leaf.access); iptables drops every new
                         inbound connection except from its own node
  ac-node   198.18.3.21  leaf node "web1" (env=demo, team=web)

The root's auth and its proxy sit on different hosts, so `gatectl access check
--cluster=leaf.access` on the root really goes auth -> proxy (over the test bridge) ->
reverse tunnel -> leaf. The leaf joins with a token labelled env=staging. From the root
namespace the tests also use a root certificate straight against web1's port 3022.

Root roles and users            leaf role map                 leaf roles
  access (built-in)  alice       access -> visitor             visitor: logins [visitor]       (the seed's)
  staff + demo-cluster-access    staff  -> visitor             self:    logins [{{internal.logins}}]
                     gina        dev    -> self                admin:   logins [root, visitor]
  dev (logins from trait         ops    -> admin, guard        guard:   deny logins [root]
       external.unix_login) carol
  ops                dan
  auditor (not mapped) erin
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sites import Site, unix_user, wait_until  # noqa: E402
from testnet import requires_netns  # noqa: E402

NET = "198.18.3"
AUTH, PROXY, LEAF_HOST, NODE = "ac-auth", "ac-proxy", "ac-leaf", "ac-node"
ROOT, LEAF = "root.access", "leaf.access"
WEB = f"{NET}.11:3080"
PASSWORD = "correct horse battery"


def _role(name: str, allow: dict | None = None, deny: dict | None = None) -> dict:
    return {"kind": "role", "version": "v5", "metadata": {"name": name},
            "spec": {"allow": allow or {}, "deny": deny or {}}}


EVERY_NODE = {"*": "*"}
ROOT_ROLES = [
    _role("staff", {"logins": ["{{internal.logins}}"], "node_labels": EVERY_NODE}),  # no cluster_labels
    _role("demo-cluster-access", {"cluster_labels": {"env": "demo"}}),                 # the seed's
    _role("dev", {"logins": ["{{external.unix_login}}"], "node_labels": EVERY_NODE, "cluster_labels": {"*": "*"}}),
    _role("ops", {"logins": ["{{internal.logins}}"], "node_labels": EVERY_NODE, "cluster_labels": {"*": "*"}}),
    _role("auditor", {"logins": ["{{internal.logins}}"], "node_labels": EVERY_NODE, "cluster_labels": {"*": "*"}}),
]
LEAF_ROLES = [
    _role("visitor", {"logins": ["visitor"], "node_labels": EVERY_NODE}),
    _role("self", {"logins": ["{{internal.logins}}"], "node_labels": EVERY_NODE}),
    _role("admin", {"logins": ["root", "visitor"], "node_labels": EVERY_NODE}),
    _role("guard", deny={"logins": ["root"]}),
]
ROLE_MAP = [{"remote": "access", "local": ["visitor"]}, {"remote": "staff", "local": ["visitor"]},
            {"remote": "dev", "local": ["self"]}, {"remote": "ops", "local": ["admin", "guard"]}]
USERS = [("alice", "access", ["--logins=visitor,root"]), ("gina", "staff,demo-cluster-access", ["--logins=visitor"]),
         ("carol", "dev", ["--traits=unix_login=visitor|operator"]), ("dan", "ops", ["--logins=root,visitor"]),
         ("erin", "auditor", ["--logins=visitor"])]


class AccessSite(Site):
    """The four hosts; users' gate homes, logins and sessions; access checks; the node's audit log."""

    def home(self, user: str) -> str:
        return os.path.join(self.tmp, f"gate-{user}")

    def gate(self, user: str, *args) -> subprocess.CompletedProcess:
        return self.run_gate(self.home(user), *args)

    def login(self, user: str) -> str:
        r = self.gate_login(self.home(user), WEB, user, PASSWORD)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def ssh(self, user: str, target: str, command: str = "id -un") -> subprocess.CompletedProcess:
        return self.gate(user, "ssh", f"--cluster={LEAF}", target, command)

    def rc(self) -> dict:
        items = json.loads(self.ok(AUTH, "get", "rc", "--format", "json"))
        return next((i for i in items if i["metadata"]["name"] == LEAF), {})

    def check(self, host: str, *args) -> tuple[int, str, dict]:
        """`gatectl access check ARGS` as text and as JSON: (exit code, text, JSON result)."""
        text = self.gatectl(host, "access", "check", *args)
        as_json = self.gatectl(host, "access", "check", *args, "--format", "json")
        assert text.returncode == as_json.returncode, (text.stderr, as_json.stderr)
        assert as_json.stdout, as_json.stderr
        return text.returncode, text.stdout, json.loads(as_json.stdout)

    def tunnel_lines(self) -> list[str]:
        """The root proxy's and the leaf's log lines about tunnels: why a tunnel went away."""
        return [f"{host}: {line}" for host in (PROXY, LEAF_HOST) for line in self.log(host).splitlines()
                if "tunnel" in line][-40:]

    def node_audit(self, event: str) -> list[dict]:
        """The leaf node's own audit log (the node decides and records sessions and denials)."""
        path = self.net[NODE].lib_dir / "log" / "audit.jsonl"
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in entries if e.get("event") == event]


@pytest.fixture(scope="module")
def site():
    requires_netns()
    hosts = [(name, f"{NET}.{last}", fw)
             for name, last, fw in ((AUTH, 10, False), (PROXY, 11, False), (LEAF_HOST, 20, True), (NODE, 21, False))]
    with unix_user("visitor"), AccessSite.running("ghaccess0", "gatehouse-access-netns-", hosts) as s:
        # The leaf site's inside network: its node may reach the leaf's auth; nothing else may.
        s.allow_inbound(LEAF_HOST, f"{NET}.21")
        _bring_up(s)
        yield s


def _bring_up(s: AccessSite) -> None:
    s.start(AUTH, f"gatehouse: {{nodename: root-auth, data_dir: /var/lib/gatehouse}}\n"
                  f"auth_service: {{enabled: true, cluster_name: {ROOT}, listen_addr: 0.0.0.0:3025, "
                  f"login_rate: 600}}\n")
    token = json.loads(s.ok(AUTH, "tokens", "add", "--type=proxy", "--format", "json"))["token"]
    s.start(PROXY, f"gatehouse: {{nodename: root-proxy, data_dir: /var/lib/gatehouse, "
                   f"auth_servers: ['{NET}.10:3025'], join_token: {token}, ca_pin: '{s.ca_pin(AUTH)}'}}\n"
                   f"proxy_service: {{enabled: true, public_addr: '{WEB}'}}\n")
    s.create(AUTH, "roles.yaml", ROOT_ROLES)
    for user, roles, extra in USERS:
        s.ok(AUTH, "users", "add", user, f"--roles={roles}", *extra, "--password-stdin", input=PASSWORD + "\n")
    s.start(LEAF_HOST, f"gatehouse: {{nodename: leafproxy, data_dir: /var/lib/gatehouse, insecure: true}}\n"
                       f"auth_service: {{enabled: true, cluster_name: {LEAF}, listen_addr: 0.0.0.0:3025}}\n"
                       f"proxy_service: {{enabled: true}}\n")
    node_token = json.loads(s.ok(LEAF_HOST, "tokens", "add", "--type=node", "--format", "json"))["token"]
    s.start(NODE, f"gatehouse: {{nodename: web1, data_dir: /var/lib/gatehouse, auth_servers: ['{NET}.20:3025'], "
                  f"join_token: {node_token}, ca_pin: '{s.ca_pin(LEAF_HOST)}'}}\nssh_service: {{enabled: true, labels: {{env: demo, team: web}}}}\n")
    s.create(LEAF_HOST, "roles.yaml", LEAF_ROLES)
    trust_token = json.loads(s.ok(AUTH, "tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                                  "--labels=env=staging", "--format", "json"))["token"]
    s.create(LEAF_HOST, "tc.yaml", [{"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
                                     "spec": {"enabled": True, "token": trust_token, "web_proxy_addr": WEB,
                                              "role_map": ROLE_MAP}}])
    wait_until(lambda: s.rc().get("status", {}).get("connection") == "online", 30, "the leaf online at the root")
    wait_until(lambda: s.gatectl(LEAF_HOST, "get", "node/web1").returncode == 0, 30, "web1 registered in the leaf")
    for user, _, _ in USERS:
        s.login(user)


# ------------------------------------------------------------------------------------------- tests
def test_leaf_accepts_no_inbound_connection(site):
    for port in (3025, 3080, 3024):
        assert not site.connects(AUTH, f"{NET}.20", port), f"the root could connect to the leaf's port {port}"


def test_seed_visitor_scenario(site):
    """Root role access -> leaf role visitor, which allows the login visitor on every node."""
    status = site.gate("alice", "status").stdout
    assert re.search(rf"Leaf roles:\s+{re.escape(LEAF)}: visitor\n", status), status
    assert "web1" in site.gate("alice", "ls", f"--cluster={LEAF}").stdout
    r = site.ssh("alice", "visitor@web1", "uname -n; id -un")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ac-node", "visitor"]
    # root is among alice's root logins, but the leaf's visitor role does not allow it.
    r = site.ssh("alice", "root@web1")
    assert r.returncode != 0
    assert ('access denied: login "root" is not allowed by roles [visitor]; allowed logins are [visitor]'
            in r.stderr), r.stderr


def test_env_demo_cluster_labels(site):
    """gina's roles reach only env=demo leaves; the leaf joined as env=staging, then the root relabels it."""
    assert site.rc()["metadata"]["labels"] == {"env": "staging"}  # from the join token
    assert LEAF not in site.gate("gina", "clusters").stdout
    assert LEAF in site.gate("alice", "clusters").stdout  # access allows every cluster label
    r = site.ssh("gina", "visitor@web1")
    assert r.returncode != 0 and f'cluster "{LEAF}" is not found' in r.stderr, r.stderr
    r = site.gate("gina", "ls", f"--cluster={LEAF}")
    assert r.returncode != 0 and f'cluster "{LEAF}" is not found' in r.stderr, r.stderr
    code, text, res = site.check(AUTH, "--user=gina", f"--cluster={LEAF}", "--login=visitor", "--node=web1")
    assert code == 1 and not res["allowed"] and res["cluster_access"]["allowed"] is False
    assert f'(hidden at the root: the user is told cluster "{LEAF}" is not found)' in text
    assert (f'access denied: no role allows cluster "{LEAF}" with labels env=staging; roles '
            f"[demo-cluster-access] require env in [demo]") == res["reason"]

    # Labels only steer the root: gina's root certificate used straight against the leaf's node
    # is decided by the leaf's role map (staff -> visitor), not by cluster labels.
    profile = Path(site.home("gina"), "profiles", NET + ".11")
    r = subprocess.run(["ssh", "-i", str(profile / "key"), "-o", f"CertificateFile={profile}/key-cert.pub",
                        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "ConnectTimeout=5", "-p", "3022", f"visitor@{NET}.21", "id -un"],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and r.stdout == "visitor\n", r.stderr

    out = site.ok(AUTH, "update", f"rc/{LEAF}", "--set-labels=env=demo")
    assert f'remote_cluster "{LEAF}" has been updated (labels: env=demo)' in out
    row = next(line for line in site.gate("gina", "clusters").stdout.splitlines() if line.startswith(LEAF))
    assert "online" in row and "env=demo" in row
    r = site.ssh("gina", "visitor@web1")
    assert r.returncode == 0 and r.stdout == "visitor\n", (r.stderr, site.tunnel_lines())
    code, text, res = site.check(AUTH, "--user=gina", f"--cluster={LEAF}", "--login=visitor", "--node=web1")
    assert code == 0 and res["allowed"] and res["mapped_roles"] == ["visitor"]
    assert (f'(visible at the root: role "demo-cluster-access" allows cluster "{LEAF}" with env=demo '
            f"(allow.cluster_labels))") in text


def test_deny_rule_wins_over_allow(site):
    """ops maps to admin (allows root) and guard (denies root): deny wins, other logins still work."""
    assert "Logins:       root, visitor" in site.gate("dan", "status").stdout
    r = site.ssh("dan", "root@web1")
    reason = 'access denied: role "guard" denies login "root" (deny.logins)'
    assert r.returncode != 0 and reason in r.stderr, r.stderr
    denied = [e for e in site.node_audit("access.denied") if e.get("user") == "dan"]
    assert denied and denied[-1]["reason"] == reason and denied[-1]["mapped_roles"] == ["guard"]
    assert denied[-1]["user_cluster"] == ROOT and denied[-1]["roles"] == ["ops"]
    r = site.ssh("dan", "visitor@web1")
    assert r.returncode == 0 and r.stdout == "visitor\n", r.stderr


def test_trait_templated_login_across_the_trust(site):
    """Root: dev's logins come from carol's trait unix_login; leaf: self allows {{internal.logins}},
    which for a root user are the principals of the root certificate."""
    assert "Logins:       visitor, operator\n" in site.gate("carol", "status").stdout
    r = site.ssh("carol", "visitor@web1")
    assert r.returncode == 0 and r.stdout == "visitor\n", r.stderr
    r = site.ssh("carol", "root@web1")
    assert r.returncode != 0
    assert 'your certificate does not allow login "root"; allowed logins are [visitor, operator]' in r.stderr, \
        r.stderr
    # A certificate whose trait gives no login maps to a role that allows none.
    code, _, res = site.check(LEAF_HOST, "--user=carol", f"--from={ROOT}", "--roles=dev", "--login=visitor",
                              "--node=web1")
    assert code == 1 and res["logins"] == [] and res["reason"] == (
        "access denied: login \"visitor\" is not allowed by roles [self]; allowed logins are none (check the "
        "user's logins trait)")
    code, text, res = site.check(AUTH, "--user=carol", f"--cluster={LEAF}", "--login=visitor", "--node=web1")
    assert code == 0 and res["mapped_roles"] == ["self"] and res["logins"] == ["visitor", "operator"]
    assert "Logins        visitor, operator\n" in text
    assert res["reason"] == ('access granted: role "self" allows login "visitor" on node "web1" '
                             "(allow.logins, allow.node_labels '*': '*')")


def test_unmapped_user_is_denied_naming_the_remote_roles(site):
    reason = (f'access denied: no role in the role map of trusted cluster "{ROOT}" matches the remote roles '
              f"[auditor]; add a role_map entry for one of them")
    r = site.ssh("erin", "visitor@web1")
    assert r.returncode != 0 and reason in r.stderr, r.stderr
    assert f"{LEAF}: (none) {reason}" in site.gate("erin", "status").stdout
    denied = [e for e in site.node_audit("access.denied") if e.get("user") == "erin"]
    assert denied and denied[-1]["reason"] == reason
    code, text, res = site.check(AUTH, "--user=erin", f"--cluster={LEAF}", "--login=visitor", "--node=web1")
    assert code == 1 and res["reason"] == reason and res["mapped_roles"] == []
    assert f"Reason        {reason}\n" in text and "Decision      DENIED by role_map\n" in text


@pytest.mark.parametrize("user, roles, logins, login, allowed, rule, reason", [
    ("alice", "access", "visitor,root", "visitor", True, "allow.logins, allow.node_labels",
     'access granted: role "visitor" allows login "visitor" on node "web1" (allow.logins, allow.node_labels '
     "'*': '*')"),
    ("dan", "ops", "root,visitor", "root", False, "deny.logins",
     'access denied: role "guard" denies login "root" (deny.logins)'),
    ("carol", "dev", "visitor,operator", "operator", True, "allow.logins, allow.node_labels",
     'access granted: role "self" allows login "operator" on node "web1" (allow.logins, allow.node_labels '
     "'*': '*')"),
], ids=["allowed", "denied", "allowed-by-trait"])
def test_access_check_on_the_leaf_and_on_the_root(site, user, roles, logins, login, allowed, rule, reason):
    """The leaf explains a root certificate; the root asks the leaf the same question and prints the same."""
    code, leaf_text, at_leaf = site.check(LEAF_HOST, f"--user={user}", f"--from={ROOT}", f"--roles={roles}",
                                          f"--logins={logins}", f"--login={login}", "--node=web1")
    assert code == (0 if allowed else 1)
    assert (at_leaf["allowed"], at_leaf["rule"], at_leaf["reason"]) == (allowed, rule, reason)
    assert at_leaf["node_labels"] == {"env": "demo", "team": "web"}
    code_root, root_text, at_root = site.check(AUTH, f"--user={user}", f"--cluster={LEAF}", f"--login={login}",
                                               "--node=web1")
    assert code_root == code
    assert at_root.pop("cluster_access")["allowed"] is True
    assert at_root == at_leaf
    # Same lines, except that the root also says why the cluster is visible.
    strip = [line for line in root_text.splitlines() if not line.startswith("Cluster ")]
    assert strip == [line for line in leaf_text.splitlines() if not line.startswith("Cluster ")]
    assert f"Decision      {'ALLOWED' if allowed else 'DENIED'} by {rule}\n" in root_text
    assert f"User          {user} (from {ROOT}, roles {roles})\n" in root_text
    assert "Node          web1 (env=demo,team=web)\n" in root_text


def test_access_check_on_the_root_for_an_offline_leaf(site):
    site.stop(LEAF_HOST)
    wait_until(lambda: site.rc().get("status", {}).get("connection") == "offline", 20, "the leaf offline")
    r = site.gatectl(AUTH, "access", "check", "--user=alice", f"--cluster={LEAF}", "--login=visitor", "--node=web1")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f'ERROR: cluster "{LEAF}" is offline: no reverse tunnel from it reaches a root proxy, so the '
                        f"leaf cannot be asked; check 'gatectl get rc/{LEAF}' here and the leaf's trusted_cluster\n")
