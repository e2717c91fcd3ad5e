"""Leaf side: dial out to the root and keep a tunnel to every root proxy.

One `RootLink` per enabled trusted cluster. It dials `tunnel_addr` (often a load
balancer) until it holds a tunnel to each root proxy the root announces, backs off
with jitter when the root is unreachable or busy (so it rides out a root restart, and
a fleet of leaves does not come back in one wave), and stops when trust is disabled
or removed — the cluster cache tells it within a second. It beats as the trusted
cluster's `heartbeat_mode` says (`wire.HEARTBEAT_TIMING`), with an empty line when
nothing changed, and tells the root its mode, interval and whether it forwards its
audit in its first heartbeat (and again when one of them changes).

On each tunnel this process is the SSH server: it accepts only the root proxy's
tunnel certificate, and a root `direct-tcpip` channel may only reach a node
registered in this cluster, never an arbitrary address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time

import asyncssh

from .. import listeners
from ..access import explain_ssh, node_not_registered
from ..config import split_hostport
from ..errors import AccessDenied, BadParameter, GatehouseError, NotFound
from ..member.context import MemberContext
from ..member.routing import resolve_node
from ..member.session_header import forward_to_node, make_header
from ..resources import tunnel_addr_is_discovered, tunnel_dial_addr, validate_name
from ..rootclient import RootWebClient
from ..sshparams import CARRIER_MAX_PKTSIZE, server_options
from ..sshserver import CertificateOnlyServer, ListenerLimits
from ..waits import wait_event
from ..wire import (ACCESS_SUBSYSTEM, AUDIT_SUBSYSTEM, HEARTBEAT_PROTOCOL, HEARTBEAT_SUBSYSTEM,
                    MAX_ANNOUNCED_PROXIES, MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL, MISSED_HEARTBEATS,
                    NODES_SUBSYSTEM, TUNNEL_LOGIN, TUNNEL_PORT, heartbeat_interval, heartbeat_timing, new_session_id,
                    parse_session_origin)
from . import forwarding
from .framing import MAX_HEARTBEAT_LINE, MAX_REQUEST, TINY_BEAT, is_tiny_beat, parse_heartbeat, read_bounded, too_long

log = logging.getLogger("gatehouse.tunnel.agent")

#: Redials back off from FIRST_BACKOFF to MAX_BACKOFF seconds (doubling, each delay randomised by ±50%).
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: After a tunnel drops, the first redial waits a random part of this (seconds): when a root proxy
#: restarts, its leaves do not all dial it in the same instant.
RECONNECT_SPREAD = 3.0
#: Dials in a row that may land on root proxies this leaf already holds, per held proxy, before it
#: stops redialling at once and backs off: a root may announce proxies that no dial ever reaches.
DUPLICATE_DIALS_PER_PROXY = 8
#: Tunnels kept per root after their root proxy said it hands over to a new process (a reload), for
#: the sessions still running on them; one more closes the oldest, so a root saying it all the time
#: cannot make a leaf hold ever more tunnels.
MAX_HANDED_OVER = 4


class _LeafSide(CertificateOnlyServer):
    """SSH server end of one tunnel: trusts only its root's tunnel certificate."""

    def __init__(self, link: "RootLink"):
        self.link = link
        self.conn = None

    def validate_public_key(self, username, key) -> bool:
        return False

    def validate_ca_key(self, username: str, key) -> bool:
        ca = self.link.pool.cache.user_ca(key.export_public_key().decode())
        ok = (username == TUNNEL_LOGIN and ca is not None and not ca.get("local")
              and ca["cluster_name"] == self.link.root)
        if not ok:
            log.warning("tunnel: the peer at %s is not a proxy of root cluster %s; closing", self.link.addr,
                        self.link.root)
        return ok

    def connection_made(self, conn):
        self.conn = conn
        self.link.pool.limits.admit(conn)

    def auth_completed(self):
        self.link.pool.limits.authenticated(self.conn)

    def connection_lost(self, exc):
        self.link.pool.limits.lost(self.conn)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        self.link.pool.limits.check_channel(self.conn)
        try:
            host, port, node = resolve_node(self.link.pool.cache, dest_host, dest_port)
        except GatehouseError as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        # The root proxy names the session id in the originator field (a root that sends none is older:
        # the id is chosen here); this proxy signs it for its own node (member/session_header.py).
        sid = parse_session_origin(orig_host) or new_session_id()
        name = node["metadata"]["name"]
        log.debug("tunnel: root %s opens a channel to node %s (%s:%d), session %s", self.link.root, name, host, port, sid)
        pool = self.link.pool
        return forward_to_node(host, port, lambda nonce: make_header(pool.ident, name, sid, nonce, self.link.root,
                                                                     pool.name))

    def server_requested(self, listen_host, listen_port):
        return False


