"""`gate ssh` reaches nodes over the proxy subsystem `proxy:NODE:PORT@CLUSTER`.

Real cluster (conftest.py `cluster`), the shipped `gate`/`gatectl` CLIs and stock OpenSSH.
The subsystem route is an ordinary session channel on the proxy, so a role with
`permit_port_forwarding: false` (no `direct-tcpip` channels) still lets its users
reach nodes with `gate ssh`; stock `ssh -J` needs `direct-tcpip` and stays blocked.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import fails, ok, write_yaml

from gatehouse.wire import proxy_subsystem

PW = "route-password-1"
CLUSTER = "root.test"

NO_FORWARD_ROLE = """\
kind: role
version: v5
metadata: {name: no-forwarding}
spec:
  options:
    permit_port_forwarding: false
  allow:
    logins: [visitor]
    node_labels: {'*': '*'}
"""


def test_proxy_subsystem_names_node_port_and_cluster():
    assert proxy_subsystem("node1", 3022, "root.test") == "proxy:node1:3022@root.test"
    assert proxy_subsystem("node1.root.test", 3022, "root.test") == "proxy:node1:3022@root.test"
    assert proxy_subsystem("leafnode", 3022, "leaf.test") == "proxy:leafnode:3022@leaf.test"
    assert proxy_subsystem("::1", 3022, "root.test") == "proxy:[::1]:3022@root.test"


@pytest.fixture(scope="module")
def nofwd(cluster):
    """User nofwd, whose only role forbids port forwarding, logged in; its GATE_HOME."""
    out = ok(cluster.run_gatectl("create", write_yaml(os.path.join(cluster.tmp, "nofwd.yaml"), NO_FORWARD_ROLE)))
    assert 'role "no-forwarding" has been created' in out
    cluster.add_user("nofwd", "no-forwarding", "", PW)
    home = os.path.join(cluster.tmp, "gate-nofwd")
    ok(cluster.login("nofwd", PW, gate_home=home))
    return home


def test_gate_ssh_works_without_port_forwarding(cluster, nofwd):
    home = nofwd
    status = ok(cluster.run_gate("status", gate_home=home))
    assert "permit-pty" in status and "permit-port-forwarding" not in status, status

    assert ok(cluster.run_gate("ssh", "visitor@node1", "id -un", gate_home=home)) == "visitor\n"
    r = cluster.run_gate("ssh", "visitor@node1", "exit 3", gate_home=home)
    assert r.returncode == 3, r.stderr
    # --cluster goes into the subsystem; node1 and node1.CLUSTER name the same node.
    assert ok(cluster.run_gate("ssh", f"--cluster={CLUSTER}", f"visitor@node1.{CLUSTER}", "echo fine",
                               gate_home=home)) == "fine\n"
    starts = [e for e in cluster.audit("session.start") if e.get("user") == "nofwd"]
    assert starts and starts[-1]["login"] == "visitor"

    # Stock ssh -J opens a direct-tcpip channel at the proxy: the certificate forbids it.
    cfg = write_yaml(os.path.join(home, "ssh_config"), ok(cluster.run_gate("config", gate_home=home)))
    r = subprocess.run(["ssh", "-F", cfg, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                        f"visitor@node1.{CLUSTER}", "echo should-not-run"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "should-not-run" not in r.stdout


def test_gate_ssh_routing_errors(cluster, nofwd):
    home = nofwd
    fails(cluster.run_gate("ssh", "visitor@nope", "true", gate_home=home),
          f'node "nope" is not registered in cluster "{CLUSTER}"; list nodes with \'gate ls\'')
    out = fails(cluster.run_gate("ssh", "--cluster=nosuch.test", "visitor@node1", "true", gate_home=home),
                'cluster "nosuch.test" is not found; list clusters with \'gate clusters\'')
    assert "Traceback" not in out and out.count("\n") == 1
