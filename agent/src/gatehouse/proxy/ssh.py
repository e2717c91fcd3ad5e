"""The SSH proxy (port 3023): authenticate the user, route, and only pipe bytes.

Two ways in, one router:
* a standard `direct-tcpip` channel (what `ssh -J` / ProxyJump and `gate ssh` send);
* the subsystem `proxy:HOST:PORT@CLUSTER` (for ProxyCommand-style clients).
HOST is a registered node name or `name.cluster`; never an address or a node's
self-reported hostname, and a local node only when the user's roles let them see it.
The proxy dials the address auth recorded for the node. The SSH session inside is
end-to-end between the client and the node; the proxy never sees it in clear.
"""

from __future__ import annotations

import asyncio
import logging

import asyncssh

from .. import listeners
from ..config import split_hostport
from ..errors import GatehouseError
from ..member.context import MemberContext
from ..member.routing import can_see_node, cluster_not_found, node_not_found, resolve_node, split_cluster, visible_leaf
from ..member.session_header import connect_to_node, forward_to_node, make_header
from ..sshparams import CARRIER_MAX_PKTSIZE, server_options
from ..sshserver import CertAuthServer, CertUser, ListenerLimits
from ..wire import PROXY_SSH_PORT, new_session_id, parse_proxy_subsystem, session_origin

log = logging.getLogger("gatehouse.proxy.ssh")


class TargetProtocol(asyncio.Protocol):
    """Pipes bytes from the target (a TCP socket, or a channel through a leaf tunnel) back into
    the user's channel, with flow control both ways."""

    def __init__(self, chan):
        self.chan = chan

    def session_started(self):
        """Tunnel channels (asyncssh SSHTCPSession) call this once open; nothing to do."""

    def data_received(self, data, datatype=None):
        self.chan.write(data)

    def eof_received(self):
        self.chan.write_eof()
        return True

    def pause_writing(self):
        self.chan.pause_reading()

    def resume_writing(self):
        self.chan.resume_reading()

    def connection_lost(self, exc):
        self.chan.close()