class RootLink:
    """All tunnels from this leaf proxy to one root cluster."""

    def __init__(self, pool: "TunnelAgentPool", root: str, tunnel_addr: str, discover_from: RootWebClient | None = None,
                 mode: str = "default"):
        self.pool = pool
        self.root = root
        #: The trusted cluster's heartbeat mode, and the interval it beats with.
        self.mode = mode
        self.interval = heartbeat_timing(mode)[0]
        self.configured_addr = tunnel_addr
        #: Where to dial now: the configured address, or what the root advertises today.
        self.addr = tunnel_addr
        #: The root's web API, asked for its tunnel address when that was not set explicitly.
        self.discover_from = discover_from
        self.links: dict[str, asyncssh.SSHServerConnection] = {}
        #: Tunnels whose root proxy hands over to a new process, oldest first (kept while in use).
        self.handed_over: list[asyncssh.SSHServerConnection] = []
        self.announced: set[str] = set()
        #: Dials in a row that landed on a proxy already held (reset by a new proxy or a new announcement).
        self.duplicates = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._maintain(), name=f"tunnel-agent-{self.root}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
        for conn in [*self.links.values(), *self.handed_over]:
            conn.close()
        self.links.clear()
        self.handed_over.clear()
        await self._report()

    def _missing(self) -> bool:
        return not self.links or bool(self.announced - set(self.links))

    async def _maintain(self) -> None:
        backoff = FIRST_BACKOFF
        while not listeners.draining():  # a draining process dials no more: its successor does
            if not self._missing():
                self._wake.clear()
                if not await wait_event(self._wake, self.pool.summary_interval):
                    await self._report()
                    continue
                if self._missing():  # a tunnel dropped: redial soon, not all leaves of a fleet at once
                    await asyncio.sleep(random.random() * RECONNECT_SPREAD)
                continue
            outcome = await self._dial()
            if outcome == "new":
                backoff = FIRST_BACKOFF
                self.duplicates = 0
                continue
            if outcome == "unreachable":
                await self._rediscover()
            if outcome == "duplicate":
                self.duplicates += 1
            if outcome == "duplicate" and self.duplicates < DUPLICATE_DIALS_PER_PROXY * max(1, len(self.links)):
                delay = 0.1  # the load balancer sent us to a proxy we already hold: retry soon
            else:
                if outcome == "duplicate" and self.duplicates == DUPLICATE_DIALS_PER_PROXY * max(1, len(self.links)):
                    log.warning("tunnel: root %s announces proxies (%s) that %d dials in a row to %s did not reach; "
                                "dialling with backoff", self.root,
                                ", ".join(sorted(self.announced - set(self.links))), self.duplicates, self.addr)
                delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            await asyncio.sleep(delay * (0.5 + random.random()))

    async def _dial(self) -> str:
        host, port = split_hostport(self.addr, TUNNEL_PORT)
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        log.debug("tunnel: dialling root %s at %s", self.root, self.addr)
        try:
            conn = await asyncssh.connect_reverse(
                host, port, server_factory=lambda: _LeafSide(self), process_factory=lambda p: self._serve(p, ready),
                config=None, connect_timeout=10,
                # No SSH keepalives: the heartbeats are the liveness check, and nothing else is sent idle.
                **server_options(self.pool.host_keypair, max_pktsize=CARRIER_MAX_PKTSIZE,
                                 keepalive_interval=0, login_timeout=15))
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            log.info("tunnel: cannot connect to root %s at %s: %s; retrying", self.root, self.addr, exc or
                     exc.__class__.__name__)
            return "unreachable"
        _give_up_unacknowledged(conn, MISSED_HEARTBEATS * self.interval + 5)
        try:
            proxy = await asyncio.wait_for(asyncio.shield(ready), MISSED_HEARTBEATS * self.interval + 5)
        except asyncio.TimeoutError:
            log.info("tunnel: root %s at %s did not start heartbeats; retrying", self.root, self.addr)
            conn.close()
            return "failed"
        if not proxy:  # its first heartbeat was refused (_check_hello logged why) and the tunnel closed
            conn.close()
            return "failed"
        if proxy in self.links:
            conn.close()
            return "duplicate"
        self.links[proxy] = conn
        log.info("tunnel: connected to root %s proxy %s via %s", self.root, proxy, self.addr)
        self.pool.audit.emit("tunnel.connect", root=self.root, proxy=proxy, addr=self.addr)
        await self._report()
        asyncio.create_task(self._watch(proxy, conn))
        return "new"

    async def _rediscover(self) -> None:
        """The root may have moved its tunnel listener since the handshake: ask its web proxy where it is now."""
        if not self.discover_from:
            return
        addr = await self.discover_from.tunnel_addr()
        if addr and addr != self.addr:
            log.info("tunnel: root %s now advertises its tunnel address %s (was %s)", self.root, addr, self.addr)
            self.addr = addr

    async def _watch(self, proxy: str, conn) -> None:
        await conn.wait_closed()
        if self.links.get(proxy) is conn:
            del self.links[proxy]
            log.info("tunnel: lost the tunnel to root %s proxy %s; reconnecting", self.root, proxy)
            self.pool.audit.emit("tunnel.disconnect", root=self.root, proxy=proxy, addr=self.addr)
            self._wake.set()
            await self._report()

    async def _report(self) -> None:
        if listeners.draining():
            return  # the successor reports its own tunnels
        try:
            await self.pool.client.call("POST", "/v1/tunnels/agent_status",
                                        {"cluster": self.root, "proxies": sorted(self.links),
                                         "interval": self.pool.summary_interval, "tunnel_addr": self.addr})
        except GatehouseError as exc:
            log.debug("cannot report tunnel status: %s", exc)

    # -- sessions the root opens on the tunnel ---------------------------------------
    async def _serve(self, process: asyncssh.SSHServerProcess, ready: asyncio.Future) -> None:
        try:
            if process.subsystem == HEARTBEAT_SUBSYSTEM:
                await self._heartbeats(process, ready)
            elif process.subsystem == NODES_SUBSYSTEM:
                await self._list_nodes(process)
            elif process.subsystem == ACCESS_SUBSYSTEM:
                await self._check_access(process)
            elif process.subsystem == AUDIT_SUBSYSTEM:
                await forwarding.serve(self, process)
            else:
                process.stderr.write(b"this is a gatehouse tunnel; sessions are not available\n")
        except (asyncssh.Error, OSError, ValueError, asyncio.TimeoutError, GatehouseError) as exc:
            log.debug("tunnel: session on the tunnel to %s ended: %s", self.root, exc)
        finally:
            process.exit(0)

    def _beat_object(self) -> dict:
        beat = {"cluster": self.pool.cache.cluster_name, "proxy": self.pool.name, "interval": self.interval,
                "mode": self.mode, "protocol": HEARTBEAT_PROTOCOL, "audit": self._forwards_audit()}
        revoked = self.pool.cache.revoked_keys("proxy")
        if revoked:  # the root closes and refuses tunnels of this leaf's revoked proxies
            beat["revoked"] = revoked
        if listeners.draining():  # this process hands over: the root routes new sessions elsewhere
            beat["draining"] = True
        return beat

    def _forwards_audit(self) -> bool:
        """Whether this leaf forwards its audit to the root (its trusted_cluster's forward_audit): the root
        asks for events only while this says so, so a leaf that keeps its audit costs the root nothing."""
        return any(tc["metadata"]["name"] == self.root and bool(tc["spec"].get("forward_audit"))
                   for tc in self.pool.cache.trusted_roots())

    async def _heartbeats(self, process, ready: asyncio.Future) -> None:
        interval = self.interval
        #: The root's protocol and how often it beats (from its hello; until then, as this end does).
        root = {"protocol": 1, "interval": interval}

        async def beat():
            sent = None
            while True:
                current = self._beat_object()
                if root["protocol"] >= HEARTBEAT_PROTOCOL and current == sent:
                    process.stdout.write(TINY_BEAT)  # nothing changed: the smallest beat there is
                else:
                    process.stdout.write(json.dumps(current).encode() + b"\n")
                    sent = current
                await listeners.sleep_or_drain(interval)

        sender = asyncio.create_task(beat())
        last_valid, warned, hello_seen = time.monotonic(), False, False
        try:
            while True:
                # Only a valid beat counts: a root sending anything else still misses its beats.
                wait = MISSED_HEARTBEATS * (root["interval"] if hello_seen else interval) + 1
                raw = await asyncio.wait_for(process.stdin.readline(), max(wait - (time.monotonic() - last_valid), 0.1))
                if not raw:
                    return
                if too_long(raw):
                    log.warning("tunnel: root %s sent a heartbeat line longer than %d bytes; closing the tunnel",
                                self.root, MAX_HEARTBEAT_LINE)
                    process.channel.get_connection().close()
                    return
                if raw.endswith(b"\n") and is_tiny_beat(raw[:-1]):
                    if hello_seen:
                        last_valid = time.monotonic()
                    continue
                hello = parse_heartbeat(raw)
                if hello is None or not _names_list(hello.get("proxies", [])):
                    if not warned:
                        warned = True
                        log.warning("tunnel: root %s sent a heartbeat that is not a JSON object with a list of "
                                    "proxies; ignoring it and any more like it", self.root)
                    continue
                proxy, announced, root_interval = self._check_hello(hello)  # a hostile hello closes the tunnel
                protocol = hello.get("protocol")
                root["protocol"] = HEARTBEAT_PROTOCOL if isinstance(protocol, int) and protocol >= 2 else 1
                root["interval"] = root_interval
                hello_seen = True
                last_valid = time.monotonic()
                if hello.get("draining") is True:
                    self._release(process.channel.get_connection())
                if not ready.done():
                    ready.set_result(proxy)
                if announced != self.announced:
                    log.info("tunnel: root %s announces proxies %s", self.root, ", ".join(sorted(announced)))
                    self.announced = announced
                    self.duplicates = 0
                    self._wake.set()
        except asyncio.TimeoutError:
            log.warning("tunnel: root %s missed %d heartbeats; reconnecting", self.root, MISSED_HEARTBEATS)
            process.channel.get_connection().close()
        except ValueError as exc:
            log.warning("tunnel: root %s at %s: %s; closing this tunnel", self.root, self.addr, exc)
            process.channel.get_connection().close()
        finally:
            if not ready.done():
                ready.set_result("")
            sender.cancel()

    def _release(self, conn) -> None:
        """The root proxy on CONN hands over to a new process: what runs on CONN goes on, and this
        leaf dials again (the new process holds the listener now)."""
        for proxy, held in list(self.links.items()):
            if held is conn:
                del self.links[proxy]
                log.info("tunnel: root %s proxy %s is handing over to a new process; dialling it", self.root, proxy)
                self.handed_over = [c for c in self.handed_over if not c.is_closed()] + [conn]
                while len(self.handed_over) > MAX_HANDED_OVER:
                    self.handed_over.pop(0).close()
                self._wake.set()

    def _check_hello(self, hello: dict) -> tuple[str, set[str], float]:
        """(proxy, announced proxies, how often it beats) of one root heartbeat; ValueError saying what is
        wrong with it. Proxy names are resource names, a root announces at most MAX_ANNOUNCED_PROXIES of
        them, and its interval is within the bounds (it decides how long this end waits for it)."""
        names = hello.get("proxies") or []
        if len(names) > MAX_ANNOUNCED_PROXIES:
            raise ValueError(f"the root's heartbeat announces {len(names)} proxies, more than {MAX_ANNOUNCED_PROXIES}")
        for name in [hello.get("proxy"), *names]:
            try:
                validate_name(name, "root proxy name")
            except BadParameter as exc:
                raise ValueError(f"the root's heartbeat names a proxy badly ({str(exc)[:120]!r})") from None
        root_interval = heartbeat_interval(hello.get("interval", self.interval))
        if root_interval is None:
            raise ValueError(f"the root's heartbeat announces the interval {str(hello.get('interval'))[:40]!r}, not a "
                             f"number of seconds from {MIN_HEARTBEAT_INTERVAL:g} to {MAX_HEARTBEAT_INTERVAL:g}")
        return hello["proxy"], set(names), root_interval

    @staticmethod
    async def _read_request(process) -> dict:
        """The root's one JSON object; BadParameter (answered to the root) when too large or not an object."""
        text = await asyncio.wait_for(read_bounded(process.stdin, MAX_REQUEST, "the request on the tunnel"), 10)
        try:
            request = json.loads(text or b"{}")
        except (ValueError, UnicodeDecodeError):
            request = None
        if not isinstance(request, dict):
            raise BadParameter("the request on the tunnel is not a JSON object")
        return request

    async def _list_nodes(self, process) -> None:
        try:
            request = await self._read_request(process)
        except BadParameter as exc:
            process.stdout.write(json.dumps(exc.to_dict()).encode())
            return
        log.debug("tunnel: root %s lists the nodes %r may see", self.root, str(request.get("user"))[:100])
        cache = self.pool.cache
        ca = cache.active_root_user_ca(self.root)
        result: dict = {"items": [], "mapped_roles": []}
        if ca is not None:
            checker, mapped, denial = self.pool.checkers.checker(
                self.root, list(request.get("roles") or []), dict(request.get("traits") or {}),
                list(request.get("logins") or []), ca)
            result["mapped_roles"] = mapped
            if checker is None:
                result["denied"] = denial.reason
            else:
                result["items"] = [n for n in cache.nodes()
                                   if checker.can_see_node(n["metadata"]["name"], n["metadata"]["labels"])]
        process.stdout.write(json.dumps(result).encode())

    async def _check_access(self, process) -> None:
        """Explain a root user's SSH access to a node here, as this leaf's `gatectl access check --from` does."""
        try:
            request = await self._read_request(process)
            answer = self._explain(request)
        except GatehouseError as exc:
            request, answer = {}, exc.to_dict()
        log.debug("tunnel: root %s asked about %s as %s on %s: %s", self.root, request.get("user"),
                  request.get("login"), request.get("node"), answer.get("reason") or answer.get("error"))
        process.stdout.write(json.dumps(answer).encode())

    def _explain(self, request: dict) -> dict:
        cache = self.pool.cache
        ca = cache.active_root_user_ca(self.root)
        if ca is None:
            raise AccessDenied(f'cluster "{cache.cluster_name}" does not trust "{self.root}" now (disabled or '
                               f"removed); see 'gatectl get tc' on the leaf")
        name = str(request.get("node") or "")
        node = cache.node(name)
        if node is None:
            raise NotFound(node_not_registered(cache.cluster_name, name))
        return explain_ssh(cache.cluster_name, cache.roles(), node, str(request.get("login") or ""),
                           user=str(request.get("user") or ""), roles=[str(r) for r in request.get("roles") or []],
                           traits=dict(request.get("traits") or {}),
                           principals=[str(p) for p in request.get("logins") or []], from_cluster=self.root, ca=ca)


