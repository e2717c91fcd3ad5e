"""Trusted clusters across separate test hosts (network + mount namespaces).

Topology on bridge ghtrust0 (198.18.2.0/24):
  root1  198.18.2.10  root auth + proxy A + node "rootnode"
  rootp2 198.18.2.11  proxy B only, joined to root1's auth with a proxy token
  lb     198.18.2.12  haproxy: TCP round robin over both root proxies (3080, 3023, 3024)
  leaf1  198.18.2.20  leaf auth + proxy; iptables drops every new inbound connection
                      except from its own node (the site's inside network)
  node1  198.18.2.21  leaf node joined with a node token

The leaf trusts the root through the load balancer and ends up with a reverse tunnel
to each root proxy; users who land on either proxy reach node1; the root cannot open
any connection to leaf1; the tunnels survive a root restart; disable/enable and removal
on both sides followed by a re-join work across the hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sites import Site, unix_user, wait_until  # noqa: E402
from testnet import requires_netns  # noqa: E402

NET = "198.18.2"
ROOT, LEAF = "root.example", "leaf.example"
PASSWORD = "correct horse battery"

HAPROXY = """global
  maxconn 2000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
{sections}"""


def _haproxy_sections() -> str:
    out = []
    for name, port in (("web", 3080), ("ssh", 3023), ("tunnel", 3024)):
        out.append(f"frontend {name}\n  bind {NET}.12:{port}\n  default_backend {name}_b\n"
                   f"backend {name}_b\n  balance roundrobin\n"
                   f"  server a {NET}.10:{port}\n  server b {NET}.11:{port}\n")
    return "".join(out)


class TrustSite(Site):
    """The five hosts: the root's remote_cluster record and the leaf's tunnel count."""

    def rc(self) -> dict | None:
        r = self.gatectl("root1", "get", "rc", "--format", "json")
        items = json.loads(r.stdout) if r.returncode == 0 else []
        return next((i for i in items if i["metadata"]["name"] == LEAF), None)

    def leaf_tunnels(self) -> int:
        tc = json.loads(self.ok("leaf1", "get", f"tc/{ROOT}", "--format", "json"))[0]
        return tc["status"]["tunnels"] if tc["status"]["connection"] == "online" else 0


@pytest.fixture(scope="module")
def site():
    requires_netns()
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy; make deps installs it)")
    hosts = [(name, f"{NET}.{last}", fw) for name, last, fw in (
        ("root1", 10, False), ("rootp2", 11, False), ("lb", 12, False), ("leaf1", 20, True), ("node1", 21, False))]
    with unix_user("visitor"), TrustSite.running("ghtrust0", "gatehouse-trust-netns-", hosts) as s:
        # The leaf site's inside network: its node may reach the leaf's auth; nothing else may.
        s.allow_inbound("leaf1", f"{NET}.21")
        _bring_up(s)
        yield s


def _bring_up(s: TrustSite) -> None:
    lb = f"{NET}.12"
    # Both root proxies behind the load balancer serve one web certificate, as they must for
    # `gate login --insecure`, which pins the certificate it sees (issue 13).
    from gatehouse import pki
    key_pem, cert_pem = pki.self_signed_web_cert(["localhost"], [lb, f"{NET}.10", f"{NET}.11"])
    for host in ("root1", "rootp2"):
        (s.net[host].etc_dir / "web.crt").write_text(cert_pem)
        (s.net[host].etc_dir / "web.key").write_text(key_pem)
    proxy_common = (f"  web_listen_addr: 0.0.0.0:3080\n  public_addr: {lb}:3080\n  ssh_public_addr: {lb}:3023\n"
                    f"  tunnel_public_addr: {lb}:3024\n  https_cert_file: /etc/gatehouse/web.crt\n"
                    f"  https_key_file: /etc/gatehouse/web.key\n")
    s.start("root1", f"gatehouse: {{nodename: proxy-a, data_dir: /var/lib/gatehouse}}\n"
                     f"auth_service: {{enabled: true, cluster_name: {ROOT}, listen_addr: 0.0.0.0:3025, "
                     f"login_rate: 600}}\nproxy_service:\n  enabled: true\n{proxy_common}"
                     f"ssh_service: {{enabled: true, labels: {{site: root}}}}\n")
    # proxy-b answers users at the load balancer's address: the token approves that name for its certificates.
    token = json.loads(s.ok("root1", "tokens", "add", "--type=proxy", f"--principals={lb}", "--format",
                            "json"))["token"]
    s.start("rootp2", f"gatehouse: {{nodename: proxy-b, data_dir: /var/lib/gatehouse, "
                      f"auth_servers: ['{NET}.10:3025'], join_token: {token}, ca_pin: '{s.ca_pin('root1')}'}}\n"
                      f"proxy_service:\n  enabled: true\n{proxy_common}")
    (s.net["lb"].etc_dir / "haproxy.cfg").write_text(HAPROXY.format(sections=_haproxy_sections()))
    log = open(os.path.join(s.tmp, "haproxy.log"), "ab")
    s.daemons["lb"] = s.net["lb"].popen(["haproxy", "-db", "-f", "/etc/gatehouse/haproxy.cfg"], stdout=log, stderr=log)
    log.close()
    s.net["lb"].wait_port(3080)
    s.start("leaf1", f"gatehouse: {{nodename: leafproxy, data_dir: /var/lib/gatehouse, insecure: true}}\n"
                     f"auth_service: {{enabled: true, cluster_name: {LEAF}, listen_addr: 0.0.0.0:3025}}\n"
                     f"proxy_service: {{enabled: true}}\n")
    node_token = json.loads(s.ok("leaf1", "tokens", "add", "--type=node", "--format", "json"))["token"]
    s.start("node1", f"gatehouse: {{nodename: node1, data_dir: /var/lib/gatehouse, "
                     f"auth_servers: ['{NET}.20:3025'], join_token: {node_token}, "
                     f"ca_pin: '{s.ca_pin('leaf1')}'}}\n"
                     f"ssh_service: {{enabled: true, labels: {{env: demo}}}}\n")
    s.ok("root1", "users", "add", "alice", "--roles=access", "--logins=visitor,root", "--password-stdin",
         input=PASSWORD + "\n")


def test_leaf_has_no_inbound_port(site):
    for port in (3025, 3080, 3024, 3023):
        assert not site.connects("root1", f"{NET}.20", port), f"root1 could connect to leaf1:{port}"


def test_trust_through_the_load_balancer_reaches_every_root_proxy(site):
    token = json.loads(site.ok("root1", "tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                               "--labels=env=demo", "--format", "json"))["token"]
    tc = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
          "spec": {"enabled": True, "token": token, "web_proxy_addr": f"{NET}.12:3080",
                   "role_map": [{"remote": "access", "local": ["access"]}]}}
    out = site.create("leaf1", "tc.yaml", [tc])
    assert f'trusted_cluster "{ROOT}" has been created' in out
    wait_until(lambda: (site.rc() or {}).get("status", {}).get("connection") == "online", 30, "leaf online at root")
    wait_until(lambda: site.leaf_tunnels() == 2, 45, "a tunnel to each of the two root proxies")
    assert "tunnel: connected to root root.example proxy proxy-a" in site.log("leaf1")
    assert "tunnel: connected to root root.example proxy proxy-b" in site.log("leaf1")


@pytest.mark.parametrize("proxy", [f"{NET}.12:3080", f"{NET}.10:3080", f"{NET}.11:3080"],
                         ids=["load-balancer", "proxy-a", "proxy-b"])
def test_user_on_any_proxy_reaches_the_leaf_node(site, proxy, tmp_path):
    home = str(tmp_path / "gate")
    r = site.gate_login(home, proxy, "alice", PASSWORD)
    assert r.returncode == 0, r.stderr
    clusters = site.run_gate(home, "clusters").stdout
    assert LEAF in clusters and "online" in clusters.split(LEAF)[1].splitlines()[0]
    assert "node1" in site.run_gate(home, "ls", f"--cluster={LEAF}").stdout
    for _ in range(3):  # several sessions: the load balancer spreads them over both proxies
        r = site.run_gate(home, "ssh", f"--cluster={LEAF}", "visitor@node1", "uname -n; id -un")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["node1", "visitor"]


def test_root_restart_tunnels_recover(site, tmp_path):
    site.stop("root1")
    site.start("root1")
    wait_until(lambda: (site.rc() or {}).get("status", {}).get("connection") == "online", 60, "online after restart")
    wait_until(lambda: site.leaf_tunnels() == 2, 60, "both tunnels after the root restart")
    home = str(tmp_path / "gate")
    r = site.gate_login(home, f"{NET}.12:3080", "alice", PASSWORD)
    assert r.returncode == 0, r.stderr
    r = site.run_gate(home, "ssh", f"--cluster={LEAF}", "visitor@node1", "true")
    assert r.returncode == 0, r.stderr


def _tc(token: str | None = None, enabled: bool = True) -> dict:
    spec = {"enabled": enabled, "web_proxy_addr": f"{NET}.12:3080",
            "role_map": [{"remote": "access", "local": ["access"]}]}
    if token:
        spec["token"] = token
    return {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT}, "spec": spec}


def _ssh_rc(site: TrustSite, home: str) -> int:
    return site.run_gate(home, "ssh", f"--cluster={LEAF}", "visitor@node1", "true").returncode


def test_disable_and_enable_across_hosts(site, tmp_path):
    home = str(tmp_path / "gate")
    assert site.gate_login(home, f"{NET}.12:3080", "alice", PASSWORD).returncode == 0
    assert _ssh_rc(site, home) == 0
    site.create("leaf1", "tc-off.yaml", [_tc(enabled=False)], "--force")
    wait_until(lambda: (site.rc() or {}).get("status", {}).get("connection") == "offline", 20, "leaf offline")
    # The certificate alice already holds stops working at once, whichever path it takes.
    r = site.run_gate(home, "ssh", f"--cluster={LEAF}", "visitor@node1", "true")
    assert r.returncode != 0 and ("offline" in r.stderr or "not found" in r.stderr), r.stderr
    site.create("leaf1", "tc-on.yaml", [_tc(enabled=True)], "--force")   # no token needed
    wait_until(lambda: site.leaf_tunnels() == 2, 45, "both tunnels after enable")
    wait_until(lambda: _ssh_rc(site, home) == 0, 20, "ssh after enable")


def test_remove_on_both_sides_and_rejoin(site, tmp_path):
    site.ok("leaf1", "rm", f"tc/{ROOT}")
    site.ok("root1", "rm", f"rc/{LEAF}")
    wait_until(lambda: site.rc() is None, 10, "the remote cluster gone at the root")
    assert json.loads(site.ok("leaf1", "get", "tc", "--format", "json")) == []
    home = str(tmp_path / "gate")
    assert site.gate_login(home, f"{NET}.12:3080", "alice", PASSWORD).returncode == 0
    assert LEAF not in site.run_gate(home, "clusters").stdout
    assert _ssh_rc(site, home) != 0
    token = json.loads(site.ok("root1", "tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                               "--format", "json"))["token"]
    site.create("leaf1", "tc-again.yaml", [_tc(token)])
    wait_until(lambda: site.leaf_tunnels() == 2, 45, "both tunnels after re-joining")
    # alice's profile was written while the leaf was gone; gate ssh fetches the leaf's host CA itself.
    wait_until(lambda: _ssh_rc(site, home) == 0, 20, "ssh after re-joining, without logging in again")


def test_leaf_offline_after_it_stops(site):
    site.stop("leaf1")
    wait_until(lambda: (site.rc() or {}).get("status", {}).get("connection") == "offline", 20, "leaf offline")
    site.start("leaf1")
    wait_until(lambda: (site.rc() or {}).get("status", {}).get("connection") == "online", 60, "leaf back online")
