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
from ..member.session_header import HeaderVerifier, SessionOrigin
from ..sshparams import SESSION_MAX_PKTSIZE, server_options
from ..sshserver import CertAuthServer, CertUser, ListenerLimits
from ..wire import NODE_PORT
from . import recording, session
from .listener import HeaderListener

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
        #: The session id of this connection (the routing proxy's, or one this node chose) and its channels so far.
        self.origin: SessionOrigin = node.headers.unrouted()
        self.channels = 0

    def connection_made(self, conn) -> None:
        self.origin = self.node.claim_origin(conn)
        super().connection_made(conn)

    def next_sid(self) -> str:
        """The session id of the next session channel: the connection's, then "-2", "-3" … for more channels."""
        self.channels += 1
        return self.origin.sid if self.channels == 1 else f"{self.origin.sid}-{self.channels}"

    def auth_ok(self, user: CertUser) -> None:
        self.decision = self.node.decide(user, self.origin)
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
        await self.node.run(process, self.user, self.decision, self.options, self.next_sid(), self.origin)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        allowed = (self.decision is not None and self.decision.allowed
                   and self.options is not None and self.options.permit_port_forwarding)
        if not allowed:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            "port forwarding is not permitted by your roles")
        self.check_channel()
        self.node.audit.emit("port", user=self.user.name, login=self.user.login, node=self.node.name,
                             dest=f"{dest_host}:{dest_port}", sid=self.origin.sid)
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
    record: bool = True
    recording_failure: str = "fail_open"


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
        self.headers = HeaderVerifier(self.cache, self.name)
        #: Session origins read from the header of a connection, until its SSH connection claims them.
        self.origins: dict[tuple, SessionOrigin] = {}
        self.spool = recording.RecordingSpool(ctx.cfg.data_dir, self.name, ctx.cfg.audit.bytes("spool_max_size"),
                                              self.audit, ctx.client)

    def claim_origin(self, conn) -> SessionOrigin:
        """The origin the listener read for CONN's socket (its header), or a fresh unrouted one."""
        key = (conn.get_extra_info("peername"), conn.get_extra_info("sockname"))
        return self.origins.pop(key, None) or self.headers.unrouted()

    def header_refused(self, peer, reason: str) -> None:
        log.warning("refused a connection from %s: %s", peer, reason)
        self.audit.emit("session.header_refused", success=False, node=self.name, addr=_addr(peer), reason=reason)

    def decide(self, user: CertUser, origin: SessionOrigin | None = None):
        cert = user.cert
        decision = self.ctx.checkers.check(user.cluster, cert.roles, cert.traits, cert.principals, user.ca,
                                           user.login, self.name, self.labels)
        fields = dict(user=user.name, login=user.login, node=self.name, user_cluster=user.cluster,
                      roles=cert.roles, addr=user.peer, reason=decision.reason, **self.identity_fields(user, decision))
        if origin is not None:
            fields.update(sid=origin.sid, proxy=origin.proxy or None)
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
            "ttl": 0, "client_idle_timeout": 0, "permit_pty": False, "permit_port_forwarding": False,
            "record_session": True, "recording_failure": "fail_open"}
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
            deadline=deadline, deadline_message=message, idle_timeout=float(roles["client_idle_timeout"]),
            record=bool(roles.get("record_session", True)),
            recording_failure=roles.get("recording_failure", "fail_open"))

    async def run(self, process: asyncssh.SSHServerProcess, user: CertUser, decision,
                  options: SessionOptions, sid: str = "", origin: SessionOrigin | None = None) -> None:
        sid = sid or self.headers.unrouted().sid
        start = dict(user=user.name, login=user.login, node=self.name, user_cluster=user.cluster,
                     command=process.command, addr=user.peer, roles=decision.roles, sid=sid,
                     proxy=origin.proxy if origin is not None and origin.proxy else None,
                     **self.identity_fields(user, decision))
        if process.subsystem:
            start["subsystem"] = process.subsystem
        recorder, refusal = self._recorder(process, user, options, sid)
        start["recorded"] = recorder is not None
        self.audit.emit("session.start", **start)
        result = None
        self._sessions[asyncio.current_task()] = process.channel.get_connection()
        try:
            if refusal:
                result = session.refuse_session(process, user.login, self.name, refusal)
                result.ended_by = "recording_failed"
            else:
                env = dict(process.env or {})
                env["GATEHOUSE_SESSION_ID"] = sid   # the session's own id, for the user's scripts (never from the client)
                result = await session.run_session(process, user.login, node_name=self.name, env=env,
                                                   permit_pty=options.permit_pty, deadline=options.deadline,
                                                   deadline_message=options.deadline_message,
                                                   idle_timeout=options.idle_timeout, tap=recorder)
        finally:
            end = dict(user=user.name, login=user.login, node=self.name, sid=sid,
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
                                user_cluster=user.cluster, reason=end["error"], ended_by=result.ended_by, sid=sid)
            if recorder is not None:
                recorder.finish(_end_marker(result), exit_status=end["exit_status"], exit_signal=end["exit_signal"],
                                ended_by=getattr(result, "ended_by", None))
            self.audit.emit("session.end", **end)
            self._sessions.pop(asyncio.current_task(), None)

    def _recorder(self, process, user: CertUser, options: SessionOptions, sid: str):
        """(recorder or None, refusal or ""): whether and how this session is recorded. A recording that cannot start
        refuses the session when the roles say fail_closed, and is audited either way."""
        if not options.record or process.subsystem:
            return None, ""   # not asked for; subsystems (sftp) carry a binary protocol, not a terminal
        pty = process.get_terminal_type() is not None and options.permit_pty
        width, height = process.get_terminal_size()[:2] if pty else (80, 24)
        meta = {"sid": sid, "node": self.name, "user": user.name, "login": user.login, "user_cluster": user.cluster,
                "kind": "interactive" if pty else "exec", "command": process.command, "started": time.time(),
                "roles": list(user.cert.roles)}
        header = {"version": 2, "width": max(1, min(int(width or 80), 10000)),
                  "height": max(1, min(int(height or 24), 10000)), "timestamp": int(time.time()),
                  "env": {"TERM": process.get_terminal_type() or "", "SHELL": ""},
                  "title": f"{user.login}@{self.name}" + (f": {process.command}" if process.command else ""),
                  "gatehouse": {k: v for k, v in meta.items() if k != "roles"} | {"cluster": self.cache.cluster_name}}
        try:
            return self.spool.start(sid, header, meta, options.recording_failure), ""
        except recording.RecordingFailed as exc:
            reason = str(exc)
        log.warning("cannot record session %s of %s on node %s: %s", sid, user.name, self.name, reason)
        self.audit.emit("session.recording_failed", success=False, sid=sid, node=self.name, user=user.name,
                        login=user.login, error=reason, policy=options.recording_failure)
        if options.recording_failure == "fail_closed":
            return None, (f"gatehouse: this session must be recorded (recording_failure: fail_closed in your roles) "
                          f"but node \"{self.name}\" cannot write its recording ({reason}); ask the node's "
                          f"administrator to free space for it")
        return None, ""

    async def start(self) -> None:
        host, port = split_hostport(self.cfg.ssh.listen_addr, NODE_PORT)
        self._start_spool()
        # The listener reads a routing proxy's session header (member/session_header.py) before the SSH stream.
        self.server = await asyncssh.create_server(
            lambda: _NodeConnection(self), host or None, port,
            tunnel=HeaderListener(self, listeners.listen("node", host, port)),
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

    def _start_spool(self) -> None:
        """The recording spool: created, crash-cut recordings repaired, uploads started. A spool that cannot be
        prepared is logged; sessions then meet the recording policy of their roles."""
        try:
            self.spool.prepare()
            repaired = self.spool.recover()
            if repaired:
                log.warning("node %s: %d recording(s) were cut off by a stop and are uploaded as they are", self.name,
                            repaired)
        except OSError as exc:
            log.error("node %s cannot use its recording spool %s (%s); sessions that must be recorded are refused",
                      self.name, self.spool.dir, exc.strerror or exc)
        self.spool.start_uploads()

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
        await self.spool.stop()


def _end_marker(result) -> str:
    """The last line of a recording: how the session ended."""
    if result is None:
        return "session ended"
    if getattr(result, "ended_by", None):
        return f"session ended by the node: {result.ended_by}"
    if result.exit_signal:
        return f"exit signal {result.exit_signal}"
    if result.exit_status is not None:
        return f"exit status {result.exit_status}"
    return "session ended (the client left)"


def _addr(peer) -> str:
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")
