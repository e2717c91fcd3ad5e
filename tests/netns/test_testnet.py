"""Tests of the test-host infrastructure itself (tests/netns/testnet.{sh,py}).

They create real network namespaces, so they need root; they skip otherwise.
They use their own bridge and subnet (ghtest0, 198.18.1.0/24) and host names
starting with "t-", so they do not disturb molecule hosts on ghbr0.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from testnet import (
    RUN_ROOT,
    SCRIPT,
    HostCommandError,
    TestnetError,
    TestNetwork,
    requires_netns,
)

BRIDGE = "ghtest0"
NET = "198.18.1"

SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
while True:
    c, peer = s.accept()
    c.sendall(("hello from " + socket.gethostname() + " to " + peer[0]).encode())
    c.close()
"""

CLIENT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(s.recv(100).decode())
except OSError as e:
    print(type(e).__name__, e.errno)
    sys.exit(3)
"""


def connect(host, addr, port, timeout=1.0):
    """TCP connect from inside HOST; (ok, output)."""
    proc = host.run([sys.executable, "-c", CLIENT, addr, str(port), str(timeout)], check=False)
    return proc.returncode == 0, proc.stdout.strip()


def connect_from_root(addr, port, timeout=1.0):
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            return True, s.recv(100).decode()
    except OSError as e:
        return False, f"{type(e).__name__} {e.errno}"


def serve(host, port):
    proc = host.popen([sys.executable, "-c", SERVER, str(port)])
    host.wait_port(port, timeout=10)
    return proc


def alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def sh(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, check=False)


@pytest.fixture
def net(tmp_path):
    requires_netns()
    with TestNetwork(bridge=BRIDGE, state_root=tmp_path / "hosts") as network:
        yield network


@pytest.fixture
def sshkey(tmp_path):
    if not (shutil.which("ssh") and shutil.which("ssh-keygen") and os.path.exists("/usr/sbin/sshd")):
        pytest.skip("openssh-client/openssh-server are not installed")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_hosts_talk_over_the_bridge(net):
    t0 = time.monotonic()
    a = net.add_host("t-a", f"{NET}.10")
    elapsed = time.monotonic() - t0
    b = net.add_host("t-b", f"{NET}.11")
    assert elapsed < 3, f"a host took {elapsed:.2f}s to come up"

    serve(b, 5000)
    serve(a, 5001)
    assert connect(a, b.ip, 5000) == (True, f"hello from t-b to {a.ip}")
    assert connect(b, a.ip, 5001) == (True, f"hello from t-a to {b.ip}")
    # the root namespace reaches hosts through the bridge address
    assert connect_from_root(a.ip, 5001) == (True, f"hello from t-a to {NET}.1")

    # each host has its own hostname, interface and address
    assert a.run(["hostname"]).stdout.strip() == "t-a"
    assert f"{a.ip}/24" in a.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    # no default route unless asked: only the /24 (and loopback) is reachable
    routes = a.run(["ip", "route"]).stdout
    assert "default" not in routes
    ok, out = connect(a, "192.0.2.77", 9, timeout=1)
    assert not ok and "101" in out  # ENETUNREACH: nothing even leaves the host

    # safety net in the root namespace
    routes = subprocess.run(["ip", "route", "show", "198.18.0.0/15"], capture_output=True, text=True, check=False)
    assert "blackhole 198.18.0.0/15" in routes.stdout


def test_default_route_only_when_asked(net):
    a = net.add_host("t-a", f"{NET}.10", default_route=True)
    assert f"default via {NET}.1" in a.run(["ip", "route"]).stdout


def test_firewall_inbound_drop(net):
    leaf = net.add_host("t-leaf", f"{NET}.20", firewall_inbound_drop=True)
    other = net.add_host("t-root", f"{NET}.21")
    serve(leaf, 6000)  # wait_port connects from inside the leaf: loopback path allowed
    serve(other, 6001)

    ok, out = connect(other, leaf.ip, 6000, timeout=1)
    assert not ok and out.startswith("TimeoutError"), out  # dropped, not refused
    assert connect_from_root(leaf.ip, 6000)[0] is False
    # ... but the leaf connects out fine (replies are ESTABLISHED)
    assert connect(leaf, other.ip, 6001) == (True, f"hello from t-root to {leaf.ip}")
    assert connect(leaf, "127.0.0.1", 6000)[0] is True


def test_bind_mounts_are_private(net, tmp_path):
    a = net.add_host("t-a", f"{NET}.10")
    b = net.add_host("t-b", f"{NET}.11")
    name = f"x-{uuid.uuid4().hex}"
    a.run(f"echo from-a > /var/lib/gatehouse/{name}")

    assert (a.lib_dir / name).read_text() == "from-a\n"  # lands in the host's own dir
    assert b.run(["test", "-e", f"/var/lib/gatehouse/{name}"], check=False).returncode == 1
    assert not Path(f"/var/lib/gatehouse/{name}").exists()  # root namespace
    assert not (b.lib_dir / name).exists()

    for host in (a, b):
        (host.etc_dir / "marker").write_text(f"etc of {host.name}\n")
        host.run(f"echo run > /run/gatehouse/{name}")
    assert a.run(["cat", "/etc/gatehouse/marker"]).stdout == "etc of t-a\n"
    assert b.run(["cat", "/etc/gatehouse/marker"]).stdout == "etc of t-b\n"
    assert (b.run_dir / name).exists() and not Path(f"/run/gatehouse/{name}").exists()

    # a long-running process keeps seeing the host's mounts
    out = tmp_path / "daemon.out"
    with out.open("w") as f:
        proc = a.popen(["sh", "-c", "sleep 0.3; cat /etc/gatehouse/marker"], stdout=f)
        assert proc.wait(timeout=10) == 0
    assert out.read_text() == "etc of t-a\n"
    # and the mounts never show up in the root namespace's mount table
    assert str(a.state_dir) not in Path("/proc/self/mountinfo").read_text()


def test_run_popen_details(net, tmp_path):
    a = net.add_host("t-a", f"{NET}.10")
    assert a.run(["pwd"], cwd=tmp_path).stdout.strip() == str(tmp_path)
    assert a.run("echo $GH_TEST_VAR", env={"GH_TEST_VAR": "v1"}).stdout == "v1\n"
    assert a.run(["cat"], input="piped").stdout == "piped"
    assert a.run(["cat"], input=b"\x00bytes").stdout == b"\x00bytes"
    with pytest.raises(HostCommandError, match="boom"):
        a.run("echo boom >&2; exit 7")
    assert a.run("exit 7", check=False).returncode == 7
    with pytest.raises(subprocess.TimeoutExpired):
        a.run(["sleep", "30"], timeout=0.5)

    proc = a.popen(["sleep", "30"])
    time.sleep(0.2)
    # the Popen pid is the command itself (exec all the way), inside the host's netns
    assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"
    assert os.readlink(f"/proc/{proc.pid}/ns/net") == os.readlink(f"/proc/{a.anchor_pid}/ns/net")
    assert os.readlink(f"/proc/{proc.pid}/ns/mnt") == os.readlink(f"/proc/{a.anchor_pid}/ns/mnt")
    proc.terminate()
    assert proc.wait(timeout=5) == -15

    with pytest.raises(TimeoutError):
        a.wait_port(5999, timeout=0.5)


def test_kill_all_keeps_the_host(net):
    a = net.add_host("t-a", f"{NET}.10")
    proc = a.popen(["sleep", "300"])
    a.run("setsid sleep 301 </dev/null >/dev/null 2>&1 & echo $! > /run/gatehouse/bg.pid")
    bg = int((a.run_dir / "bg.pid").read_text())
    anchor = a.anchor_pid
    assert alive(bg) and alive(proc.pid)
    a.kill_all()
    assert proc.returncode is not None and not alive(bg)
    assert alive(anchor)
    assert a.run(["cat", "/proc/self/comm"]).stdout == "cat\n"


def test_sshd_gives_a_shell_inside_the_host(net, sshkey):
    a = net.add_host("t-a", f"{NET}.10", sshd_port=2222, authorized_keys=f"{sshkey}.pub")
    b = net.add_host("t-b", f"{NET}.11", sshd_port=22, authorized_keys=Path(f"{sshkey}.pub").read_text())
    for host in (a, b):
        (host.etc_dir / "marker").write_text(f"marker of {host.name}\n")

    # exactly what molecule's controller does
    out = subprocess.run(
        ["ssh", "-i", str(sshkey), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-p", "2222", f"root@{a.ip}", "cat /etc/gatehouse/marker"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "marker of t-a\n"

    out = subprocess.run(b.ssh_argv(sshkey, "cat /etc/gatehouse/marker; hostname; ip -4 -o addr show dev eth0"),
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["marker of t-b", "t-b"] and f"{b.ip}/24" in lines[2]
    # the session writes into the host's private state
    subprocess.run(b.ssh_argv(sshkey, "touch /var/lib/gatehouse/via-ssh"), check=True, timeout=30)
    assert (b.lib_dir / "via-ssh").exists() and not (a.lib_dir / "via-ssh").exists()

    # another key is refused
    other = sshkey.parent / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    assert subprocess.run(a.ssh_argv(other, "true"), capture_output=True, timeout=30, check=False).returncode == 255


def test_sshd_behind_inbound_drop_firewall(net, sshkey):
    """Management ssh from the root namespace still works; nothing else gets in."""
    leaf = net.add_host("t-leaf", f"{NET}.20", firewall_inbound_drop=True, sshd_port=22,
                        authorized_keys=f"{sshkey}.pub")  # fmt: skip
    other = net.add_host("t-other", f"{NET}.21")
    out = subprocess.run(leaf.ssh_argv(sshkey, "hostname"), capture_output=True, text=True, timeout=30, check=False)
    assert out.stdout == "t-leaf\n", out.stderr
    ok, out = connect(other, leaf.ip, 22, timeout=1)
    assert not ok and out.startswith("TimeoutError"), out


def test_teardown_leaves_nothing_behind(tmp_path, sshkey):
    requires_netns()
    bridge_existed = Path(f"/sys/class/net/{BRIDGE}").exists()
    with TestNetwork(bridge=BRIDGE, state_root=tmp_path / "hosts") as net:
        a = net.add_host("t-a", f"{NET}.10", sshd_port=22, authorized_keys=f"{sshkey}.pub")
        b = net.add_host("t-b", f"{NET}.11", firewall_inbound_drop=True)
        pids = [a.anchor_pid, b.anchor_pid, int((a.sshd_dir / "sshd.pid").read_text())]
        pids.append(a.popen(["sleep", "300"]).pid)
        a.run("setsid sleep 302 </dev/null >/dev/null 2>&1 & echo $! > /run/gatehouse/bg.pid")
        pids.append(int((a.run_dir / "bg.pid").read_text()))
        b.run("nohup sleep 303 </dev/null >/dev/null 2>&1 & echo $! > /run/gatehouse/bg.pid")
        pids.append(int((b.run_dir / "bg.pid").read_text()))
        assert all(alive(p) for p in pids)
        veths = {"ghv-t-a", "ghv-t-b"}
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
        assert all(v in links for v in veths)

    assert not [p for p in pids if alive(p)]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split()
    assert "gh-t-a" not in netns and "gh-t-b" not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    assert not [v for v in veths if v in links]
    if not bridge_existed:
        assert f" {BRIDGE}:" not in links
    assert not (RUN_ROOT / "t-a").exists() and not (RUN_ROOT / "t-b").exists()
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


def test_teardown_after_a_failing_test(tmp_path):
    requires_netns()
    with (
        pytest.raises(RuntimeError, match="test failed"),
        TestNetwork(bridge=BRIDGE, state_root=tmp_path / "hosts") as net,
    ):
        anchor = net.add_host("t-a", f"{NET}.10").anchor_pid
        raise RuntimeError("test failed")
    assert not alive(anchor)
    assert "gh-t-a" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout


def test_leftover_from_a_crashed_run_is_replaced(tmp_path):
    requires_netns()
    state = tmp_path / "hosts"
    # a crashed run: the host is up, nobody will tear it down
    r = sh("up", "t-a", f"{NET}.10", "--bridge", BRIDGE, "--state-root", str(state))
    assert r.returncode == 0, r.stderr
    old_anchor = int((RUN_ROOT / "t-a" / "anchor.pid").read_text())
    with TestNetwork(bridge=BRIDGE, state_root=state) as net:
        a = net.add_host("t-a", f"{NET}.10")
        assert a.anchor_pid != old_anchor and not alive(old_anchor)
        assert a.run(["hostname"]).stdout == "t-a\n"
    assert not alive(a.anchor_pid)


def test_cli_is_idempotent(tmp_path):
    requires_netns()
    state = str(tmp_path / "hosts")
    up = ["up", "t-cli", f"{NET}.30", "--bridge", BRIDGE, "--state-root", state]
    try:
        r = sh(*up)
        assert r.returncode == 0 and "t-cli: created" in r.stdout, r.stderr
        anchor = (RUN_ROOT / "t-cli" / "anchor.pid").read_text()
        r = sh(*up)
        assert r.returncode == 0 and "t-cli: already up" in r.stdout, r.stderr
        assert (RUN_ROOT / "t-cli" / "anchor.pid").read_text() == anchor

        r = sh("status", "t-cli")
        assert r.returncode == 0 and re.search(rf"t-cli\s+{NET}\.30\s+{BRIDGE}\s+\d+\s+up", r.stdout), r.stdout
        assert sh("exec", "t-cli", "--", "cat", "/proc/sys/kernel/hostname").stdout == "t-cli\n"

        # a changed spec rebuilds the host
        r = sh(*up, "--firewall-inbound-drop")
        assert r.returncode == 0 and "t-cli: created" in r.stdout, r.stderr
        assert (RUN_ROOT / "t-cli" / "anchor.pid").read_text() != anchor

        # a broken host (anchor killed) is detected and rebuilt
        os.kill(int((RUN_ROOT / "t-cli" / "anchor.pid").read_text()), 9)
        time.sleep(0.1)
        assert sh("status", "t-cli").returncode == 1
        assert sh("exec", "t-cli", "--", "true").returncode != 0
        r = sh(*up, "--firewall-inbound-drop")
        assert "t-cli: created" in r.stdout, r.stderr

        # an address another host holds is refused
        r = sh("up", "t-cli2", f"{NET}.30", "--bridge", BRIDGE, "--state-root", state)
        assert r.returncode != 0 and "already used by test host t-cli" in r.stderr
    finally:
        r = sh("down", "t-cli")
    assert r.returncode == 0 and "t-cli: down" in r.stdout, r.stderr
    r = sh("down", "t-cli")
    assert r.returncode == 0 and "t-cli: not up" in r.stdout


@pytest.mark.parametrize(
    "ip, message",
    [
        ("10.0.0.5", "outside 198.18.0.0/15"),
        ("198.18.1.1", "last octet must be 2..254"),
        ("198.18.1.300", "bad IPv4 address"),
        ("nonsense", "bad IPv4 address"),
    ],
)
def test_addresses_outside_the_test_range_are_refused(net, ip, message):
    with pytest.raises(TestnetError, match=re.escape(message)):
        net.add_host("t-bad", ip)
    assert "gh-t-bad" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout


def test_bad_names_and_missing_hosts(net):
    with pytest.raises(TestnetError, match="bad host name"):
        net.add_host("../etc", f"{NET}.40")
    r = sh("exec", "t-nonexistent", "--", "true")
    assert r.returncode != 0 and "not up" in r.stderr
