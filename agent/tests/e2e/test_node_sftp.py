"""sftp on nodes, end to end: stock `sftp`, `scp` and Ansible through the proxy with `gate config`.

The node serves the `sftp` subsystem by running the system's sftp-server as the
requested Unix login, so files are read and written with exactly that login's rights.
One real cluster (conftest.py `cluster`), the shipped CLIs and stock OpenSSH clients.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys

import pytest

from conftest import Cluster, fails, ok, write_yaml

from gatehouse.node.session import find_sftp_server

PW = "sftp-password-1"
CLUSTER = "root.test"
NODE = f"node1.{CLUSTER}"

pytestmark = pytest.mark.skipif(not shutil.which("sftp") or find_sftp_server() is None,
                                reason="needs the OpenSSH sftp client and sftp-server")

PROD_ROLE = """\
kind: role
version: v5
metadata: {name: sftp-prod-only}
spec:
  allow:
    logins: [visitor]
    node_labels: {env: prod}
"""


def ssh_config(c: Cluster, gate_home: str) -> str:
    """`gate config` for the profile in gate_home, written next to it."""
    text = ok(c.run_gate("config", gate_home=gate_home))
    return write_yaml(os.path.join(gate_home, "ssh_config"), text)


def run_sftp(cfg: str, target: str, batch: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sftp", "-F", cfg, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-b", "-",
                           target], input=batch, capture_output=True, text=True, timeout=60, cwd=cwd)


def login_user(c: Cluster, name: str, roles: str, logins: str) -> tuple[str, str]:
    """Create `name`, log it in under its own GATE_HOME; (gate_home, ssh config path)."""
    if name not in ok(c.run_gatectl("users", "ls")).split():
        c.add_user(name, roles, logins, PW)
    home = os.path.join(c.tmp, f"gate-{name}")
    ok(c.login(name, PW, gate_home=home))
    return home, ssh_config(c, home)


@pytest.fixture(scope="module")
def alice(cluster):
    return login_user(cluster, "alice", "access", "root,visitor")


def visitor_home() -> str:
    return pwd.getpwnam("visitor").pw_dir


def test_sftp_batch_through_the_proxy(cluster, alice, tmp_path):
    _, cfg = alice
    src = tmp_path / "upload.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    remote = "gh-sftp-upload.bin"
    try:
        out = ok(run_sftp(cfg, f"visitor@{NODE}",
                          f"put {src} {remote}\nls -l {remote}\nget {remote} back.bin\npwd\n",
                          cwd=str(tmp_path)))
        assert remote in out
        assert f"Remote working directory: {visitor_home()}" in out
        assert (tmp_path / "back.bin").read_bytes() == data
        # Written by sftp-server running as the login, not as the agent.
        st = os.stat(os.path.join(visitor_home(), remote))
        assert st.st_uid == pwd.getpwnam("visitor").pw_uid and st.st_size == len(data)
    finally:
        try:
            os.unlink(os.path.join(visitor_home(), remote))
        except FileNotFoundError:
            pass

    starts = [e for e in cluster.audit("session.start") if e.get("user") == "alice" and e.get("subsystem") == "sftp"]
    ends = [e for e in cluster.audit("session.end") if e.get("user") == "alice" and e.get("subsystem") == "sftp"]
    assert starts and starts[-1]["login"] == "visitor" and starts[-1]["node"] == "node1"
    assert starts[-1].get("command") is None
    assert ends and ends[-1]["exit_status"] == 0


def test_sftp_respects_the_logins_file_permissions(cluster, alice, tmp_path):
    _, cfg = alice
    # visitor cannot write into /root; the refusal is sftp-server's own, as the login.
    src = tmp_path / "x.txt"
    src.write_text("x\n")
    r = run_sftp(cfg, f"visitor@{NODE}", f"put {src} /root/gh-sftp-should-not-exist\n")
    fails(r, "Permission denied")
    assert not os.path.exists("/root/gh-sftp-should-not-exist")


def test_scp_over_sftp(cluster, alice, tmp_path):
    _, cfg = alice
    src = tmp_path / "scp.txt"
    src.write_text("copied with scp -s\n")
    dest = os.path.join(visitor_home(), "gh-scp.txt")
    try:
        ok(subprocess.run(["scp", "-s", "-F", cfg, "-o", "BatchMode=yes", str(src), f"visitor@{NODE}:gh-scp.txt"],
                          capture_output=True, text=True, timeout=60))
        with open(dest, encoding="utf-8") as fh:
            assert fh.read() == "copied with scp -s\n"
        ok(subprocess.run(["scp", "-s", "-F", cfg, "-o", "BatchMode=yes", f"visitor@{NODE}:gh-scp.txt",
                           str(tmp_path / "scp-back.txt")], capture_output=True, text=True, timeout=60))
        assert (tmp_path / "scp-back.txt").read_text() == "copied with scp -s\n"
    finally:
        if os.path.exists(dest):
            os.unlink(dest)


def test_sftp_login_not_in_certificate(cluster, alice):
    _, cfg = alice
    r = run_sftp(cfg, f"daemon@{NODE}", "pwd\n")
    fails(r, 'your certificate does not allow login "daemon"; allowed logins are [root, visitor]')


# Lets its users see every node (with a login of its own), so the proxy routes them there and the
# node decides: since issue 13 the proxy does not route users to nodes their roles hide.
SEE_ALL_ROLE = """\
kind: role
version: v5
metadata: {name: sftp-see-all}
spec:
  allow:
    logins: [sftp-other-login]
    node_labels: {'*': '*'}
