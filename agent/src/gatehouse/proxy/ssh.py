"""The SSH proxy (port 3023): authenticate the user, route, and only pipe bytes.

Two ways in, one router:
* a standard `direct-tcpip` channel (what `ssh -J` / ProxyJump and `gate ssh` send);
* the subsystem `proxy:HOST:PORT@CLUSTER` (for ProxyCommand-style clients).
HOST is a node name, `name.cluster`, or a registered address. Only registered nodes
are reachable, never arbitrary addresses. The SSH session inside is end-to-end
between the client and the node; the proxy never sees it in clear.
"""

from __future__ import annotations

import asyncio
import logging
import re

import asyncssh

from ..config import PROXY_SSH_PORT, Config, split_hostport
from ..errors import GatehouseError, NotFound
from ..sshparams import CARRIER_MAX_PKTSIZE, COMPRESSION_ALGS, ENCRYPTION_ALGS
from ..node.authorize import Authorizer
from ..sshserver import CertAuthServer, CertUser

log = logging.getLogger("gatehouse.proxy.ssh")

_SUBSYSTEM = re.compile(r"^proxy:(?P<host>[^:@\s]+|\[[^\]]+\]):(?P<port>\d{1,5})(?:@(?P<cluster>[^@\s]+))?$")


class Router:
    """Resolve a requested destination to a registered node of this cluster."""

    def __init__(self, cache):
        self.cache = cache

    def split_cluster(self, host: str, cluster: str | None) -> tuple[str, str]:
        """`node.leaf` → (node, leaf) for this cluster and every registered leaf; else this cluster."""
        local = self.cache.cluster_name
        if cluster:
            return host, cluster
        snap = self.cache.snapshot
        names = [local] + [c["metadata"]["name"] for c in snap.get("remote_clusters", []) + snap.get("trusted_clusters", [])]
        for name in sorted(names, key=len, reverse=True):
            if host.endswith("." + name):
                return host[: -len(name) - 1], name
        return host, local

    def resolve_local(self, host: str, port: int) -> tuple[str, int, dict]:
        for node in self.cache.nodes():
            meta, spec = node["metadata"], node["spec"]
            node_host, node_port = split_hostport(spec["addr"], 3022)
            if host in (meta["name"], spec.get("hostname")) or (host == node_host and port == node_port):
                return node_host, node_port, node
        raise NotFound(f'node "{host}" is not registered in cluster "{self.cache.cluster_name}"; '
                       f"list nodes with 'gate ls'")


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
        match = _SUBSYSTEM.match(subsystem)
        if not match:
            return False
        self.spec = (match["host"].strip("[]"), int(match["port"]), match["cluster"])
        return True

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
        super().__init__(proxy.cache.user_ca, proxy.cache.cluster_name)
        self.proxy = proxy

    def auth_ok(self, user: CertUser) -> None:
        log.debug("proxy: %s authenticated from %s", user.name, user.peer)

    def session_requested(self):
        return _SubsystemSession(self)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        return self._forward(dest_host, dest_port)

    async def _forward(self, dest_host: str, dest_port: int):
        try:
            host, port, tunnel = self.proxy.route(self.user, dest_host, dest_port, None)
            if tunnel is not None:
                return await self.conn.forward_tunneled_connection(tunnel.conn, host, port)
            return await self.conn.forward_connection(host, port)
        except GatehouseError as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None

    async def open_target(self, host: str, port: int, cluster: str | None, protocol: TargetProtocol):
        host, port, tunnel = self.proxy.route(self.user, host, port, cluster)
        if tunnel is not None:
            chan, _ = await tunnel.conn.create_connection(lambda: protocol, host, port)
            return chan
        transport, _ = await asyncio.get_running_loop().create_connection(lambda: protocol, host, port)
        return transport


class ProxySSH:
    def __init__(self, cfg: Config, ident, cache, audit, tunnels=None):
        self.cfg = cfg
        self.ident = ident
        self.cache = cache
        self.audit = audit
        self.tunnels = tunnels
        self.router = Router(cache)
        self.authorizer = Authorizer(cache)
        self.server = None
        self.port = 0

    def route(self, user: CertUser, host: str, port: int, cluster: str | None):
        """(host, port, tunnel): a local node's address (tunnel None), or a leaf node's name and its tunnel."""
        host, cluster = self.router.split_cluster(host, cluster)
        if cluster != self.cache.cluster_name:
            return host, port, self._leaf_tunnel(user, cluster)
        node_host, node_port, node = self.router.resolve_local(host, port)
        log.debug("proxy: routing %s to node %s (%s:%d)", user.name, node["metadata"]["name"], node_host, node_port)
        return node_host, node_port, None

    def _leaf_tunnel(self, user: CertUser, cluster: str):
        rc = next((r for r in self.cache.snapshot.get("remote_clusters", []) if r["metadata"]["name"] == cluster), None)
        if rc is None or self.tunnels is None or user.cluster != self.cache.cluster_name:
            raise NotFound(f'cluster "{cluster}" is not found; list clusters with \'gate clusters\'')
        checker, _, _ = self.authorizer.checker(user.cluster, user.cert.roles, user.cert.traits,
                                                list(user.cert.principals), user.ca)
        decision = checker.check_cluster(cluster, rc["metadata"].get("labels") or {})
        if not decision.allowed:
            self.audit.emit("session.denied", success=False, user=user.name, cluster=cluster, reason=decision.reason)
            raise NotFound(f'cluster "{cluster}" is not found; list clusters with \'gate clusters\'')
        log.debug("proxy: routing %s to leaf cluster %s", user.name, cluster)
        return self.tunnels.tunnel_for(cluster)

    async def start(self) -> None:
        host, port = split_hostport(self.cfg.proxy.listen_addr, PROXY_SSH_PORT)
        self.server = await asyncssh.create_server(
            lambda: _ProxyConnection(self), host or None, port, server_host_keys=[self.ident.ssh_host_keypair()],
            encoding=None, encryption_algs=ENCRYPTION_ALGS, compression_algs=COMPRESSION_ALGS,
            max_pktsize=CARRIER_MAX_PKTSIZE, allow_scp=False, agent_forwarding=False, x11_forwarding=False,
            keepalive_interval=30, login_timeout=30, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("SSH proxy listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