class _SubsystemSession(asyncssh.SSHServerSession):
    def __init__(self, proxy_conn: "_ProxyConnection"):
        self.proxy_conn = proxy_conn
        self.chan = None
        self.target = None
        self.spec = None
        self._early: list[bytes] = []  # bytes that arrive before the target is connected
        self._early_eof = False

    def connection_made(self, chan):
        self.chan = chan

    def pty_requested(self, *args):
        return False

    def shell_requested(self):
        return False

    def exec_requested(self, command):
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        self.spec = parse_proxy_subsystem(subsystem)
        return self.spec is not None

    def session_started(self):
        self.chan.pause_reading()
        asyncio.ensure_future(self._connect())

    async def _connect(self):
        try:
            self.target = await self.proxy_conn.open_target(*self.spec, TargetProtocol(self.chan))
            for data in self._early:
                self.target.write(data)
            self._early.clear()
            if self._early_eof:
                self.target.write_eof()
            self.chan.resume_reading()
        except (GatehouseError, OSError, asyncssh.ChannelOpenError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            self.chan.write_stderr(f"gatehouse: {reason}\n".encode())
            self.chan.exit(1)

    def data_received(self, data, datatype):
        if self.target is None:
            self._early.append(data)
        else:
            self.target.write(data)

    def eof_received(self):
        if self.target is not None:
            self.target.write_eof()
        else:
            self._early_eof = True
        return True

    def pause_writing(self):
        if self.target is not None:
            self.target.pause_reading()

    def resume_writing(self):
        if self.target is not None:
            self.target.resume_reading()

    def connection_lost(self, exc):
        if self.target is not None:
            self.target.close()


class _ProxyConnection(CertAuthServer):
    server_kind = "this proxy"

    def __init__(self, proxy: "ProxySSH"):
        super().__init__(proxy.cache.user_ca, proxy.cache.cluster_name, proxy.limits)
        self.proxy = proxy

    def auth_ok(self, user: CertUser) -> None:
        log.debug("proxy: %s authenticated from %s", user.name, user.peer)

    def session_requested(self):
        self.check_channel()
        return _SubsystemSession(self)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        self.check_channel()
        return self._forward(dest_host, dest_port)

    async def _forward(self, dest_host: str, dest_port: int):
        from asyncssh.forward import SSHForwarder
        sid = new_session_id()
        try:
            host, port, tunnel = self.proxy.route(self.user, dest_host, dest_port, None, sid)
            if tunnel is not None:
                # The session id travels in the originator field; the leaf proxy sends it on to its node.
                _unused, peer = await tunnel.conn.create_connection(SSHForwarder, host, port, session_origin(sid), 0)
                return SSHForwarder(peer)
            return await forward_to_node(host, port, self.proxy.answer(sid, dest_host))
        except GatehouseError as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None

    async def open_target(self, host: str, port: int, cluster: str | None, protocol: TargetProtocol):
        sid = new_session_id()
        node = host
        host, port, tunnel = self.proxy.route(self.user, host, port, cluster, sid)
        if tunnel is not None:
            chan, _unused = await tunnel.conn.create_connection(lambda: protocol, host, port, session_origin(sid), 0)
            return chan
        transport, _unused = await connect_to_node(lambda: protocol, host, port, self.proxy.answer(sid, node))
        return transport


class ProxySSH:
    def __init__(self, ctx: MemberContext, tunnels=None):
        self.ctx = ctx
        self.cache = ctx.cache
        self.audit = ctx.audit
        self.tunnels = tunnels
        self.server = None
        self.port = 0
        cfg = ctx.cfg.proxy
        self.limits = ListenerLimits("this proxy", "proxy_service", max_startups=cfg.max_startups,
                                     max_channels=cfg.max_channels_per_connection, max_sessions=cfg.max_sessions)

    def route(self, user: CertUser, host: str, port: int, cluster: str | None, sid: str | None = None):
        """(host, port, tunnel): a local node's address (tunnel None), or a leaf node's name and its tunnel.
        SID is the session id this proxy gives the connection: its route (or denial) is audited with it."""
        host, cluster = split_cluster(self.cache, host, cluster)
        if cluster != self.cache.cluster_name:
            tunnel = self._leaf_tunnel(user, cluster, sid, host)
            self.audit.emit("session.route", user=user.name, cluster=cluster, node=host, addr=user.peer, sid=sid)
            return host, port, tunnel
        node_host, node_port, node = resolve_node(self.cache, host, port)
        if not can_see_node(self.ctx.checkers, user, node):
            self.audit.emit("session.denied", success=False, user=user.name, node=host, sid=sid,
                            reason=f'the user\'s roles do not let them see node "{host}"')
            raise node_not_found(self.cache, host)
        log.debug("proxy: routing %s to node %s (%s:%d)", user.name, node["metadata"]["name"], node_host, node_port)
        self.audit.emit("session.route", user=user.name, cluster=cluster, node=node["metadata"]["name"],
                        addr=user.peer, sid=sid)
        return node_host, node_port, None

    def answer(self, sid: str, node: str):
        """nonce -> the signed session answer this proxy gives a node of its cluster (member/session_header.py)."""
        name, _unused = split_cluster(self.cache, node, None)
        return lambda nonce: make_header(self.ctx.ident, name, sid, nonce, self.cache.cluster_name, self.ctx.name)

    def _leaf_tunnel(self, user: CertUser, cluster: str, sid: str | None = None, node: str = ""):
        if self.tunnels is None:
            raise cluster_not_found(cluster)
        _unused, decision = visible_leaf(self.cache, self.ctx.checkers, user, cluster)
        if not decision.allowed:
            self.audit.emit("session.denied", success=False, user=user.name, cluster=cluster, node=node or None,
                            sid=sid, reason=decision.reason)
            raise cluster_not_found(cluster)
        log.debug("proxy: routing %s to leaf cluster %s", user.name, cluster)
        return self.tunnels.tunnel_for(cluster)

    async def start(self) -> None:
        host, port = split_hostport(self.ctx.cfg.proxy.listen_addr, PROXY_SSH_PORT)
        self.server = await asyncssh.create_server(
            lambda: _ProxyConnection(self), sock=listeners.listen("proxy ssh", host, port),
            **server_options(self.ctx.ident.ssh_host_keypair(), max_pktsize=CARRIER_MAX_PKTSIZE))
        listeners.serving("proxy ssh", self.server, self.limits)
        self.port = self.server.sockets[0].getsockname()[1]
        # A renewed host certificate is presented on new connections; running ones keep theirs.
        self.ctx.ident.on_renewed(lambda: self.server.update(server_host_keys=[self.ctx.ident.ssh_host_keypair()]))
        log.info("SSH proxy listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
