"""End-to-end tests: one real cluster (auth + proxy + node) on loopback.

The `cluster` fixture (conftest.py) starts `gatehouse start` in a temp dir; these
tests drive it only through the shipped CLIs (`gatectl`, `gate`), stock OpenSSH
and the files the agent writes (audit log, profiles). Tests run in file order and
later ones rely on users created by earlier ones (alice), as an operator would.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import Cluster, Daemon, fails, free_port, ok, write_yaml

ALICE_PW = "alice-password-1"
CLUSTER = "root.test"


def ca_fingerprints(status_text: str) -> dict[str, str]:
    return dict(re.findall(r"^(user|host|tls) CA\s+(\S+)", status_text, re.M))


def create_file(c: Cluster, name: str, text: str) -> str:
    return write_yaml(os.path.join(c.tmp, name), text)


@pytest.fixture(scope="module")
def alice(cluster):
    """User alice (role access, logins root,visitor), logged in under cluster.gate_home."""
    if "alice" not in ok(cluster.run_gatectl("users", "ls")).split():
        cluster.add_user("alice", "access", "root,visitor", ALICE_PW)
    ok(cluster.login("alice", ALICE_PW))
    return "alice"


# ---------------------------------------------------------------- 1. gatectl basics
def test_gatectl_status_users_and_passwords(cluster):
    out = ok(cluster.run_gatectl("status"))
    assert f"Cluster  {CLUSTER}" in out
    fps = ca_fingerprints(out)
    assert set(fps) == {"user", "host", "tls"}, out
    assert fps["user"].startswith("SHA256:") and fps["host"].startswith("SHA256:")
    assert fps["tls"].startswith("sha256:")

    r = cluster.run_gatectl("users", "add", "bob", "--roles=access", "--logins=root,visitor",
                            "--password-stdin", input="bob-password-1\n")
    out = ok(r)
    assert 'User "bob" has been created' in out and "Password set." in out
    out = ok(cluster.run_gatectl("users", "add", "bob2", "--roles=access"))
    assert "Set a password with: gatectl users passwd bob2" in out
    fails(cluster.run_gatectl("users", "add", "bob", "--roles=access"), 'user "bob" already exists')

    out = ok(cluster.run_gatectl("users", "ls"))
    assert re.search(r"^bob\s+access\s+root,visitor$", out, re.M), out
    assert re.search(r"^bob2\s+access$", out, re.M), out

    fails(cluster.run_gatectl("users", "passwd", "bob", "--password-stdin", input="short\n"),
          "the password is too short; use at least 8 characters")
    # A bad password at creation leaves no half-made user behind.
    fails(cluster.run_gatectl("users", "add", "halfmade", "--roles=access", "--password-stdin", input="short\n"),
          "the password is too short; use at least 8 characters")
    fails(cluster.run_gatectl("users", "add", "halfmade", "--roles=access", "--password-stdin", input="\n"),
          "the password is empty")
    fails(cluster.run_gatectl("get", "user/halfmade"), 'user "halfmade" not found')
    fails(cluster.run_gatectl("users", "passwd", "nobody-here", "--password-stdin", input="long-enough-pw\n"),
          'user "nobody-here" not found')
    out = ok(cluster.run_gatectl("users", "passwd", "bob", "--password-stdin", input="bob-password-2\n"))
    assert 'Password for user "bob" has been set' in out
    home = os.path.join(cluster.tmp, "gate-bob")
    fails(cluster.login("bob", "bob-password-1", gate_home=home), "invalid user name or password")
    assert "Logged in as: bob" in ok(cluster.login("bob", "bob-password-2", gate_home=home))
    assert 'User "bob2" has been deleted' in ok(cluster.run_gatectl("users", "rm", "bob2"))
    assert "bob2" not in ok(cluster.run_gatectl("users", "ls"))
    # a user whose role does not exist is refused
    fails(cluster.run_gatectl("users", "add", "bob", "--roles=no-such-role", "--logins=visitor"),
          "role 'no-such-role' does not exist")


# ---------------------------------------------------------------- 2. gate login
def test_gate_login_status_and_profile(cluster, alice):
    out = ok(cluster.login("alice", ALICE_PW))
    assert "Logged in as: alice" in out

    out = ok(cluster.run_gate("status"))
    assert f"Profile URL:  https://{cluster.web_addr}" in out
    assert "Logged in as: alice" in out
    assert f"Cluster:      {CLUSTER}" in out
    assert "Roles:        access" in out
    assert "Logins:       root, visitor" in out
    assert re.search(r"Valid until:  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \[valid for \S+\]", out), out
    assert re.search(r"Extensions:   .*permit-pty", out), out

    pdir = cluster.profile_dir()
    for name in ("key", "key-cert.pub", "tls.key", "tls.crt", "profile.json", "known_hosts"):
        mode = stat.S_IMODE(os.stat(os.path.join(pdir, name)).st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    assert stat.S_IMODE(os.stat(pdir).st_mode) == 0o700


def test_login_failures_look_the_same(cluster, alice):
    home = os.path.join(cluster.tmp, "gate-bad")
    wrong = fails(cluster.login("alice", "not-the-password", gate_home=home), "invalid user name or password")
    unknown = fails(cluster.login("nosuchuser", "not-the-password", gate_home=home), "invalid user name or password")
    assert wrong.strip() == unknown.strip()
    assert not os.path.exists(os.path.join(home, "current"))


def test_login_refuses_self_signed_proxy_without_insecure(cluster, tmp_path):
    res = cluster.run_gate("login", f"--proxy={cluster.web_addr}", "--user=alice", "--password-stdin",
                           input="whatever-pass\n", gate_home=str(tmp_path / "gate"))
    assert res.returncode == 1
    assert "presented a certificate that cannot be verified (is it self-signed?)" in res.stderr
    assert "--insecure" in res.stderr


def test_login_rate_limit():
    """A cluster with the default login rate (5/min): a burst of bad passwords is cut off."""
    tmp = tempfile.mkdtemp(prefix="gatehouse-e2e-rate-")
    c = Cluster(tmp, ssh=False)
    try:
        c.start()
        first = fails(c.login("mallory", "wrong-password"), "invalid user name or password")
        assert "too many" not in first
        outs = [c.login("mallory", "wrong-password") for _ in range(7)]
        assert all(r.returncode != 0 for r in outs)
        limited = [r for r in outs if "too many login attempts" in r.stderr]
        assert limited, [r.stderr for r in outs]
        assert "wait" in limited[0].stderr
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- 3. ls and ssh
def test_gate_ls(cluster, alice):
    out = ok(cluster.run_gate("ls"))
    assert re.search(r"^node1\s+127\.0\.0\.1:%d\s+env=dev$" % cluster.node_port, out, re.M), out
    items = json.loads(ok(cluster.run_gate("ls", "--format", "json")))
    assert [n["metadata"]["name"] for n in items] == ["node1"]


def test_gate_ssh_command_and_exit_status(cluster, alice):
    r = cluster.run_gate("ssh", "visitor@node1", "id -un; exit 7")
    assert r.returncode == 7, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "visitor\n"
    r = cluster.run_gate("ssh", "root@node1", "id -u")
    assert ok(r) == "0\n"
    # stderr of the remote command reaches local stderr, not stdout
    r = cluster.run_gate("ssh", "visitor@node1", "echo out; echo err >&2")
    assert ok(r) == "out\n" and "err" in r.stderr


def test_gate_ssh_streams_stdin(cluster, alice):
    data = os.urandom(5 * 1024 * 1024)
    r = cluster.run_gate("ssh", "visitor@node1", "sha256sum", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()

    # stdin from a regular file (cannot be polled; fed from a thread)
    path = os.path.join(cluster.tmp, "stdin.bin")
    with open(path, "wb") as fh:
        fh.write(data[: 1024 * 1024])
    with open(path, "rb") as fh:
        r = subprocess.run([sys.executable, "-m", "gatehouse.cli.gate", "ssh", "visitor@node1", "wc -c"],
                           stdin=fh, capture_output=True, env=cluster.gate_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"1048576"


def test_gate_ssh_errors(cluster, alice):
    fails(cluster.run_gate("ssh", "daemon@node1", "true"), 'does not allow login "daemon"')
    fails(cluster.run_gate("ssh", "visitor@nope", "true"), 'node "nope" is not registered')

    cluster.add_user("ghost", "access", "ghost9", "ghost-password-1")
    home = os.path.join(cluster.tmp, "gate-ghost")
    ok(cluster.login("ghost", "ghost-password-1", gate_home=home))
    r = cluster.run_gate("ssh", "ghost9@node1", "true", gate_home=home)
    fails(r, 'login "ghost9" does not exist on node "node1"')


def test_gate_ssh_pty(cluster, alice):
    r = cluster.run_gate("ssh", "-t", "visitor@node1", "tty")
    assert r.returncode == 0, r.stderr
    assert "/dev/pts/" in r.stdout
    r = cluster.run_gate("ssh", "visitor@node1", "tty")
    assert "not a tty" in r.stdout


# ---------------------------------------------------------------- 4. roles, denials, audit
PROD_ROLE = """\
kind: role
version: v5
metadata: {name: prod-only}
spec:
  allow:
    logins: [visitor]
    node_labels: {env: prod}
