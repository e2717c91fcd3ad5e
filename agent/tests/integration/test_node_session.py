"""node/session.py: real processes behind a real asyncssh server on 127.0.0.1.

Runs as root: creates throwaway Unix users (and a group) and removes them at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import time
import uuid

import asyncssh
import pytest

from gatehouse.node import session as node_session
from gatehouse.node.session import SessionProcess, SessionResult, run_session

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                                reason="needs root and useradd to create test users")

NODE = "node1"
TIMEOUT = 30


# --------------------------------------------------------------------------- fixtures


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def users():
    """Three throwaway logins: normal (bash, home, extra group), no home, bad shell."""
    tag = uuid.uuid4().hex[:6]
    group = f"ghgrp{tag}"
    normal, nohome, badshell = f"ghuser{tag}", f"ghnohome{tag}", f"ghbadsh{tag}"
    _run("groupadd", group)
    created = []
    try:
        _run("useradd", "-m", "-s", "/bin/bash", "-G", group, normal)
        created.append(normal)
        _run("useradd", "-M", "-d", f"/nonexistent/{nohome}", "-s", "/bin/sh", nohome)
        created.append(nohome)
        _run("useradd", "-m", "-s", "/nonexistent/shell", badshell)
        created.append(badshell)
        yield {"normal": normal, "nohome": nohome, "badshell": badshell, "group": group}
    finally:
        for name in created:
            subprocess.run(["userdel", "-r", "-f", name], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        subprocess.run(["groupdel", group], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Node:
    """A throwaway SSH server whose sessions go through run_session."""

    def __init__(self, encoding, permit_pty):
        self.encoding = encoding
        self.permit_pty = permit_pty
        self.results: list[SessionResult] = []
        self.tasks: list[asyncio.Task] = []
        self.done = asyncio.Event()
        self.server = None
        self.port = 0
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")

    async def _session(self, process):
        login = process.get_extra_info("username")
        self.tasks.append(asyncio.current_task())
        result = await run_session(process, login, node_name=NODE, permit_pty=self.permit_pty)
        self.results.append(result)
        self.done.set()

    async def start(self):
        node = self

        class Server(asyncssh.SSHServer):
            def session_requested(self):
                return SessionProcess(node._session)

        authorized = asyncssh.import_authorized_keys(self.client_key.export_public_key().decode())
        self.server = await asyncssh.create_server(
            Server, "127.0.0.1", 0, server_host_keys=[self.host_key],
            authorized_client_keys=authorized, encoding=self.encoding)
        self.port = self.server.sockets[0].getsockname()[1]

    def connect(self, username):
        return asyncssh.connect("127.0.0.1", self.port, username=username,
                                client_keys=[self.client_key], known_hosts=None)

    async def result(self) -> SessionResult:
        await asyncio.wait_for(self.done.wait(), TIMEOUT)
        return self.results[-1]

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def node():
    n = Node(encoding=None, permit_pty=True)
    await n.start()
    yield n
    await n.stop()


@pytest.fixture
async def make_node():
    made = []

    async def make(encoding=None, permit_pty=True):
        n = Node(encoding=encoding, permit_pty=permit_pty)
        await n.start()
        made.append(n)
        return n

    yield make
    for n in made:
        await n.stop()


async def read_until(stream, pattern, timeout=TIMEOUT):
    """Read a client stream until the regex matches the accumulated output."""
    buf = ""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, buf):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{pattern!r} not seen in {buf!r}")
        chunk = await asyncio.wait_for(stream.read(4096), remaining)
        if not chunk:
            raise AssertionError(f"EOF before {pattern!r}; got {buf!r}")
        buf += chunk
    return buf


async def wait_gone(pid, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still exists")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- exec sessions


async def test_exit_status_propagates(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.run('sh -c "exit 7"')
    assert proc.exit_status == 7
    result = await node.result()
    assert result.exit_status == 7 and result.exit_signal is None
    assert result.command == 'sh -c "exit 7"' and result.pty is False
    assert result.pid and result.ended >= result.started
    await wait_gone(result.pid)


async def test_stdout_and_stderr_are_separate(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.run("echo out; echo err >&2; echo out2")
    assert proc.stdout == "out\nout2\n"
    assert proc.stderr == "err\n"
    assert proc.exit_status == 0


async def test_stdin_streams_and_eof_closes_it(node, users):
    data = os.urandom(8 * 1024 * 1024)
    async with node.connect(users["normal"]) as conn:
        proc = await conn.run("cat", input=data, encoding=None)
    assert proc.exit_status == 0
    assert len(proc.stdout) == len(data)
    assert hashlib.sha256(proc.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_child_not_reading_stdin_does_not_stall(node, users):
    data = os.urandom(4 * 1024 * 1024)
    async with node.connect(users["normal"]) as conn:
        proc = await conn.run("head -c 10 >/dev/null; echo done", input=data, encoding=None)
    assert proc.stdout == b"done\n" and proc.exit_status == 0


async def test_runs_as_the_login_with_fresh_environment(node, users):
    login = users["normal"]
    pw = pwd.getpwnam(login)
    script = ('id -un; id -u; pwd; echo "$HOME"; id -Gn; umask; echo "$PATH"; '
              'echo "$SHELL"; echo "$SSH_CONNECTION"; echo "LANG=$LANG"; '
              'echo "LD=${LD_PRELOAD-unset}"; echo "TERM=$(printenv TERM || echo unset)"; '
              'echo "LC=${LC_TIME-unset}"; ls /root >/dev/null 2>&1 && echo root-ok || '
              'echo no-root')
    async with node.connect(login) as conn:
        proc = await conn.run(script, env={"LANG": "C.UTF-8", "LC_TIME": "C",
                                           "LD_PRELOAD": "/tmp/evil.so"})
    lines = proc.stdout.splitlines()
    assert proc.exit_status == 0, proc.stderr
    assert lines[0] == login
    assert lines[1] == str(pw.pw_uid) and lines[1] != "0"
    assert lines[2] == pw.pw_dir and lines[3] == pw.pw_dir
    assert users["group"] in lines[4].split()          # supplementary groups (initgroups)
    assert lines[5] == "0022"
    assert lines[6] == node_session.SAFE_PATH
    assert lines[7] == "/bin/bash"
    peer = lines[8].split()
    assert peer[0] == "127.0.0.1" and peer[2] == "127.0.0.1" and peer[3] == str(node.port)
    assert lines[9] == "LANG=C.UTF-8"
    assert lines[10] == "LD=unset"                       # not on the allow-list
    assert lines[11] == "TERM=unset"
    assert lines[12] == "LC=C"
    assert lines[13] == "no-root"


async def test_missing_login_is_refused_with_one_line(node):
    async with node.connect("ghnosuchlogin") as conn:
        proc = await conn.run("id")
    assert proc.exit_status == 1
    assert proc.stdout == ""
    assert proc.stderr == ('gatehouse: login "ghnosuchlogin" does not exist on node "node1"; '
                           "ask the node's administrator to create it or use another login\n")
    result = await node.result()
    assert result.exit_status == 1 and result.pid is None and result.error


async def test_missing_home_starts_in_root_dir(node, users):
    async with node.connect(users["nohome"]) as conn:
        proc = await conn.run("pwd; id -un")
    assert proc.exit_status == 0
    assert proc.stdout == f"/\n{users['nohome']}\n"
    assert "does not exist" in proc.stderr and "/nonexistent/" in proc.stderr


async def test_unstartable_shell_is_reported(node, users):
    async with node.connect(users["badshell"]) as conn:
        proc = await conn.run("true")
    assert proc.exit_status == 1
    assert proc.stderr.startswith("gatehouse: cannot start ")
    assert "/nonexistent/shell" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("sig", ["TERM", "INT"])
async def test_client_signal_ends_the_session(node, users, sig):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.create_process("echo started; sleep 100")
        await read_until(proc.stdout, "started")
        proc.send_signal(sig)
        await asyncio.wait_for(proc.wait_closed(), TIMEOUT)
        assert proc.exit_signal is not None and proc.exit_signal[0] == sig
        assert proc.exit_status == -1
    result = await node.result()
    assert result.exit_signal == sig and result.exit_status is None
    await wait_gone(result.pid)


async def test_client_disconnect_kills_the_child(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.create_process("echo $$; exec sleep 100")
        pid = int((await read_until(proc.stdout, r"\d+\n")).strip())
        assert os.path.exists(f"/proc/{pid}")
    # Connection closed without waiting for the command.
    await wait_gone(pid)
    result = await node.result()
    assert result.disconnected and result.pid == pid and result.exit_signal == "HUP"


async def test_disconnect_kills_a_child_that_ignores_sighup(node, users, monkeypatch):
    monkeypatch.setattr(node_session, "KILL_GRACE", 0.5)
    async with node.connect(users["normal"]) as conn:
        proc = await conn.create_process("trap '' HUP; sleep 100 & echo $!; wait")
        pid = int((await read_until(proc.stdout, r"\d+\n")).strip())
    await wait_gone(pid)
    result = await node.result()
    assert result.disconnected and result.exit_signal == "KILL"


async def test_cancelled_session_still_ends_the_child(node, users, monkeypatch):
    monkeypatch.setattr(node_session, "KILL_GRACE", 0.5)
    async with node.connect(users["normal"]) as conn:
        proc = await conn.create_process("trap '' HUP; echo $$; sleep 100")
        pid = int((await read_until(proc.stdout, r"\d+\n")).strip())
        node.tasks[-1].cancel()  # e.g. the node service shutting down
        await wait_gone(pid)


async def test_break_interrupts_the_command(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.create_process("echo started; sleep 100")
        await read_until(proc.stdout, "started")
        proc.send_break(100)
        await asyncio.wait_for(proc.wait_closed(), TIMEOUT)
        assert proc.exit_signal[0] == "INT"


async def test_unprivileged_service_refuses_other_logins(node, users, monkeypatch):
    monkeypatch.setattr(node_session.os, "geteuid", lambda: 54321)
    async with node.connect(users["normal"]) as conn:
        proc = await conn.run("id")
    assert proc.exit_status == 1 and proc.stdout == ""
    assert "not root" in proc.stderr and proc.stderr.count("\n") == 1


async def test_background_process_holding_output_does_not_hang(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await asyncio.wait_for(conn.run("sleep 60 & echo $!; echo done"), TIMEOUT)
    lines = proc.stdout.split()
    assert lines[1] == "done" and proc.exit_status == 0
    os.kill(int(lines[0]), 9)
    await wait_gone(int(lines[0]))


async def test_text_mode_server(make_node, users):
    node = await make_node(encoding="utf-8")
    async with node.connect(users["normal"]) as conn:
        proc = await conn.run("cat; echo 'ünïcode' >&2; exit 5", input="héllo\n" * 1000)
    assert proc.stdout == "héllo\n" * 1000
    assert proc.stderr == "ünïcode\n"
    assert proc.exit_status == 5


async def test_sftp_subsystem_runs_as_the_login(node, users):
    if node_session.find_sftp_server() is None:
        pytest.skip("no sftp-server binary")
    login = users["normal"]
    async with node.connect(login) as conn:
        async with conn.start_sftp_client() as sftp:
            await sftp.put(__file__, "copied.py")
            assert "copied.py" in await sftp.listdir(".")
    path = os.path.join(pwd.getpwnam(login).pw_dir, "copied.py")
    assert os.stat(path).st_uid == pwd.getpwnam(login).pw_uid
    os.unlink(path)


async def test_sftp_session_is_recorded_as_a_subsystem(node, users):
    if node_session.find_sftp_server() is None:
        pytest.skip("no sftp-server binary")
    async with node.connect(users["normal"]) as conn:
        async with conn.start_sftp_client() as sftp:
            await sftp.listdir(".")
    result = await node.result()
    assert result.subsystem == "sftp" and result.command is None
    assert result.exit_status == 0 and result.pid and not result.pty


async def test_unknown_subsystem_is_refused_with_one_line(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.run(subsystem="netconf")
    assert proc.exit_status == 1
    assert proc.stderr == ('gatehouse: subsystem "netconf" is not available on node "node1"; '
                           'only "sftp" is served\n')


async def test_sftp_missing_login_is_refused_with_one_line(node):
    async with node.connect("ghnosuchlogin") as conn:
        proc = await conn.run(subsystem="sftp", input="")
    assert proc.exit_status == 1
    assert 'login "ghnosuchlogin" does not exist on node "node1"' in proc.stderr


async def test_sftp_without_sftp_server_says_what_to_install(node, users, monkeypatch):
    monkeypatch.setattr(node_session, "find_sftp_server", lambda *a: None)
    async with node.connect(users["normal"]) as conn:
        proc = await conn.run(subsystem="sftp", input="")
    assert proc.exit_status == 1
    assert proc.stderr.startswith('gatehouse: sftp is not available on node "node1": no sftp-server')
    assert "openssh-sftp-server" in proc.stderr


def test_find_sftp_server_reads_sshd_config(tmp_path):
    real = node_session.find_sftp_server(str(tmp_path / "missing"))
    if real is None:
        pytest.skip("no sftp-server binary")
    fake = tmp_path / "my-sftp-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    cfg = tmp_path / "sshd_config"
    cfg.write_text(f"# comment\nPort 22\nSubsystem  sftp  {fake} -l INFO\n")
    assert node_session.find_sftp_server(str(cfg)) == str(fake)
    # internal-sftp is sshd's built-in; fall back to the installed binary.
    cfg2 = tmp_path / "sshd_config2"
    cfg2.write_text("Subsystem sftp internal-sftp\n")
    assert node_session.find_sftp_server(str(cfg2)) == real


# --------------------------------------------------------------------------- PTY sessions


async def test_pty_command_has_a_terminal_of_the_requested_size(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.run("tty; stty size; echo TERM=$TERM; echo SSH_TTY=$SSH_TTY",
                              term_type="xterm-256color", term_size=(100, 30))
    out = proc.stdout.replace("\r\n", "\n")
    tty = out.splitlines()[0]
    assert re.fullmatch(r"/dev/pts/\d+", tty), out
    assert "\n30 100\n" in out
    assert "TERM=xterm-256color" in out and f"SSH_TTY={tty}" in out
    assert proc.exit_status == 0
    result = await node.result()
    assert result.pty is True


async def test_pty_resize_and_interactive_exit_status(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
        proc.stdin.write("stty size; echo MARK-$((6*7))\n")
        await read_until(proc.stdout, r"24 80\r?\n.*MARK-42")
        proc.change_terminal_size(120, 40)
        proc.stdin.write("stty size; echo MARK-$((6*8))\n")
        await read_until(proc.stdout, r"40 120\r?\n.*MARK-48")
        proc.stdin.write("tty; echo HI-$((40+2)); exit 3\n")
        out = await read_until(proc.stdout, r"HI-42")
        await asyncio.wait_for(proc.wait_closed(), TIMEOUT)
        assert proc.exit_status == 3
    assert "/dev/pts/" in out
    result = await node.result()
    assert result.exit_status == 3 and result.pty and result.command is None
    await wait_gone(result.pid)


async def test_pty_login_shell_is_a_login_shell(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
        proc.stdin.write("echo ARG0=$0; shopt -q login_shell && echo LOGIN-$((2+3)); exit\n")
        await read_until(proc.stdout, r"ARG0=-bash\r?\nLOGIN-5")
        await asyncio.wait_for(proc.wait_closed(), TIMEOUT)
        assert proc.exit_status == 0


async def test_pty_signal_and_ctrl_c(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.create_process("echo started; sleep 100", term_type="xterm")
        await read_until(proc.stdout, "started")
        proc.send_signal("TERM")
        await asyncio.wait_for(proc.wait_closed(), TIMEOUT)
        assert proc.exit_signal[0] == "TERM"

        # Ctrl-C typed into the terminal interrupts the foreground job only.
        proc = await conn.create_process(term_type="xterm")
        proc.stdin.write("echo before-$((0+1)); sleep 100\n")
        await read_until(proc.stdout, "before-1")
        await asyncio.sleep(0.2)
        proc.stdin.write("\x03")
        proc.stdin.write("echo after-$((1+1))\n")
        await read_until(proc.stdout, "after-2")
        proc.stdin.write("exit 4\n")
        await asyncio.wait_for(proc.wait_closed(), TIMEOUT)
        assert proc.exit_status == 4


async def test_pty_disconnect_kills_the_shell(node, users):
    async with node.connect(users["normal"]) as conn:
        proc = await conn.create_process(term_type="xterm")
        proc.stdin.write("echo PID=$$; sleep 100\n")
        out = await read_until(proc.stdout, r"PID=\d+")
        pid = int(re.search(r"PID=(\d+)", out).group(1))
    await wait_gone(pid)
    result = await node.result()
    assert result.disconnected and result.pid == pid


async def test_pty_not_permitted_runs_without_terminal(make_node, users):
    node = await make_node(permit_pty=False)
    async with node.connect(users["normal"]) as conn:
        proc = await conn.run("tty; echo ok", term_type="xterm")
    assert proc.stdout == "not a tty\nok\n"
    assert proc.stderr.startswith(
        "gatehouse: PTY not permitted by your roles; running without a terminal")
    assert proc.exit_status == 0
    assert (await node.result()).pty is False


async def test_pty_missing_login_message_uses_crlf(node):
    async with node.connect("ghnosuchlogin") as conn:
        proc = await conn.run("id", term_type="xterm")
    assert proc.exit_status == 1
    assert proc.stderr.endswith("another login\r\n")


# --------------------------------------------------------------------------- throughput


async def test_throughput_report(node, users, capsys):
    """Printed, not asserted: 64 MiB `cat > /dev/null` through the session."""
    size = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    async with node.connect(users["normal"]) as conn:
        proc = await conn.create_process("cat > /dev/null", encoding=None)
        start = time.perf_counter()
        for _ in range(size // len(block)):
            proc.stdin.write(block)
            await proc.stdin.drain()
        proc.stdin.write_eof()
        await proc.wait_closed()
        elapsed = time.perf_counter() - start
        assert proc.exit_status == 0

        start = time.perf_counter()
        proc = await conn.run(f"head -c {size} /dev/zero", encoding=None)
        elapsed_out = time.perf_counter() - start
        assert len(proc.stdout) == size
    lines = [f"in-process asyncssh client: stdin {size / elapsed / 1e6:.0f} MB/s, "
             f"stdout {size / elapsed_out / 1e6:.0f} MB/s (64 MiB)"]

    ssh = shutil.which("ssh")
    if ssh:  # a separate client process, as in real use
        key = f"/tmp/gh-session-test-{uuid.uuid4().hex}"
        node.client_key.write_private_key(key)
        os.chmod(key, 0o600)
        try:
            base = (f"{ssh} -q -p {node.port} -i {key} -o StrictHostKeyChecking=no "
                    f"-o UserKnownHostsFile=/dev/null -o BatchMode=yes "
                    f"{users['normal']}@127.0.0.1")
            big = 4 * size
            for label, cmd in (("stdin", f"head -c {big} /dev/zero | {base} 'cat > /dev/null'"),
                               ("stdout", f"{base} 'head -c {big} /dev/zero' > /dev/null")):
                start = time.perf_counter()
                p = await asyncio.create_subprocess_shell(cmd)
                rc = await asyncio.wait_for(p.wait(), 120)
                elapsed = time.perf_counter() - start
                lines.append(f"OpenSSH client: {label} {4 * size / elapsed / 1e6:.0f} MB/s "
                             f"(256 MiB, rc {rc})")
        finally:
            os.unlink(key)
    with capsys.disabled():
        print("\n" + "\n".join("  session throughput: " + line for line in lines))