"""


def test_sftp_denied_by_role(cluster):
    ok(cluster.run_gatectl("create", write_yaml(os.path.join(cluster.tmp, "sftp-prod.yaml"), PROD_ROLE)))
    ok(cluster.run_gatectl("create", write_yaml(os.path.join(cluster.tmp, "sftp-see.yaml"), SEE_ALL_ROLE)))
    _, cfg = login_user(cluster, "sftpcarol", "sftp-prod-only,sftp-see-all", "")
    r = run_sftp(cfg, f"visitor@{NODE}", "pwd\n")
    out = fails(r, "access denied")
    assert 'node "node1"' in out and "administratively prohibited" in out
    denied = [e for e in cluster.audit("access.denied") if e.get("user") == "sftpcarol"]
    assert denied and denied[-1]["login"] == "visitor"
    assert not [e for e in cluster.audit("session.start") if e.get("user") == "sftpcarol"]


def test_sftp_login_missing_on_node(cluster):
    _, cfg = login_user(cluster, "sftpghost", "access", "ghsftp9")
    r = run_sftp(cfg, f"ghsftp9@{NODE}", "pwd\n")
    fails(r, 'gatehouse: login "ghsftp9" does not exist on node "node1"')
    ends = [e for e in cluster.audit("session.end") if e.get("user") == "sftpghost"]
    assert ends and ends[-1]["exit_status"] == 1 and ends[-1]["subsystem"] == "sftp"
    assert ends[-1]["error"].startswith('login "ghsftp9" does not exist')


def test_ansible_copies_files_over_sftp(cluster, alice, tmp_path):
    """Ansible's ssh connection with its sftp transfer, configured only by `gate config`."""
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    if not os.path.exists(ansible):
        pytest.skip("ansible is not installed in this environment")
    _, cfg = alice
    src = tmp_path / "ansible.txt"
    src.write_text("copied by ansible\n")
    dest = os.path.join(visitor_home(), "gh-ansible.txt")
    inventory = write_yaml(str(tmp_path / "inventory.ini"),
                           f"{NODE} ansible_user=visitor ansible_python_interpreter=/usr/bin/python3 "
                           f"ansible_ssh_common_args='-F {cfg}' ansible_ssh_transfer_method=sftp "
                           f"ansible_ssh_pipelining=false\n")
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
               ANSIBLE_REMOTE_TMP="~/.ansible/tmp", ANSIBLE_NOCOLOR="1", ANSIBLE_SSH_RETRIES="0")
    env.pop("ANSIBLE_CONFIG", None)
    try:
        r = subprocess.run([ansible, "-i", inventory, NODE, "-m", "copy", "-a", f"src={src} dest={dest} mode=0640",
                            "-o", "-vvv"],
                           capture_output=True, text=True, timeout=180, env=env, cwd=str(tmp_path))
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        assert '"changed": true' in r.stdout or "CHANGED" in r.stdout, r.stdout[-2000:]
        assert "sftp" in r.stdout + r.stderr  # the transfer went over sftp
        with open(dest, encoding="utf-8") as fh:
            assert fh.read() == "copied by ansible\n"
        assert os.stat(dest).st_uid == pwd.getpwnam("visitor").pw_uid
    finally:
        if os.path.exists(dest):
            os.unlink(dest)
    sftp_sessions = [e for e in cluster.audit("session.start") if e.get("subsystem") == "sftp"]
    assert json.dumps(sftp_sessions)  # recorded like any other session
