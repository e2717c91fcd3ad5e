"""`gate ssh`: connect to the proxy with the user certificate, then end-to-end to the node.

The inner SSH connection to `NODE.CLUSTER:3022` runs inside a `direct-tcpip`
channel on the proxy connection, so the proxy only pipes encrypted bytes. Host
keys are checked against the `@cert-authority` lines written at login.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from .errors import AccessDenied, ConnectionProblem, NotFound
from .sshparams import COMPRESSION_ALGS, ENCRYPTION_ALGS



def _client_factory(banners: list[str]):
    import asyncssh

    class _Client(asyncssh.SSHClient):
        def auth_banner_received(self, msg, lang):
            banners.append(msg.strip())

    return _Client


async def _connect(profile, login: str, node: str, cluster: str, port: int):
    import asyncssh
    key = asyncssh.import_private_key(open(profile.key_path, encoding="utf-8").read())
    cert = asyncssh.import_certificate(open(profile.cert_path, encoding="utf-8").read())
    banners: list[str] = []
    common = dict(client_keys=[(key, cert)], known_hosts=profile.known_hosts_path, agent_path=None,
                  encryption_algs=ENCRYPTION_ALGS, compression_algs=COMPRESSION_ALGS, preferred_auth="publickey",
                  client_factory=_client_factory(banners), config=None, ignore_encrypted=True)
    proxy_host, proxy_port = profile.ssh_addr
    try:
        proxy = await asyncssh.connect(proxy_host, proxy_port, username=login, **common)
    except asyncssh.PermissionDenied:
        raise AccessDenied(_banner(banners) or f"the proxy refused your certificate for login \"{login}\"; run "
                                               f"'gate status' to see your logins") from None
    except (OSError, asyncssh.Error) as exc:
        raise ConnectionProblem(f"cannot connect to the proxy at {proxy_host}:{proxy_port}: {exc}; check that it "
                                f"is running") from None
    target = node if node.endswith("." + cluster) else f"{node}.{cluster}"
    try:
        conn = await asyncssh.connect(target, port, tunnel=proxy, username=login, **common)
    except asyncssh.ChannelOpenError as exc:
        proxy.close()
        raise NotFound(exc.reason) from None
    except asyncssh.PermissionDenied:
        proxy.close()
        raise AccessDenied(_banner(banners) or f"node \"{node}\" refused your certificate for login \"{login}\"") from None
    except asyncssh.HostKeyNotVerifiable as exc:
        proxy.close()
        raise ConnectionProblem(f"node \"{node}\" presented a host key not signed by cluster \"{cluster}\" ({exc}); "
                                f"log in again to refresh the trusted CAs") from None
    return proxy, conn


def _banner(banners: list[str]) -> str:
    return banners[-1].removeprefix("gatehouse: ") if banners else ""


async def _run(profile, login, node, cluster, command, port, force_tty, no_tty) -> int:
    import asyncssh
    proxy, conn = await _connect(profile, login, node, cluster, port)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    want_tty = not no_tty and (force_tty or (command is None and interactive))
    try:
        pollable = _pollable(sys.stdin.fileno())
        kwargs = dict(stdin=sys.stdin.buffer if pollable and not want_tty else asyncssh.PIPE,
                      stdout=_dup(sys.stdout), stderr=_dup(sys.stderr), encoding=None)
        if want_tty:
            cols, rows = os.get_terminal_size() if interactive else (80, 24)
            kwargs.update(term_type=os.environ.get("TERM", "xterm"), term_size=(cols, rows))
        try:
            process = await conn.create_process(command, **kwargs)
        except asyncssh.ChannelOpenError as exc:
            raise AccessDenied(exc.reason) from None
        if want_tty:
            await _interactive(process)
        else:
            if not pollable:
                asyncio.get_running_loop().create_task(_feed_from_file(process))
            await process.wait()
        if process.exit_signal:
            sig = process.exit_signal[0]
            return 128 + getattr(signal, f"SIG{sig}", signal.SIGTERM)
        return process.exit_status if process.exit_status is not None else 255
    finally:
        conn.close()
        proxy.close()


def _dup(stream):
    """asyncssh closes the files it writes to at session end; give it copies of ours."""
    stream.flush()
    return os.fdopen(os.dup(stream.fileno()), "wb", buffering=0)


def _pollable(fd: int) -> bool:
    """Regular files and /dev/null cannot be watched by epoll; they are fed from a thread."""
    import select
    poller = select.epoll()
    try:
        poller.register(fd, select.EPOLLIN)
        return True
    except OSError:
        return False
    finally:
        poller.close()


async def _feed_from_file(process) -> None:
    loop = asyncio.get_running_loop()
    while True:
        chunk = await loop.run_in_executor(None, sys.stdin.buffer.read1, 262144)
        if not chunk:
            break
        process.stdin.write(chunk)
        await process.stdin.drain()
    process.stdin.write_eof()


async def _interactive(process) -> None:
    """Raw terminal, window-size changes forwarded, local stdin pumped to the session."""
    import termios
    import tty
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if sys.stdin.isatty() else None
    if saved is not None:
        tty.setraw(fd)
        loop.add_signal_handler(signal.SIGWINCH, lambda: process.change_terminal_size(*os.get_terminal_size()))
        reader = lambda: process.stdin.write(os.read(fd, 65536) or b"")  # noqa: E731
        loop.add_reader(fd, reader)
    try:
        await process.wait()
    finally:
        if saved is not None:
            loop.remove_reader(fd)
            loop.remove_signal_handler(signal.SIGWINCH)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_ssh(profile, login, node, cluster, command, port=3022, force_tty=False, no_tty=False) -> int:
    return asyncio.run(_run(profile, login, node, cluster, command, port, force_tty, no_tty))
