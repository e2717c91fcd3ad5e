"""The listening sockets of one `gatehouse start` process, and what a reload hands on.

Every service takes its listening socket from `listen()` and tells `serving()` what
accepts on it (and, for SSH, which connections it holds), so one place knows them all:

* A process started by a reload (`reload.py`) inherits its predecessor's listening
  sockets as file descriptors named in ``GATEHOUSE_LISTEN_FDS``. `listen()` adopts the
  one bound to the address the config names, so the port never closes and no
  connection waiting in its queue is lost; an address that changed is bound afresh.
* Once the successor is ready, the old process stops accepting (`stop_accepting`) and
  drains: `drain_step` closes each SSH connection that has carried nothing for a moment
  and counts the ones still busy (`reload.py` bounds the whole by the drain timeout).
* `draining()` tells the parts that keep something alive on their own (heartbeats,
  tunnel dialling) to stop and to say so on the wire.

Bottom layer: imports nothing of the services.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass, field

log = logging.getLogger("gatehouse.listeners")

#: Environment variable with the inherited listening sockets: comma-separated fd numbers.
LISTEN_FDS_ENV = "GATEHOUSE_LISTEN_FDS"
BACKLOG = 128
#: A connection with no channel of its own for this long is closed by a draining process
#: (a client that has just connected gets time to open its first channel).
IDLE_GRACE = 2.0


@dataclass
class _Serving:
    what: str
    server: object = None                 # asyncssh acceptor (close()) or aiohttp site (stop())
    limits: object = None                 # sshserver.ListenerLimits: the connections to drain
    channels_when_idle: int = 0           # channels an idle connection still has (a tunnel's heartbeat)
    idle_since: dict = field(default_factory=dict)


_inherited: list[socket.socket] | None = None
_sockets: dict[str, socket.socket] = {}
_serving: list[_Serving] = []
_draining = False
_waiters: set[asyncio.Future] = set()
_ready_checks: list = []


# ------------------------------------------------------------------ sockets
def _take_inherited() -> list[socket.socket]:
    """The listening sockets a predecessor handed over (once; the variable leaves the environment)."""
    global _inherited
    if _inherited is None:
        _inherited = []
        for text in filter(None, os.environ.pop(LISTEN_FDS_ENV, "").split(",")):
            try:
                sock = socket.socket(fileno=int(text))
            except (ValueError, OSError) as exc:
                log.warning("reload: ignoring the inherited listening socket %r: %s", text, exc)
                continue
            os.set_inheritable(sock.fileno(), False)  # sessions started from here never see it
            if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                log.warning("reload: inherited file descriptor %s is not a listening TCP socket; closing it", text)
                sock.close()
                continue
            _inherited.append(sock)
    return _inherited


def _bind_target(host: str, port: int) -> tuple[int, tuple, bool]:
    """(family, sockaddr, dual_stack) to bind for HOST:PORT. An empty host is every address
    (one IPv6 socket that also takes IPv4, where the machine has IPv6); a name binds the first
    address it resolves to."""
    if not host:
        if socket.has_ipv6 and _ipv6_works():
            return socket.AF_INET6, ("::", port, 0, 0), True
        return socket.AF_INET, ("0.0.0.0", port), False
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        family, _type, _proto, _name, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE)[0]
        return family, addr, False
    if ip.version == 6:
        return socket.AF_INET6, socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM)[0][4], False
    return socket.AF_INET, (host, port), False


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM):
            return True
    except OSError:
        return False


def _same_address(sock: socket.socket, family: int, addr: tuple) -> bool:
    if sock.family != family:
        return False
    bound = sock.getsockname()
    return (ipaddress.ip_address(bound[0].split("%")[0]), bound[1]) == \
        (ipaddress.ip_address(addr[0].split("%")[0]), addr[1])


def listen(what: str, host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on HOST:PORT for the service WHAT: the one a
    predecessor handed over when it is bound there, else a new one (SO_REUSEADDR)."""
    family, addr, dual = _bind_target(host, port)
    inherited = _take_inherited()
    for sock in inherited:
        if _same_address(sock, family, addr):
            inherited.remove(sock)
            log.debug("reload: %s adopts the listening socket on %s:%d", what, addr[0], addr[1])
            sock.setblocking(False)
            _sockets[what] = sock
            return sock
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    _sockets[what] = sock
    return sock