"""

NO_ROOT_ROLE = """\
kind: role
version: v5
metadata: {name: no-root}
spec:
  deny:
    logins: [root]
"""


def test_node_labels_deny_and_audit(cluster, alice):
    out = ok(cluster.run_gatectl("create", create_file(cluster, "prod.yaml", PROD_ROLE)))
    assert 'role "prod-only" has been created' in out
    cluster.add_user("carol", "prod-only", "", "carol-password-1")
    home = os.path.join(cluster.tmp, "gate-carol")
    out = ok(cluster.login("carol", "carol-password-1", gate_home=home))
    assert "Logins:       visitor" in out
    # carol cannot see node1 (env=dev) ...
    ls = ok(cluster.run_gate("ls", gate_home=home))
    assert "node1" not in ls
    # ... the proxy does not route her to it: a node her roles hide is "not registered" (issue 13) ...
    r = cluster.run_gate("ssh", "visitor@node1", "echo should-not-run", gate_home=home)
    fails(r, 'node "node1" is not registered in cluster "root.test"')
    assert "should-not-run" not in r.stdout
    hidden = [e for e in cluster.audit("session.denied") if e.get("user") == "carol"]
    assert hidden and hidden[-1]["node"] == "node1" and hidden[-1]["success"] is False
    # ... and the node itself, reached directly with her certificate, refuses the session
    profile = cluster.profile_dir(home)
    r = subprocess.run(["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                        "-i", os.path.join(profile, "key"), "-o", f"CertificateFile={profile}/key-cert.pub",
                        "-o", f"UserKnownHostsFile={profile}/known_hosts", "-o", "HostKeyAlias=node1.root.test",
                        "-p", str(cluster.node_port), "visitor@127.0.0.1", "echo should-not-run"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    msg = fails(r, "access denied")
    assert 'node "node1"' in msg and "should-not-run" not in r.stdout

    denied = [e for e in cluster.audit("access.denied") if e.get("user") == "carol"]
    assert denied, "no access.denied audit entry for carol"
    assert denied[-1]["success"] is False
    assert denied[-1]["reason"].startswith("access denied")
    assert denied[-1]["reason"] in msg
    assert denied[-1]["login"] == "visitor" and denied[-1]["node"] == "node1"

    # an allowed session leaves start/end with the exit status; logins leave user.login
    assert cluster.run_gate("ssh", "visitor@node1", "id -un; exit 7").returncode == 7
    fails(cluster.login("alice", "not-the-password", gate_home=home), "invalid user name or password")
    starts = [e for e in cluster.audit("session.start") if e.get("user") == "alice" and e.get("login") == "visitor"]
    ends = [e for e in cluster.audit("session.end") if e.get("user") == "alice"]
    assert any(e.get("command") == "id -un; exit 7" for e in starts), starts
    assert any(e.get("exit_status") == 7 for e in ends), ends

    logins = cluster.audit("user.login")
    assert any(e["user"] == "alice" and e["success"] is True for e in logins)
    assert any(e["user"] == "alice" and e["success"] is False
               and e.get("error") == "invalid user name or password" for e in logins)
    assert any(e["user"] == "carol" and e["success"] is True for e in logins)


def test_deny_logins_rule(cluster):
    # a deny rule removes the login from the certificate at issue time ...
    ok(cluster.run_gatectl("create", create_file(cluster, "noroot.yaml", NO_ROOT_ROLE)))
    cluster.add_user("erin", "access,no-root", "root,visitor", "erin-password-1")
    home = os.path.join(cluster.tmp, "gate-erin")
    assert "Logins:       visitor\n" in ok(cluster.login("erin", "erin-password-1", gate_home=home))
    fails(cluster.run_gate("ssh", "root@node1", "true", gate_home=home), 'does not allow login "root"')

    # ... and a deny rule added after login is enforced by the node itself
    ok(cluster.run_gatectl("create", create_file(cluster, "later.yaml", NO_ROOT_ROLE.replace(
        "no-root", "later").replace("[root]", "[nobody-x]"))))
    cluster.add_user("dave", "access,later", "root,visitor", "dave-password-1")
    home = os.path.join(cluster.tmp, "gate-dave")
    assert "Logins:       root, visitor\n" in ok(cluster.login("dave", "dave-password-1", gate_home=home))
    assert ok(cluster.run_gate("ssh", "root@node1", "echo fine", gate_home=home)) == "fine\n"
    out = ok(cluster.run_gatectl("create", "-f", create_file(cluster, "later2.yaml", NO_ROOT_ROLE.replace(
        "no-root", "later"))))
    assert 'role "later" has been updated' in out
    deadline = time.monotonic() + 15
    while True:  # the node's access snapshot follows the change by long-poll
        r = cluster.run_gate("ssh", "root@node1", "echo should-not-run", gate_home=home)
        if r.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    fails(r, 'access denied: role "later" denies login "root" (deny.logins)')
    assert ok(cluster.run_gate("ssh", "visitor@node1", "echo fine", gate_home=home)) == "fine\n"


# ---------------------------------------------------------------- 5. certificates
def test_certificate_contents(cluster, alice):
    cert = os.path.join(cluster.profile_dir(), "key-cert.pub")
    r = subprocess.run(["ssh-keygen", "-L", "-f", cert], capture_output=True, text=True, timeout=30)
    out = ok(r)
    assert "Type: ssh-ed25519-cert-v01@openssh.com user certificate" in out
    assert 'Key ID: "alice"' in out
    principals = out.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["root", "visitor"]
    assert re.search(r"Valid: from \S+ to \S+", out), out
    assert "gatehouse-roles@gatehouse" in out
    assert "permit-pty" in out


# ---------------------------------------------------------------- 6. stock OpenSSH
def test_stock_openssh_via_gate_config(cluster, alice):
    out = ok(cluster.run_gate("config"))
    assert f"Host gatehouse-proxy-{CLUSTER}" in out and f"Host *.{CLUSTER}" in out
    assert f"ProxyJump gatehouse-proxy-{CLUSTER}" in out
    with open(os.path.join(cluster.profile_dir(), "known_hosts"), encoding="utf-8") as fh:
        assert fh.read().startswith("@cert-authority ")
    cfg = create_file(cluster, "ssh_config", out)
    r = subprocess.run(["ssh", "-F", cfg, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                        f"visitor@node1.{CLUSTER}", "echo via-openssh; id -un"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "via-openssh\nvisitor\n"


# ---------------------------------------------------------------- 7. resources
def test_resource_errors_and_updates(cluster):
    bad = create_file(cluster, "bad.yaml", "kind: role\nmetadata: {name: x\nspec: [\n")
    msg = fails(cluster.run_gatectl("create", bad), f"invalid YAML in {bad} at line 3")
    assert "Traceback" not in msg
    fails(cluster.run_gatectl("create", create_file(cluster, "kind.yaml", "kind: widget\nmetadata: {name: w}\n")),
          'unknown kind "widget"')
    fails(cluster.run_gatectl("create", create_file(
        cluster, "field.yaml", "kind: role\nmetadata: {name: typo}\nspec:\n  allow:\n    login: [visitor]\n")),
        'unknown field "spec.allow.login"')
    role = PROD_ROLE.replace("prod-only", "res-role")
    out = ok(cluster.run_gatectl("create", create_file(cluster, "res.yaml", role)))
    assert 'role "res-role" has been created' in out
    fails(cluster.run_gatectl("create", create_file(cluster, "res.yaml", role)),
          'role "res-role" already exists')

    updated = role.replace("logins: [visitor]", "logins: [visitor, root]")
    path = create_file(cluster, "res2.yaml", updated)
    assert 'role "res-role" has been updated' in ok(cluster.run_gatectl("create", "-f", path))
    items = json.loads(ok(cluster.run_gatectl("get", "role/res-role", "--format", "json")))
    items = items if isinstance(items, list) else [items]
    assert items[0]["kind"] == "role" and items[0]["metadata"]["name"] == "res-role"
    assert items[0]["spec"]["allow"]["logins"] == ["visitor", "root"]
    fails(cluster.run_gatectl("get", "role/missing-role"), 'role "missing-role" not found')

    cluster.add_user("frank", "res-role", "visitor", "frank-password-1")
    fails(cluster.run_gatectl("rm", "role/res-role"), 'role "res-role" is still assigned to frank')
    ok(cluster.run_gatectl("users", "rm", "frank"))
    assert 'role "res-role" has been deleted' in ok(cluster.run_gatectl("rm", "role/res-role"))
    fails(cluster.run_gatectl("get", "role/res-role"), 'role "res-role" not found')


# ---------------------------------------------------------------- 8. tokens and node join
def _node_config(c: Cluster, name: str, token: str, data_dir: str) -> str:
    port = free_port()
    return create_file(c, f"{name}.yaml", (
        f"gatehouse: {{nodename: {name}, data_dir: {data_dir}, auth_servers: ['{c.auth_addr}'], "
        f"join_token: '{token}', ca_pin: '{c.ca_pin}', log: {{severity: DEBUG}}}}\n"
        f"ssh_service: {{enabled: true, listen_addr: '127.0.0.1:{port}', labels: {{env: dev, role: extra}}}}\n"))


def test_tokens_and_node_join(cluster, alice):
    tok = json.loads(ok(cluster.run_gatectl("tokens", "add", "--type=node", "--ttl=5m", "--format", "json")))
    assert len(tok["token"]) >= 16 and tok["spec"]["roles"] == ["node"]
    name = tok["metadata"]["name"]
    out = ok(cluster.run_gatectl("tokens", "ls"))
    assert re.search(rf"^{name}\s+node\s", out, re.M), out

    # text output of tokens add; then remove it by name
    out = ok(cluster.run_gatectl("tokens", "add", "--type=node", "--ttl=5m"))
    m = re.search(r"Token name \(for 'gatectl tokens rm'\): (\S+);", out)
    assert m and "The invite token: " in out, out
    assert f"Token {m.group(1)} has been deleted" in ok(cluster.run_gatectl("tokens", "rm", m.group(1)))
    assert m.group(1) not in ok(cluster.run_gatectl("tokens", "ls"))
    fails(cluster.run_gatectl("tokens", "rm", m.group(1)), "token not found")

    # a node joins with the token, shows up in gate ls and accepts sessions
    data2 = os.path.join(cluster.tmp, "data2")
    node2 = Daemon(_node_config(cluster, "node2", tok["token"], data2), os.path.join(cluster.tmp, "node2.log"))
    cluster.extra.append(node2)
    node2.start()
    cluster.wait_node("node2")
    out = ok(cluster.run_gate("ls"))
    assert re.search(r"^node2\s+127\.0\.0\.1:\d+\s+env=dev,role=extra$", out, re.M), out
    assert ok(cluster.run_gate("ssh", "visitor@node2", "echo on-node2")) == "on-node2\n"
    node2.stop()
    assert os.path.exists(os.path.join(data2, "identity", "node", "identity.crt"))
    # the node-only process audits its sessions under the cluster it joined
    with open(os.path.join(data2, "log", "audit.jsonl"), encoding="utf-8") as fh:
        entries = [json.loads(line) for line in fh]
    assert [e for e in entries if e["event"] == "session.start"], entries
    assert {e["cluster_name"] for e in entries} == {CLUSTER}, entries

    # an unknown token: the node process exits non-zero and says why
    data3 = os.path.join(cluster.tmp, "data3")
    node3 = Daemon(_node_config(cluster, "node3", "0123456789abcdef-not-a-token", data3),
                   os.path.join(cluster.tmp, "node3.log"))
    cluster.extra.append(node3)
    node3.start(wait=False)
    assert node3.wait_exit() != 0
    assert "join token is invalid or has expired" in node3.log_text()

    # a deleted token is refused the same way
    ok(cluster.run_gatectl("tokens", "rm", name))
    data4 = os.path.join(cluster.tmp, "data4")
    node4 = Daemon(_node_config(cluster, "node4", tok["token"], data4), os.path.join(cluster.tmp, "node4.log"))
    cluster.extra.append(node4)
    node4.start(wait=False)
    assert node4.wait_exit() != 0
    assert "join token is invalid or has expired" in node4.log_text()


def test_gate_ssh_fetches_host_cas_it_lacks(cluster, alice):
    """A profile missing a host CA (the cluster rotated it, or a leaf joined after login) heals itself."""
    known_hosts = os.path.join(cluster.profile_dir(), "known_hosts")
    with open(known_hosts, encoding="utf-8") as fh:
        complete = fh.read()
    try:
        with open(known_hosts, "w", encoding="utf-8") as fh:
            fh.write("# emptied by the test\n")
        assert ok(cluster.run_gate("ssh", "visitor@node1", "echo healed")) == "healed\n"
        with open(known_hosts, encoding="utf-8") as fh:
            assert fh.read() == complete
    finally:
        with open(known_hosts, "w", encoding="utf-8") as fh:
            fh.write(complete)


@pytest.mark.skipif(not os.path.exists("/usr/sbin/sshd"), reason="needs OpenSSH's sshd")
def test_impostor_at_a_node_address_is_refused(cluster, alice):
    """A registered node's address answered by another cluster's SSH server: refused, after one refresh."""
    tok = json.loads(ok(cluster.run_gatectl("tokens", "add", "--type=node", "--ttl=5m", "--format", "json")))
    cfg = _node_config(cluster, "impostor", tok["token"], os.path.join(cluster.tmp, "data-impostor"))
    node = Daemon(cfg, os.path.join(cluster.tmp, "impostor.log"))
    cluster.extra.append(node)
    node.start()
    cluster.wait_node("impostor")
    node.stop()   # its registration stays until it expires; its port is free again
    port = re.search(r"listen_addr: '127\.0\.0\.1:(\d+)'", open(cfg, encoding="utf-8").read()).group(1)
    # Its host certificate names the node, signed by a CA that is not this cluster's.
    key, other_ca = os.path.join(cluster.tmp, "impostor_host_key"), os.path.join(cluster.tmp, "other_host_ca")
    for path in (key, other_ca):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", other_ca, "-h", "-I", "impostor", "-n", f"impostor.{CLUSTER}",
                    key + ".pub"], check=True)
    sshd_cfg = create_file(cluster, "impostor_sshd_config", (
        f"ListenAddress 127.0.0.1:{port}\nHostKey {key}\nHostCertificate {key}-cert.pub\n"
        "AuthorizedKeysFile none\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nPidFile none\n"))
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", sshd_cfg], stderr=subprocess.PIPE, text=True)
    try:
        assert "Server listening" in sshd.stderr.readline()
        known_hosts = os.path.join(cluster.profile_dir(), "known_hosts")
        before = open(known_hosts, encoding="utf-8").read()
        err = fails(cluster.run_gate("ssh", "visitor@impostor", "true"),
                    f'node "impostor" presented a host key not signed by cluster "{CLUSTER}"')
        assert "the machine answering at the node's address is not that node" in err, err
        assert open(known_hosts, encoding="utf-8").read() == before  # the refresh found nothing to add
    finally:
        sshd.terminate()
        sshd.wait(10)


# ---------------------------------------------------------------- 10. untrusted / expired certificates
def _forged_home(cluster: Cluster, name: str, valid_before: int) -> str:
    from gatehouse import pki
    home = os.path.join(cluster.tmp, name)
    shutil.copytree(cluster.gate_home, home)
    pdir = cluster.profile_dir(home)
    with open(os.path.join(pdir, "key"), encoding="utf-8") as fh:
        public = pki.ssh_public_from_private(fh.read())
    rogue = pki.new_ssh_key(comment="rogue CA")
    now = int(time.time())
    cert = pki.sign_ssh_cert(rogue.private_openssh, public, cert_type="user", key_id="alice",
                             principals=["root", "visitor"], valid_after=now - 120, valid_before=valid_before,
                             extensions=pki.user_cert_extensions(["access"], {"logins": ["root", "visitor"]},
                                                                 CLUSTER))
    pki.write_secret(os.path.join(pdir, "key-cert.pub"), cert + "\n")
    return home


def test_certificate_from_unknown_ca_is_refused(cluster, alice):
    home = _forged_home(cluster, "gate-rogue", int(time.time()) + 3600)
    r = cluster.run_gate("ssh", "visitor@node1", "echo should-not-run", gate_home=home)
    fails(r, "does not trust")
    assert "should-not-run" not in r.stdout


def test_expired_certificate_is_refused_locally(cluster, alice):
    home = _forged_home(cluster, "gate-expired", int(time.time()) - 60)
    fails(cluster.run_gate("ssh", "visitor@node1", "true", gate_home=home), "expired at")
    assert "[EXPIRED]" in ok(cluster.run_gate("status", gate_home=home))


# ---------------------------------------------------------------- 9. restart keeps state
def test_restart_keeps_state(cluster, alice):
    before = ca_fingerprints(ok(cluster.run_gatectl("status")))
    ok(cluster.run_gatectl("create", "-f", create_file(cluster, "keep.yaml", PROD_ROLE.replace("prod-only", "kept"))))
    cluster.restart()
    after = ca_fingerprints(ok(cluster.run_gatectl("status")))
    assert before == after and len(after) == 3
    # the certificate from before the restart still works
    assert ok(cluster.run_gate("ssh", "visitor@node1", "echo still-here")) == "still-here\n"
    # and so does a fresh password login
    home = os.path.join(cluster.tmp, "gate-after-restart")
    ok(cluster.login("alice", ALICE_PW, gate_home=home))
    assert ok(cluster.run_gate("ssh", "visitor@node1", "id -un", gate_home=home)) == "visitor\n"
    assert "name: kept" in ok(cluster.run_gatectl("get", "roles"))
    assert re.search(r"^alice\s+access\s+root,visitor$", ok(cluster.run_gatectl("users", "ls")), re.M)


def test_stopping_the_daemon_ends_running_sessions_and_audits_them(cluster, alice):
    """SIGTERM with a session running: the command gets SIGHUP and session.end is still written."""
    command = f"sleep {100000 + os.getpid()}"   # unique, so pgrep finds only this session's command
    running = lambda: subprocess.run(["pgrep", "-f", f"^{command}$"], capture_output=True).returncode == 0  # noqa: E731
    ends_before = len(cluster.audit("session.end"))
    client = subprocess.Popen([sys.executable, "-m", "gatehouse.cli.gate", "ssh", "visitor@node1", command],
                              env=cluster.gate_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stopped = False
    try:
        deadline = time.monotonic() + 20
        while not running():
            assert time.monotonic() < deadline and client.poll() is None, "the session did not start"
            time.sleep(0.1)
        cluster.daemon.stop()
        stopped = True
        assert not running(), "the session's command outlived the daemon"
        ends = cluster.audit("session.end")[ends_before:]
        assert [e for e in ends if e["login"] == "visitor" and e.get("exit_signal") == "HUP"], ends
        log = cluster.log_text()
        assert "Traceback" not in log and "closed file" not in log, log[-2000:]
    finally:
        client.kill()
        client.wait()
        if stopped:
            cluster.daemon.start()
            cluster.wait_node(cluster.node_name)
