"""`gate ssh`: connect to the proxy with the user certificate, then end-to-end to the node.

The inner SSH connection to the node runs inside a session channel on the proxy
connection that asks for the proxy's `proxy:NODE:PORT@CLUSTER` subsystem, so the
proxy only pipes encrypted bytes, routes by the cluster named on the command line,
and does not need the certificate's `permit-port-forwarding` (which asyncssh
enforces on `direct-tcpip` channels, the route `ssh -J` takes). Host keys are
checked against the host CA of CLUSTER alone (the `@cert-authority` lines written at
login, picked by the cluster each names, not by pattern), for `NODE.CLUSTER`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from . import sshtuning
from .errors import AccessDenied, ConnectionProblem, GatehouseError, NotFound
from .profile import host_ca_keys, refresh_known_hosts
from .sshparams import CARRIER_MAX_PKTSIZE, SESSION_MAX_PKTSIZE, client_options
from .wire import NODE_PORT, proxy_subsystem


_OPEN = object()  # _SubsystemPipe.closed while the channel is open


def import_asyncssh():
    """Import asyncssh for the `gate` client without two start-up costs it does not need.

    Both are optional parts asyncssh probes for at import time:

    * X.509 certificates as SSH keys (``asyncssh.crypto.x509``, which loads
      ``cryptography.x509``): Gatehouse uses OpenSSH certificates only, so this
      client never offers or accepts ``x509v3-*`` algorithms. asyncssh supports
      running without the module (it checks ``_x509_available``).
    * liboqs for the sntrup761 key exchange, looked up with
      ``ctypes.util.find_library``, which on a miss runs the C compiler and ``ld``
      in subprocesses (20 to 45 ms on every start). While asyncssh is imported the
      lookup consults only the dynamic loader's cache (``ldconfig -p``, the first
      step of ``find_library``), so an installed liboqs is still found once
      ``ldconfig`` has run. With ``LD_LIBRARY_PATH`` set the full lookup is kept.
      Post-quantum ML-KEM comes from ``cryptography`` and is unaffected.

    Servers (node, proxy) import asyncssh normally. The key exchange and ciphers
    offered here are the same as with a plain ``import asyncssh`` on this host
    unless liboqs is only reachable through the compiler's search path.

    For this short-lived process, the garbage collector is also kept out of the
    way: paused while the ~300 modules load (they create no garbage cycles worth
    chasing), and the objects they created are then moved to the permanent
    generation (``gc.freeze()``), so neither later collections nor the final
    one at interpreter exit walk them again. Together that is about 40 ms of
    CPU per `gate ssh` start on the reference machine (see bench/README.md).
    """
    module = sys.modules.get("asyncssh")
    if module is not None:
        return module
    import ctypes.util
    import gc
    gc_was_enabled = gc.isenabled()
    gc.disable()
    real_find = ctypes.util.find_library
    loader_cache = getattr(ctypes.util, "_findSoname_ldconfig", None)
    blocked = "asyncssh.crypto.x509" not in sys.modules
    if blocked:
        sys.modules["asyncssh.crypto.x509"] = None  # type: ignore[assignment]  # import -> ImportError
    if loader_cache is not None and not os.environ.get("LD_LIBRARY_PATH"):
        ctypes.util.find_library = loader_cache
    try:
        import asyncssh
    finally:
        ctypes.util.find_library = real_find
        if blocked and sys.modules.get("asyncssh.crypto.x509", False) is None:
            del sys.modules["asyncssh.crypto.x509"]
        if gc_was_enabled:
            gc.freeze()
            gc.enable()
    return asyncssh


class _SubsystemPipe:
    """Client session on the proxy's subsystem channel that carries the inner SSH connection.

    Channel data goes to the inner connection's protocol, which writes back to the
    channel as to any transport (as asyncssh does for `direct-tcpip` tunnels).

    The proxy accepts the subsystem first and connects to the node afterwards. The
    inner connection is attached only once the node's first bytes (its SSH version
    line) come back through the channel, so nothing is sent before the proxy has
    reached the node (proxies before 452e267 dropped such early bytes), and a
    routing failure is seen before any SSH handshake starts: the proxy then says
    why on the channel's stderr and closes the channel, and that sentence becomes
    the error shown to the user. Waiting costs nothing: the client could not
    proceed without the node's version line anyway.
    """

    def __init__(self):
        self.chan = None
        self.inner = None
        self.pending: list[bytes] = []
        self.errors: list[bytes] = []
        self.eof = False
        self.closed = _OPEN
        self.ready = asyncio.get_running_loop().create_future()

    # -- SSHClientSession callbacks --------------------------------------------
    def connection_made(self, chan) -> None:
        self.chan = chan

    def session_started(self) -> None:
        pass

    def data_received(self, data: bytes, datatype) -> None:
        if datatype is not None:
            self.errors.append(data)
        elif self.inner is not None:
            self.inner.data_received(data)
        else:
            self.pending.append(data)
            if not self.ready.done():
                self.ready.set_result(None)

    def eof_received(self) -> bool:
        if self.inner is not None:
            self.inner.eof_received()
        else:
            self.eof = True
        return False

    def connection_lost(self, exc) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)
            return
        self.closed = exc
        if not self.ready.done():
            self.ready.set_result(None)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def exit_status_received(self, status: int) -> None:
        pass

    def exit_signal_received(self, signal, core_dumped, msg, lang) -> None:
        pass

    def xon_xoff_requested(self, client_can_do: bool) -> None:
        pass

    # -- ours --------------------------------------------------------------------
    def attach(self, inner) -> None:
        """Hand the channel to the inner connection and replay what arrived so far."""
        self.inner = inner
        inner.connection_made(self.chan)
        pending, self.pending = self.pending, []
        for data in pending:
            inner.data_received(data)
        if self.eof:
            inner.eof_received()
        if self.closed is not _OPEN:
            inner.connection_lost(self.closed)

    def error(self) -> str:
        text = b"".join(self.errors).decode("utf-8", "replace").strip()
        return text.splitlines()[-1].removeprefix("gatehouse: ") if text else ""


class _SubsystemTunnel:
    """An asyncssh `tunnel=` object: the inner connection rides the proxy subsystem."""

    def __init__(self, proxy, subsystem: str, node: str, cluster: str):
        self.proxy = proxy
        self.subsystem = subsystem
        self.node = node
        self.cluster = cluster

    async def create_connection(self, session_factory, host, port):
        pipe = _SubsystemPipe()
        chan, _unused = await self.proxy.create_session(lambda: pipe, subsystem=self.subsystem, encoding=None)
        await pipe.ready
        if not pipe.pending:
            chan.close()
            reason = pipe.error()
            if " is not registered" in reason or " is not found" in reason:
                raise NotFound(reason)
            raise ConnectionProblem(f"the proxy could not reach node \"{self.node}\" in cluster "
                                    f"\"{self.cluster}\": {reason or 'it closed the connection'}")
        inner = session_factory()
        pipe.attach(inner)
        return chan, inner


def _client_factory(banners: list[str]):
    asyncssh = import_asyncssh()

    class _Client(asyncssh.SSHClient):
        def auth_banner_received(self, msg, lang):
            banners.append(msg.strip())

    return _Client


async def _connect(profile, login: str, node: str, cluster: str, port: int):
    asyncssh = import_asyncssh()
    sshtuning.install()  # however asyncssh came to be imported; the daemon does this in process.run
    key = asyncssh.import_private_key(open(profile.key_path, encoding="utf-8").read())
    cert = asyncssh.import_certificate(open(profile.cert_path, encoding="utf-8").read())
    banners: list[str] = []

    def options(max_pktsize: int, host_cluster: str) -> dict:
        # Only HOST_CLUSTER's host CA vouches for its proxy and nodes (read again after a refresh);
        # asyncssh still checks that the certificate names the host dialled.
        trusted = ([], [asyncssh.import_public_key(k) for k in host_ca_keys(profile, host_cluster)], [])
        return client_options((key, cert), max_pktsize=max_pktsize, known_hosts=trusted,
                              client_factory=_client_factory(banners), ignore_encrypted=True)

    proxy_host, proxy_port = profile.ssh_addr
    try:
        proxy = await _trusting_current_host_cas(profile, lambda: asyncssh.connect(
            proxy_host, proxy_port, username=login, **options(CARRIER_MAX_PKTSIZE, profile.cluster)))
    except asyncssh.HostKeyNotVerifiable as exc:
        raise ConnectionProblem(f"the proxy at {proxy_host}:{proxy_port} presented a host key not signed by cluster "
                                f"\"{profile.cluster}\" ({exc}); if the cluster was re-created, run 'gate login "
                                f"--proxy={profile.web_addr}' again") from None
    except asyncssh.PermissionDenied:
        raise AccessDenied(_banner(banners) or f"the proxy refused your certificate for login \"{login}\"; run "
                                               f"'gate status' to see your logins") from None
    except (OSError, asyncssh.Error) as exc:
        raise ConnectionProblem(f"cannot connect to the proxy at {proxy_host}:{proxy_port}: {exc}; check that it "
                                f"is running") from None
    target = node if node.endswith("." + cluster) else f"{node}.{cluster}"

    async def to_node():
        tunnel = _SubsystemTunnel(proxy, proxy_subsystem(node, port, cluster), node, cluster)
        return await asyncssh.connect(target, port, tunnel=tunnel, username=login,
                                      **options(SESSION_MAX_PKTSIZE, cluster))

    try:
        conn = await _trusting_current_host_cas(profile, to_node)
    except BaseException as exc:
        proxy.close()
        raise _node_error(exc, banners, login, node, cluster) from None
    return proxy, conn


async def _trusting_current_host_cas(profile, connect):
    """``await connect()``; if the host key is not trusted, fetch the host CAs the proxy lists now
    and try once more: a leaf may have joined, or a host CA rotated, since `gate login`."""
    asyncssh = import_asyncssh()
    try:
        return await connect()
    except asyncssh.HostKeyNotVerifiable:
        if not await asyncio.to_thread(refresh_known_hosts, profile):
            raise
        return await connect()


def _node_error(exc: BaseException, banners: list[str], login: str, node: str, cluster: str) -> BaseException:
    """The one-line error for a failed connection to the node through the proxy."""
    asyncssh = import_asyncssh()
    if isinstance(exc, GatehouseError):  # the proxy could not route (_SubsystemTunnel)
        return exc
    if isinstance(exc, asyncssh.PermissionDenied):
        return AccessDenied(_banner(banners) or f"node \"{node}\" refused your certificate for login \"{login}\"")
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return ConnectionProblem(f"node \"{node}\" presented a host key not signed by cluster \"{cluster}\" ({exc}) "
                                 f"even with the host CAs the proxy lists now; if the cluster was re-created, log "
                                 f"in again, otherwise the machine answering at the node's address is not that node")
    if isinstance(exc, asyncssh.ChannelOpenError):
        return ConnectionProblem(f"the proxy refused to route to node \"{node}\" in cluster \"{cluster}\": "
                                 f"{exc.reason}")
    if isinstance(exc, (OSError, asyncssh.Error)):
        return ConnectionProblem(f"the connection to node \"{node}\" through the proxy failed: "
                                 f"{getattr(exc, 'reason', None) or exc}")
    return exc


def _banner(banners: list[str]) -> str:
    return banners[-1].removeprefix("gatehouse: ") if banners else ""


async def _run(profile, login, node, cluster, command, port, force_tty, no_tty) -> int:
    asyncssh = import_asyncssh()
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

        def reader():
            process.stdin.write(os.read(fd, 65536) or b"")
        loop.add_reader(fd, reader)
    try:
        await process.wait()
    finally:
        if saved is not None:
            loop.remove_reader(fd)
            loop.remove_signal_handler(signal.SIGWINCH)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


#: Capacity asked for the pipes on gate's stdin and stdout (Linux, best effort).
PIPE_SIZE = 1024 * 1024


def _grow_pipes() -> None:
    """Bigger stdin/stdout pipes: 256 KiB reads instead of 64 KiB ones on `cmd | gate ssh ...`.

    Fewer, larger reads mean fewer channel writes and full-size SSH packets. A pipe
    we cannot grow (limits for unprivileged users) is left as it is.
    """
    import fcntl
    import stat
    if not hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux only
        return
    for fd in (0, 1):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass


def run_ssh(profile, login, node, cluster, command, port=NODE_PORT, force_tty=False, no_tty=False) -> int:
    _grow_pipes()
    # A short-lived process: keep every buffer it frees (bounded by its peak heap).
    sshtuning.keep_heap(mmap_threshold=32 * 1024 * 1024, trim_threshold=256 * 1024 * 1024)
    return asyncio.run(_run(profile, login, node, cluster, command, port, force_tty, no_tty))
