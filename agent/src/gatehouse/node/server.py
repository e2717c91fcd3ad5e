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
import time
from dataclasses import dataclass

import asyncssh

from .. import listeners
from ..config import split_hostport
from ..durations import format_duration
from ..errors import GatehouseError
from ..member.context import MemberContext
from ..sshparams import SESSION_MAX_PKTSIZE, server_options
from ..sshserver import CertAuthServer, CertUser, ListenerLimits
from ..wire import NODE_PORT
from . import session

log = logging.getLogger("gatehouse.node")

#: Seconds after a connection's deadline before the node closes it (its sessions close themselves first).
DEADLINE_GRACE = 2.0


class _NodeConnection(CertAuthServer):
    server_kind = "this node"

    def __init__(self, node: "NodeService"):
        super().__init__(node.cache.user_ca, node.cache.cluster_name, node.limits)
        self.node = node
        self.decision = None
        self.options: SessionOptions | None = None
        self._expiry: asyncio.TimerHandle | None = None

    def auth_ok(self, user: CertUser) -> None:
        self.decision = self.node.decide(user)
        if self.decision.allowed:
            self.options = self.node.session_options(user, time.time())
            # Sessions end themselves at the deadline with a message; whatever else is open on the
            # connection (port forwards) goes with the connection a little later.
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, self.options.deadline - time.time()) + DEADLINE_GRACE, self._expire)

    def _expire(self) -> None:
        log.info("closing the connection of %s from %s: %s", self.user.name, self.user.peer,
                 self.options.deadline_message.removeprefix("gatehouse: "))
        self.conn.close()

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if self._expiry is not None:
            self._expiry.cancel()

    def session_requested(self):
        if self.decision is None or not self.decision.allowed:
            reason = self.decision.reason if self.decision else "access denied: not authenticated"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        self.check_channel()
        # The sftp subsystem runs the system's sftp-server as the login (session.py).
        return session.SessionProcess(self._run)

    async def _run(self, process: asyncssh.SSHServerProcess) -> None:
        await self.node.run(process, self.user, self.decision, self.options)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        allowed = (self.decision is not None and self.decision.allowed
                   and self.options is not None and self.options.permit_port_forwarding)
        if not allowed:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            "port forwarding is not permitted by your roles")
        self.check_channel()
        self.node.audit.emit("port", user=self.user.name, login=self.user.login, node=self.node.name,
                             dest=f"{dest_host}:{dest_port}")
        return True


@dataclass(frozen=True)
class SessionOptions:
    """What a node allows one authenticated connection: both its certificate and the roles the
    node decides with (a root user's mapped roles here) must permit; it ends at DEADLINE."""

    permit_pty: bool
    permit_port_forwarding: bool
    deadline: float
    deadline_message: str
    idle_timeout: float


class NodeService:
    def __init__(self, ctx: MemberContext):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.cache = ctx.cache
        self.audit = ctx.audit
        self.name = ctx.name
        self.labels = {str(k): str(v) for k, v in ctx.cfg.ssh.labels.items()}
        self.server = None
        ssh = ctx.cfg.ssh
        self.limits = ListenerLimits("this node", "ssh_service", max_startups=ssh.max_startups,
                                     max_channels=ssh.max_channels_per_connection, max_sessions=ssh.max_sessions)
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

    def session_options(self, user: CertUser, now: float) -> SessionOptions:
        """The certificate's permits AND those of the deciding roles; the session ends when the
        certificate expires or, measured from now, at the shortest max_session_ttl of those roles."""
        cert = user.cert
        checker, _unused1, _unused2 = self.ctx.checkers.checker(user.cluster, cert.roles, cert.traits, cert.principals, user.ca)
        roles = checker.session_options() if checker is not None else {
            "ttl": 0, "client_idle_timeout": 0, "permit_pty": False, "permit_port_forwarding": False}
        ttl_end = now + roles["ttl"]
        if cert.valid_before <= ttl_end:
            deadline = float(cert.valid_before)
            expired = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cert.valid_before))
            message = (f"gatehouse: your certificate expired at {expired}, so the session was closed; run "
                       f"'gate login' to get a new one")
        else:
            deadline = ttl_end
            message = (f"gatehouse: the session reached the max_session_ttl of your roles on node "
                       f'"{self.name}" ({format_duration(roles["ttl"])}) and was closed')
        return SessionOptions(
            permit_pty=roles["permit_pty"] and cert.extensions.get("permit-pty") is not None,
            permit_port_forwarding=(roles["permit_port_forwarding"]
                                    and cert.extensions.get("permit-port-forwarding") is not None),
            deadline=deadline, deadline_message=message, idle_timeout=float(roles["client_idle_timeout"]))

    async def run(self, process: asyncssh.SSHServerProcess, user: CertUser, decision,
                  options: SessionOptions) -> None:
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
                                               env=dict(process.env or {}), permit_pty=options.permit_pty,
                                               deadline=options.deadline, deadline_message=options.deadline_message,
                                               idle_timeout=options.idle_timeout)
        finally:
            end = dict(user=user.name, login=user.login, node=self.name,
                       exit_status=getattr(result, "exit_status", None),
                       exit_signal=getattr(result, "exit_signal", None))
            if process.subsystem:
                end["subsystem"] = process.subsystem
            if getattr(result, "error", None):
                end["error"] = result.error.removeprefix("gatehouse: ")
            if getattr(result, "ended_by", None):
                # The node closed the session itself: say so in an event of its own, then end it.
                end["ended_by"] = result.ended_by
                self.audit.emit("session.disconnect", user=user.name, login=user.login, node=self.name,
                                user_cluster=user.cluster, reason=end["error"], ended_by=result.ended_by)
            self.audit.emit("session.end", **end)
            self._sessions.pop(asyncio.current_task(), None)

    async def start(self) -> None:
        host, port = split_hostport(self.cfg.ssh.listen_addr, NODE_PORT)
        self.server = await asyncssh.create_server(
            lambda: _NodeConnection(self), sock=listeners.listen("node", host, port),
            **server_options(self.ctx.ident.ssh_host_keypair(), max_pktsize=SESSION_MAX_PKTSIZE))
        listeners.serving("node", self.server, self.limits)
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
        host, _unused = split_hostport(self.cfg.ssh.listen_addr, NODE_PORT)
        return f"{host or '0.0.0.0'}:{self.port}"

    async def _send_heartbeat(self) -> None:
        await self.ctx.client.call("POST", "/v1/nodes/heartbeat", {
            "name": self.name, "addr": self.advertise_addr(), "labels": self.labels,
            "hostname": socket.gethostname(), "interval": self.cfg.heartbeat_interval})

    async def _heartbeat_loop(self) -> None:
        while True:
            if await listeners.wait_draining(self.cfg.heartbeat_interval):
                return  # the process that took over heartbeats now
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
