"""Root side: accept leaves' reverse tunnels on port 3024 and route users through them.

Each accepted tunnel is an asyncssh client connection to the leaf. The root proxy
keeps the live ones per leaf cluster, reports their heartbeats to its auth service
(which turns them into `remote_cluster` status) and drops them when the leaf's host CA
disappears (`gatectl rm rc/NAME`) or stops answering.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time

import asyncssh

from ..config import split_hostport
from ..errors import ConnectionProblem, GatehouseError, NotFound, from_dict
from ..member.context import MemberContext
from ..sshparams import CARRIER_MAX_PKTSIZE, client_options
from ..sshserver import ListenerLimits
from ..wire import (ACCESS_SUBSYSTEM, HEARTBEAT_SUBSYSTEM, MISSED_HEARTBEATS, NODES_SUBSYSTEM, TUNNEL_LOGIN,
                    TUNNEL_PORT, TUNNEL_PRINCIPAL)
from .framing import (MAX_ANSWER, MAX_HEARTBEAT_LINE, TooLarge, heartbeat_interval, heartbeat_name,
                      parse_heartbeat, read_bounded, too_long)

log = logging.getLogger("gatehouse.tunnel.server")


class _RootSide(asyncssh.SSHClient):
    """Identifies the leaf by the host CA that signed its tunnel certificate."""

    def __init__(self, server: "TunnelServer"):
        self.server = server
        self.leaf = ""
        self.peer = ""
        self.conn = None
        self.counted = False

    def connection_made(self, conn):
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        self.conn = conn
        self.counted = self.server.limits.admit(conn)  # pre-auth cap on 3024

    def auth_completed(self):
        if self.counted:
            self.server.limits.authenticated(self.conn)

    def connection_lost(self, exc):
        if self.counted:
            self.server.limits.lost(self.conn)

    def validate_host_ca_key(self, host, addr, port, key) -> bool:
        leaf = self.server.cache.leaf_of_host_ca(key.export_public_key().decode())
        if not leaf:
            log.info("tunnel: rejected a connection from %s: its host CA belongs to no trusted leaf "
                     "(removed, or never joined)", self.peer)
            return False
        self.leaf = leaf
        return True


class LeafTunnel:
    """One live tunnel to a leaf: heartbeats both ways, status reports, routing."""

    def __init__(self, server: "TunnelServer", leaf: str, conn: asyncssh.SSHClientConnection, peer: str):
        self.server = server
        self.leaf = leaf
        self.conn = conn
        self.peer = peer
        self.leaf_proxy = ""
        self.last_seen = time.monotonic()
        self.closed = asyncio.Event()

    async def run(self) -> None:
        interval = self.server.interval
        registered = False
        try:
            writer, reader, _ = await self.conn.open_session(subsystem=HEARTBEAT_SUBSYSTEM, encoding="utf-8")
            sender = asyncio.create_task(self._send_hello(writer, interval))
            warned = False
            try:
                while True:
                    # Only a valid heartbeat counts: a leaf sending anything else still misses its beats.
                    left = MISSED_HEARTBEATS * interval + 1 - (time.monotonic() - self.last_seen)
                    line = await asyncio.wait_for(reader.readline(), max(left, 0.1))
                    if not line:
                        break
                    if too_long(line):
                        raise ValueError(f"it sent a heartbeat line longer than {MAX_HEARTBEAT_LINE} bytes")
                    beat = parse_heartbeat(line)
                    if beat is None:
                        if not warned:
                            warned = True
                            log.warning("tunnel: leaf %s (%s) sent a heartbeat that is not a JSON object; "
                                        "ignoring it and any more like it", self.leaf, self.peer)
                        continue
                    self.leaf_proxy = heartbeat_name(beat, "proxy")
                    self.last_seen = time.monotonic()
                    if not registered:
                        registered = True
                        self.server.register(self)
                    await self.server.report(self.leaf, True, heartbeat_interval(beat, interval))
            finally:
                sender.cancel()
        except asyncio.TimeoutError:
            log.warning("tunnel: leaf %s (%s) missed %d heartbeats; closing its tunnel", self.leaf, self.peer,
                        MISSED_HEARTBEATS)
        except NotFound:
            log.info("tunnel: leaf %s is no longer registered; closing its tunnel", self.leaf)
        except (asyncssh.Error, OSError, ValueError, GatehouseError) as exc:
            log.info("tunnel: tunnel from leaf %s (%s) ended: %s", self.leaf, self.peer, exc)
        finally:
            self.conn.close()
            self.closed.set()
            if registered:
                await self.server.unregister(self)

    async def _send_hello(self, writer, interval: float) -> None:
        while True:
            hello = {"cluster": self.server.cache.cluster_name, "proxy": self.server.name,
                     "proxies": self.server.proxies, "interval": interval}
            writer.write(json.dumps(hello) + "\n")
            await asyncio.sleep(interval)

    async def ask(self, subsystem: str, request: dict) -> dict:
        """One JSON request and answer on a tunnel subsystem; an error the leaf answers is raised here."""
        writer = None
        try:
            writer, reader, _ = await self.conn.open_session(subsystem=subsystem, encoding=None)
            writer.write(json.dumps(request).encode())
            writer.write_eof()
            text = await asyncio.wait_for(read_bounded(reader, MAX_ANSWER, "the answer"), 15)
            answer = json.loads(text or b"{}")
        except TooLarge as exc:
            raise ConnectionProblem(f'cluster "{self.leaf}" answered through its reverse tunnel with more than '
                                    f"{exc.limit}, so the answer was refused; check the leaf's log") from None
        except (asyncssh.Error, OSError, asyncio.TimeoutError, ValueError) as exc:
            raise ConnectionProblem(f'cluster "{self.leaf}" did not answer through its reverse tunnel '
                                    f"({exc or exc.__class__.__name__}); try again, and check the leaf's log") from None
        finally:
            if writer is not None:
                writer.channel.close()  # a leaf still streaming is cut off here
        if not isinstance(answer, dict):
            raise ConnectionProblem(f'cluster "{self.leaf}" answered through its tunnel with something that is not a '
                                    f"JSON object")
        if "error" in answer:
            raise from_dict(answer)
        return answer

    async def list_nodes(self, identity: dict) -> dict:
        return await self.ask(NODES_SUBSYSTEM, identity)

    async def check_access(self, request: dict) -> dict:
        """The leaf's explanation of a root user's SSH access to one of its nodes (see access.explain_ssh)."""
        answer = await self.ask(ACCESS_SUBSYSTEM, request)
        if "allowed" not in answer:
            raise ConnectionProblem(f'cluster "{self.leaf}" cannot explain access yet (no answer to the access '
                                    f"check); it may run an older Gatehouse version")
        return answer

    def close(self) -> None:
        self.conn.close()


class TunnelServer:
    def __init__(self, ctx: MemberContext):
        self.cfg = ctx.cfg
        self.ident = ctx.ident
        self.cache = ctx.cache
        self.client = ctx.client
        self.audit = ctx.audit
        self.name = ctx.name
        self.interval = ctx.cfg.proxy.tunnel_heartbeat_interval
        self.proxies: list[str] = [self.name]
        self.tunnels: dict[str, list[LeafTunnel]] = {}
        proxy = ctx.cfg.proxy
        self.limits = ListenerLimits("this proxy's tunnel listener", "proxy_service", max_startups=proxy.max_startups,
                                     max_channels=proxy.max_sessions, max_sessions=proxy.max_sessions)
        self._round_robin = itertools.count()
        self._acceptor = None
        self._tasks: set[asyncio.Task] = set()
        self._heartbeat_task: asyncio.Task | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        key = self.ident.ssh_key()
        answer = await self.client.call("POST", "/v1/tunnels/cert",
                                        {"ssh_public_key": key.export_public_key().decode().strip()})
        keypair = (key, asyncssh.import_certificate(answer["ssh_cert"]))
        host, port = split_hostport(self.cfg.proxy.tunnel_listen_addr, TUNNEL_PORT)
        self._acceptor = await asyncssh.listen_reverse(
            host or None, port, client_factory=lambda: _RootSide(self), acceptor=self._accepted,
            username=TUNNEL_LOGIN, host_key_alias=TUNNEL_PRINCIPAL, encoding=None,
            keepalive_interval=self.interval, keepalive_count_max=MISSED_HEARTBEATS, login_timeout=15,
            reuse_address=True,
            **client_options(keypair, max_pktsize=CARRIER_MAX_PKTSIZE, known_hosts=([], [], [])))
        self.port = self._acceptor.sockets[0].getsockname()[1]
        self.cache.on_change(self._on_cache_change)
        self._heartbeat_task = asyncio.create_task(self._proxy_heartbeats(), name="proxy-heartbeat")
        log.info("reverse tunnel listener on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self._heartbeat_task:
            self._heartbeat_task.cancel()
        if self._acceptor:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        for tunnels in list(self.tunnels.values()):
            for t in list(tunnels):
                t.close()
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(task, 2)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass

    async def _proxy_heartbeats(self) -> None:
        """Announce this proxy (and its web port, where auth asks leaves through it) to auth; learn the
        others, so leaves dial each of them."""
        while True:
            try:
                answer = await self.client.call("POST", "/v1/proxies/heartbeat",
                                                {"interval": self.interval,
                                                 "web_listen_addr": self.cfg.proxy.web_listen_addr})
                self.proxies = answer.get("proxies") or [self.name]
            except GatehouseError as exc:
                log.warning("cannot send the proxy heartbeat: %s", exc)
            await asyncio.sleep(self.interval)

    # -- tunnels ---------------------------------------------------------------
    def _accepted(self, conn: asyncssh.SSHClientConnection) -> None:
        side: _RootSide = conn.get_owner()
        tunnel = LeafTunnel(self, side.leaf, conn, side.peer)
        log.debug("tunnel: leaf %s connected from %s", side.leaf, side.peer)
        task = asyncio.create_task(tunnel.run(), name=f"tunnel-{side.leaf}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def register(self, tunnel: LeafTunnel) -> None:
        self.tunnels.setdefault(tunnel.leaf, []).append(tunnel)
        log.info("tunnel: leaf %s is connected (from %s, leaf proxy %s)", tunnel.leaf, tunnel.peer,
                 tunnel.leaf_proxy or "?")

    async def unregister(self, tunnel: LeafTunnel) -> None:
        tunnels = self.tunnels.get(tunnel.leaf, [])
        if tunnel in tunnels:
            tunnels.remove(tunnel)
        if not tunnels:
            self.tunnels.pop(tunnel.leaf, None)
            log.info("tunnel: leaf %s is disconnected from proxy %s", tunnel.leaf, self.name)
        try:
            await self.report(tunnel.leaf, bool(tunnels), self.interval)
        except GatehouseError:
            pass

    async def report(self, leaf: str, connected: bool, interval: float) -> None:
        await self.client.call("POST", "/v1/tunnels/heartbeat",
                               {"cluster": leaf, "connected": connected, "interval": interval})

    def _on_cache_change(self) -> None:
        for leaf, tunnels in list(self.tunnels.items()):
            if not self.cache.leaf_is_trusted(leaf):
                log.info("tunnel: leaf %s was removed; dropping its %d tunnel(s)", leaf, len(tunnels))
                for t in list(tunnels):
                    t.close()

    def tunnel_for(self, leaf: str) -> LeafTunnel:
        tunnels = [t for t in self.tunnels.get(leaf, []) if not t.closed.is_set()]
        if not tunnels:
            raise ConnectionProblem(f'cluster "{leaf}" is offline: no reverse tunnel from it reaches this proxy; '
                                    f"check 'gatectl get rc/{leaf}' on the root and the leaf's trusted_cluster")
        return tunnels[next(self._round_robin) % len(tunnels)]