def sockets() -> dict[str, socket.socket]:
    """The listening sockets of this process by service, for a successor."""
    return {what: sock for what, sock in _sockets.items() if sock.fileno() >= 0}


def close_unused_inherited() -> None:
    """Inherited sockets no service of this configuration took (a service turned off, an address changed)."""
    for sock in _take_inherited():
        log.info("reload: closing the inherited listener on %s, which this configuration does not use",
                 "%s:%d" % sock.getsockname()[:2])
        sock.close()
    _inherited.clear()


# ------------------------------------------------------------------ serving and draining
def serving(what: str, server=None, limits=None, channels_when_idle: int = 0) -> None:
    """Record what accepts connections for WHAT (closed by `stop_accepting`) and the SSH
    connections it holds (`limits`, a ListenerLimits), which a draining process lets finish.
    A tunnel always carries its heartbeat channel: `channels_when_idle=1`."""
    _serving.append(_Serving(what, server, limits, channels_when_idle))


def draining() -> bool:
    """Whether this process has handed its listeners to a successor and is draining."""
    return _draining


async def wait_draining(timeout: float) -> bool:
    """Sleep up to TIMEOUT seconds, waking early when draining starts; whether it has."""
    if _draining:
        return True
    waiter = asyncio.get_running_loop().create_future()
    _waiters.add(waiter)
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        _waiters.discard(waiter)
        waiter.cancel()
    return _draining


async def sleep_or_drain(seconds: float) -> None:
    """A heartbeat's pause: SECONDS, cut short once when draining starts (so the peer hears it at once)."""
    if _draining:
        await asyncio.sleep(seconds)
    else:
        await wait_draining(seconds)


def before_ready(check) -> None:
    """CHECK(timeout) is awaited before a process started by a reload says it is ready
    (e.g. until its tunnels are up), for at most the time `reload.py` gives it."""
    _ready_checks.append(check)


async def ready_checks(timeout: float) -> None:
    checks = list(_ready_checks)
    _ready_checks.clear()
    if checks:
        await asyncio.wait([asyncio.ensure_future(check(timeout)) for check in checks], timeout=timeout + 1)


def start_draining() -> None:
    """From now on this process drains: wake everything waiting for it."""
    global _draining
    _draining = True
    for waiter in list(_waiters):
        if not waiter.done():
            waiter.set_result(True)


async def stop_accepting() -> None:
    """Draining starts: every listener stops accepting (the successor holds the same sockets)."""
    start_draining()
    for entry in _serving:
        if entry.server is None:
            continue
        try:
            stop = getattr(entry.server, "stop", None) or entry.server.close
            result = stop()
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - stop the others anyway
            log.exception("reload: could not stop accepting on %s", entry.what)
    for sock in _sockets.values():
        sock.close()


def drain_step(now: float | None = None) -> dict[str, int]:
    """Close each drained connection that has carried nothing of its own for IDLE_GRACE
    seconds; return the connections still busy, by service."""
    now = time.monotonic() if now is None else now
    busy: dict[str, int] = {}
    for entry in _serving:
        if entry.limits is None:
            continue
        conns = entry.limits.connections()
        for conn in list(entry.idle_since):
            if conn not in conns:
                del entry.idle_since[conn]
        for conn in conns:
            if entry.limits.open_channels(conn) > entry.channels_when_idle:
                entry.idle_since.pop(conn, None)
                busy[entry.what] = busy.get(entry.what, 0) + 1
            elif now - entry.idle_since.setdefault(conn, now) >= IDLE_GRACE:
                conn.close()
            else:
                busy[entry.what] = busy.get(entry.what, 0) + 1
    return busy


def reset_for_tests() -> None:
    """Forget every socket and service (unit tests run several in one process)."""
    global _inherited, _draining
    _inherited = None
    _sockets.clear()
    _serving.clear()
    _ready_checks.clear()
    _draining = False