class TunnelAgentPool:
    """Keeps one RootLink per enabled trusted cluster, following the cluster cache."""

    def __init__(self, ctx: MemberContext):
        self.cfg = ctx.cfg
        self.cache = ctx.cache
        self.checkers = ctx.checkers
        self.client = ctx.client
        self.audit = ctx.audit
        self.name = ctx.name
        self.ident = ctx.ident
        #: How often each link reports its tunnels to auth when nothing changed (it reports changes at once).
        self.summary_interval = ctx.cfg.proxy.presence_interval
        self.host_keypair = ctx.ident.ssh_host_keypair()
        ctx.ident.on_renewed(self._reload_host_keypair)
        self.links: dict[str, RootLink] = {}
        self._lock = asyncio.Lock()
        # Root proxies open one channel per user session on a tunnel: the proxy's session cap applies.
        self.limits = ListenerLimits("this leaf proxy's tunnels", "proxy_service", max_startups=2 ** 31,
                                     max_channels=ctx.cfg.proxy.max_sessions, max_sessions=ctx.cfg.proxy.max_sessions)

    def _reload_host_keypair(self) -> None:
        """The renewed host certificate is presented on the next tunnels dialled; open ones keep theirs."""
        self.host_keypair = self.ident.ssh_host_keypair()

    async def start(self) -> None:
        self.cache.on_change(self._reconcile)
        await self._reconcile()
        listeners.serving("tunnel agent", None, self.limits, channels_when_idle=1)
        listeners.before_ready(self.wait_connected)

    async def wait_connected(self, timeout: float) -> None:
        """Until a tunnel reaches every trusted root (at most TIMEOUT seconds): a process taking
        over from another (reload) is ready for the root's sessions before the old one drains."""
        deadline = time.monotonic() + timeout
        while any(not link.links for link in self.links.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for link in list(self.links.values()):
            await link.stop()
        self.links.clear()

    async def _reconcile(self) -> None:
        async with self._lock:
            wanted = {tc["metadata"]["name"]: tc for tc in self.cache.trusted_roots()}
            for name, link in list(self.links.items()):
                if name not in wanted or tunnel_dial_addr(wanted[name]) != link.configured_addr or \
                        _mode_of(wanted[name]) != link.mode:
                    log.info("tunnel: closing the tunnels to root %s (trust disabled, removed, moved or its heartbeat "
                             "mode changed)", name)
                    await link.stop()
                    del self.links[name]
            for name, tc in wanted.items():
                if name not in self.links:
                    web = RootWebClient(tc["spec"]["web_proxy_addr"], self.cfg.insecure)
                    link = RootLink(self, name, tunnel_dial_addr(tc), web if tunnel_addr_is_discovered(tc) else None,
                                    mode=_mode_of(tc))
                    log.info("tunnel: starting tunnels to root %s at %s (heartbeat mode %s, every %gs)", name,
                             link.addr, link.mode, link.interval)
                    self.links[name] = link
                    link.start()


def _names_list(value) -> bool:
    """Whether a heartbeat's proxies field has the shape of a list of names (what it names is checked apart)."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _mode_of(tc: dict) -> str:
    return tc["spec"].get("heartbeat_mode") or "default"


def _give_up_unacknowledged(conn, seconds: float) -> None:
    """Let the kernel close CONN when data it sent stays unacknowledged for SECONDS (TCP_USER_TIMEOUT):
    the beats this end sends then notice a root that vanished without a word, without waiting for
    the root's own, rarer beats."""
    sock = conn.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
    except OSError as exc:
        log.debug("tunnel: cannot set TCP_USER_TIMEOUT: %s", exc)
