"""The SSH node service (port 3022).

Accepts only user certificates from trusted, active user CAs, decides access from
the cached roles (member/checkers.py), runs sessions as the requested Unix login
(session.py), and heartbeats its name, address and labels to auth so it shows up
in `gate ls`.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import asyncssh

from ..config import split_hostport
from ..errors import GatehouseError
from ..member.context import MemberContext
from ..sshparams import SESSION_MAX_PKTSIZE, server_options
from ..sshserver import CertAuthServer, CertUser
from ..wire import NODE_PORT
from . import session

log = logging.getLogger("gatehouse.node")


class _NodeConnection(CertAuthServer):
    server_kind = "this node"

    def __init__(self, node: "NodeService"):
        super().__init__(node.cache.user_ca, node.cache.cluster_name)
        self.node = node
        self.decision = None

    def auth_ok(self, user: CertUser) -> None:
        self.decision = self.node.decide(user)

    def session_requested(self):
        if self.decision is None or not self.decision.allowed:
            reason = self.decision.reason if self.decision else "access denied: not authenticated"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        # The sftp subsystem runs the system's sftp-server as the login (session.py).
        return session.SessionProcess(self._run)

    async def _run(self, process: asyncssh.SSHServerProcess) -> None:
        await self.node.run(process, self.user, self.decision)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        allowed = (self.decision is not None and self.decision.allowed
                   and self.user.cert.extensions.get("permit-port-forwarding") is not None)
        if not allowed:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            "port forwarding is not permitted by your roles")
        self.node.audit.emit("port", user=self.user.name, login=self.user.login, node=self.node.name,
                             dest=f"{dest_host}:{dest_port}")
        return True


class NodeService:
    def __init__(self, ctx: MemberContext):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.cache = ctx.cache
        self.audit = ctx.audit
        self.name = ctx.name
        self.labels = {str(k): str(v) for k, v in ctx.cfg.ssh.labels.items()}
        self.server = None
        self._heartbeat: asyncio.Task | None = None
        #: Running sessions (their tasks) and the SSH connection each belongs to.
        self._sessions: dict[asyncio.Task, asyncssh.SSHServerConnection] = {}

    def decide(self, user: CertUser):
        cert = user.cert
        decision = self.ctx.checkers.check(user.cluster, cert.roles, cert.traits, cert.principals, user.ca,
                                         user.login, self.name, self.labels)
        fields = dict(user=user.name, login=user.login, node=self.name, user_cluster=user.cluster,
                      roles=cert.roles, addr=user.peer, reason=decision.reason, **self.identity_fields(user, decision))
        if user.cluster != self.cache.cluster_name:
            fields["mapped_roles"] = decision.roles
        if decision.allowed:
            log.debug("%s", decision.reason)
        else:
            log.info("%s (user %s from %s)", decision.reason, user.name, user.peer)
            self.audit.emit("access.denied", success=False, **fields)
        return decision

    def identity_fields(self, user: CertUser, decision) -> dict:
        """For the audit log: the single sign-on connector of the login (if any) and the traits the
        deciding roles' templates read (the root's claims, for a user of a trusted root)."""
        cert = user.cert
        return {"connector": cert.connector or None,
                "traits": self.ctx.checkers.traits_used(user.cluster, cert.roles, cert.traits, cert.principals,
                                                        user.ca, decision.roles) or None}

    async def run(self, process: asyncssh.SSHServerProcess, user: CertUser, decision) -> None:
        permit_pty = user.cert.extensions.get("permit-pty") is not None
        start = dict(user=user.name, login=user.login, node=self.name, user_cluster=user.cluster,
                     command=process.command, addr=user.peer, roles=decision.roles,
                     **self.identity_fields(user, decision))
        if process.subsystem:
            start["subsystem"] = process.subsystem
        self.audit.emit("session.start", **start)
        result = None
        self._sessions[asyncio.current_task()] = process.channel.get_connection()
        try:
            result = await session.run_session(process, user.login, node_name=self.name,
                                               env=dict(process.env or {}), permit_pty=permit_pty)
        finally:
            end = dict(user=user.name, login=user.login, node=self.name,
                       exit_status=getattr(result, "exit_status", None),
                       exit_signal=getattr(result, "exit_signal", None))
            if process.subsystem:
                end["subsystem"] = process.subsystem
            if getattr(result, "error", None):
                end["error"] = result.error.removeprefix("gatehouse: ")
            self.audit.emit("session.end", **end)
            self._sessions.pop(asyncio.current_task(), None)

    async def start(self) -> None:
        host, port = split_hostport(self.cfg.ssh.listen_addr, NODE_PORT)
        self.server = await asyncssh.create_server(
            lambda: _NodeConnection(self), host or None, port, reuse_address=True,
            **server_options(self.ctx.ident.ssh_host_keypair(), max_pktsize=SESSION_MAX_PKTSIZE))
        if port == 0:
            port = self.server.sockets[0].getsockname()[1]
        self.port = port
        # A renewed host certificate is presented on new connections; running sessions keep theirs.
        self.ctx.ident.on_renewed(lambda: self.server.update(server_host_keys=[self.ctx.ident.ssh_host_keypair()]))
        await self._send_heartbeat()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="node-heartbeat")
        log.info("node %s listening on %s:%d with labels %s", self.name, host, port, self.labels or "{}")

    def advertise_addr(self) -> str:
        if self.cfg.ssh.public_addr:
            return self.cfg.ssh.public_addr
        host, _ = split_hostport(self.cfg.ssh.listen_addr, NODE_PORT)
        return f"{host or '0.0.0.0'}:{self.port}"

    async def _send_heartbeat(self) -> None:
        await self.ctx.client.call("POST", "/v1/nodes/heartbeat", {
            "name": self.name, "addr": self.advertise_addr(), "labels": self.labels,
            "hostname": socket.gethostname(), "interval": self.cfg.heartbeat_interval})

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_interval)
            try:
                await self._send_heartbeat()
            except GatehouseError as exc:
                log.warning("node heartbeat failed: %s", exc)

    async def stop(self) -> None:
        if self._heartbeat:
            self._heartbeat.cancel()
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        # Running sessions end as if their clients left (SIGHUP, then SIGKILL after a grace
        # period), so each still writes its session.end before the audit log closes.
        sessions = dict(self._sessions)
        for conn in set(sessions.values()):
            conn.close()
        if sessions:
            log.info("node %s: ending %d running session(s)", self.name, len(sessions))
            await asyncio.wait(sessions, timeout=session.KILL_GRACE + 5)
