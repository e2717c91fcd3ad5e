"""Root side: accept leaves' reverse tunnels on port 3024 and route users through them.

Each accepted tunnel is an asyncssh client connection to the leaf. The root proxy
keeps the live ones per leaf cluster, holds their heartbeats in memory and reports
connects, disconnects and a periodic summary to its auth service (`presence.py`, which
auth turns into `remote_cluster` status), and drops them when the leaf's host CA
disappears (`gatectl rm rc/NAME`) or stops answering. Nothing runs per tunnel between
beats: one sweep a second checks every deadline and sends the beats that are due.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time

import asyncssh

from .. import listeners, pki
from ..config import split_hostport
from ..errors import ConnectionProblem, GatehouseError, from_dict
from ..member.context import MemberContext
from ..member.renew import Renewer
from ..sshparams import CARRIER_MAX_PKTSIZE, client_options
from ..sshserver import ListenerLimits
from ..wire import (ACCESS_SUBSYSTEM, HEARTBEAT_PROTOCOL, HEARTBEAT_SUBSYSTEM, MAX_HEARTBEAT_INTERVAL,
                    MIN_HEARTBEAT_INTERVAL, MISSED_HEARTBEATS, NODES_SUBSYSTEM, TUNNEL_LOGIN, TUNNEL_PORT,
                    TUNNEL_PRINCIPAL, heartbeat_interval, heartbeat_mode, heartbeat_timing)
from .forwarding import AuditReceiver
from .framing import (MAX_ANSWER, MAX_HEARTBEAT_LINE, TINY_BEAT, LineReader, TooLarge, is_tiny_beat, parse_heartbeat,
                      read_bounded)
from .presence import PresenceReporter

log = logging.getLogger("gatehouse.tunnel.server")

#: At most this many revoked proxy keys are remembered per leaf.
MAX_REVOKED = 1024


class _RootSide(asyncssh.SSHClient):
    """Identifies the leaf by the host CA that signed its tunnel certificate, and checks that the
    certificate is a leaf proxy's: a leaf's nodes hold certificates from the same CA."""

    def __init__(self, server: "TunnelServer"):
        self.server = server
        self.leaf = ""
        self.peer = ""
        self.cert: pki.SSHCertInfo | None = None
        self.conn = None
        self.counted = False
        self.tunnel: LeafTunnel | None = None

    def connection_made(self, conn):
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        original = conn._validate_openssh_host_certificate  # pylint: disable=protected-access

        def keep_certificate(host, addr, port, cert):
            # asyncssh hands validate_host_ca_key only the CA key; remember the whole certificate.
            try:
                self.cert = pki.parse_ssh_cert(cert.export_certificate().decode())
            except GatehouseError:
                self.cert = None
            return original(host, addr, port, cert)

        conn._validate_openssh_host_certificate = keep_certificate  # pylint: disable=protected-access
        self.conn = conn
        self.counted = self.server.limits.admit(conn)  # pre-auth cap on 3024

    def auth_completed(self):
        if self.counted:
            self.server.limits.authenticated(self.conn)

    def connection_lost(self, exc):
        if self.counted:
            self.server.limits.lost(self.conn)
        if self.tunnel is not None:
            self.tunnel.finished()

    def validate_host_ca_key(self, host, addr, port, key) -> bool:
        leaf = self.server.cache.leaf_of_host_ca(key.export_public_key().decode())
        if not leaf:
            log.info("tunnel: rejected a connection from %s: its host CA belongs to no trusted leaf "
                     "(removed, or never joined)", self.peer)
            return False
        refusal = tunnel_certificate_refusal(self.cert)
        if not refusal and self.server.reported_revoked(leaf, self.cert):
            refusal = "its leaf reported this proxy's key as revoked ('gatectl rm proxy/NAME' on the leaf)"
        if refusal:
            log.warning("tunnel: rejected a connection from %s claiming to be leaf %s: %s", self.peer, leaf, refusal)
            return False
        self.leaf = leaf
        return True


def tunnel_certificate_refusal(cert: pki.SSHCertInfo | None) -> str:
    """Why a leaf's host certificate cannot open a tunnel ("" when it can): only its proxies may."""
    if cert is None:
        return "its host certificate is not one a Gatehouse auth service issues"
    if cert.member_kind != "proxy":
        holder = f'{cert.key_id.partition(":")[0] or "?"} "{cert.key_id.partition(":")[2] or cert.key_id}"'
        return (f"its host certificate belongs to {holder}, not to a proxy of the leaf; only leaf proxies open "
                f"tunnels, so this is a leaf member posing as its proxy")
    if TUNNEL_PRINCIPAL not in cert.principals:
        return f"its host certificate does not name {TUNNEL_PRINCIPAL}"
    return ""


class _HeartbeatChannel(asyncssh.SSHClientSession):
    """The root's end of the heartbeat subsystem: whole lines go to the tunnel as they arrive (no task,
    no timer per tunnel: the server's sweep checks every tunnel's deadline once a second)."""

    def __init__(self, tunnel: "LeafTunnel"):
        self.tunnel = tunnel
        self.lines = LineReader()

    def data_received(self, data, datatype):
        try:
            lines = self.lines.feed(data)
        except TooLarge:
            self.tunnel.end(f"it sent a heartbeat line longer than {MAX_HEARTBEAT_LINE} bytes")
            return
        for line in lines:
            self.tunnel.on_line(line)

    def eof_received(self):
        self.tunnel.end("it closed its heartbeats")
        return False

    def connection_lost(self, exc):
        self.tunnel.end(f"its heartbeats ended ({exc})" if exc else "its heartbeats ended")


class LeafTunnel:
    """One live tunnel to a leaf: heartbeats both ways, presence, routing.

    The leaf's first heartbeat is a JSON object (its proxy, interval, heartbeat mode,
    protocol and whether it forwards its audit); a protocol-2 leaf then sends an empty line per beat and JSON only when
    something changed, and this end answers the same way, every `root_interval` seconds
    (`wire.HEARTBEAT_TIMING`): its JSON hello (this proxy and every root proxy) after the
    leaf's first heartbeat and whenever the list changes, else an empty line. A protocol-1
    leaf gets the JSON hello on every beat. Only valid beats count: anything else is
    skipped (and logged once), so a leaf that sends nothing valid misses its beats and is
    closed after `MISSED_HEARTBEATS` of its intervals.
    """

    def __init__(self, server: "TunnelServer", leaf: str, conn: asyncssh.SSHClientConnection, peer: str,
                 host_key: str = ""):
        self.server = server
        self.leaf = leaf
        self.conn = conn
        self.peer = peer
        self.host_key = host_key  # SSH fingerprint of the leaf proxy's key
        self.leaf_proxy = ""
        now = time.monotonic()
        self.last_seen = now
        self.closed = asyncio.Event()
        #: The leaf proxy on this tunnel is handing over to a new process (reload): route new sessions elsewhere.
        self.draining = False
        self.chan = None
        self.registered = False
        self.hello_seen = False
        self.protocol = 1
        self.interval = server.interval
        self.mode = "default"
        #: What the leaf's beats say of audit forwarding: True or False; None from a leaf that does not say
        #: (an older one), which the root asks (tunnel/forwarding.py).
        self.forwards_audit: bool | None = None
        self.root_interval = server.interval
        #: Close the tunnel when no valid beat came by then (monotonic); before its first, the proxy's own interval.
        self.deadline = now + MISSED_HEARTBEATS * server.interval + 1
        self.next_beat = float("inf")
        self.hello_due = True
        self._warned = False
        self._ended = False

    async def open(self) -> None:
        try:
            self.chan, _unused = await self.conn.create_session(lambda: _HeartbeatChannel(self),
                                                                subsystem=HEARTBEAT_SUBSYSTEM, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            self.end(str(exc) or exc.__class__.__name__)

    # -- what the leaf sends ---------------------------------------------------------
    def on_line(self, line: bytes) -> None:
        if is_tiny_beat(line):
            if self.hello_seen:  # a beat that says nothing new; before the first JSON one it counts for nothing
                self._beat()
            return
        beat = parse_heartbeat(line)
        try:
            if beat is None:
                raise ValueError("the leaf sent a heartbeat that is not a JSON object")
            interval = self._check_beat(beat, self.server.interval)
        except ValueError as exc:
            # Skipped, not counted: a leaf that sends nothing valid misses its beats and is closed.
            if not self._warned:
                self._warned = True
                log.warning("tunnel: leaf %s (%s): %s; ignoring it and any more like it", self.leaf, self.peer, exc)
            return
        self.server.note_revoked(self.leaf, beat)
        protocol = beat.get("protocol")
        self.protocol = HEARTBEAT_PROTOCOL if isinstance(protocol, int) and protocol >= HEARTBEAT_PROTOCOL else 1
        mode = heartbeat_mode(beat.get("mode")) or "default"
        changed = (interval, mode) != (self.interval, self.mode)
        self.interval, self.mode = interval, mode
        self.root_interval = max(interval, heartbeat_timing(mode)[1]) if self.protocol >= 2 else interval
        if not self.hello_seen:
            self.hello_seen = True
            self.next_beat = time.monotonic()  # answer with the hello at the next sweep
        elif changed:
            self.server.presence.announced(self.leaf, interval, mode)
        audit = beat.get("audit") if isinstance(beat.get("audit"), bool) else None
        audit_changed, self.forwards_audit = audit != self.forwards_audit, audit
        if not self.registered:
            self.registered = True
            self.server.register(self)
        elif audit_changed:
            log.info("tunnel: leaf %s says its audit forwarding is now %s", self.leaf,
                     {True: "on", False: "off"}.get(audit, "unknown"))
            self.server.audit_receiver.ensure(self.leaf)
        self._beat()

    def _beat(self) -> None:
        self.last_seen = now = time.monotonic()
        self.deadline = now + MISSED_HEARTBEATS * self.interval
        self.server.presence.beat(self.leaf)

    def _check_beat(self, beat, default: float) -> float:
        """The leaf's heartbeat: a JSON object whose interval is within the bounds (it decides how long
        the leaf counts as online); ValueError, which closes the tunnel, otherwise."""
        if not isinstance(beat, dict):
            raise ValueError("the leaf sent a heartbeat that is not a JSON object")
        beat_interval = heartbeat_interval(beat.get("interval", default))
        if beat_interval is None:
            raise ValueError(f"the leaf sent the heartbeat interval {str(beat.get('interval'))[:40]!r}, not a number "
                             f"of seconds from {MIN_HEARTBEAT_INTERVAL:g} to {MAX_HEARTBEAT_INTERVAL:g}")
        self.leaf_proxy = str(beat.get("proxy") or "")[:253]
        self.draining = beat.get("draining") is True
        return beat_interval

    # -- what this end sends, and the deadline (the server's sweep calls this) ------------
    def tick(self, now: float) -> None:
        if self._ended:
            return
        if now > self.deadline:
            log.warning("tunnel: leaf %s (%s) missed %d heartbeats; closing its tunnel", self.leaf, self.peer,
                        MISSED_HEARTBEATS)
            self.end("")
            return
        if now >= self.next_beat:
            self.next_beat = now + self.root_interval
            self.send_beat()

    def send_beat(self) -> None:
        if self.chan is None:
            return
        if self.hello_due or self.protocol < 2:
            hello = {"cluster": self.server.cache.cluster_name, "proxy": self.server.name,
                     "proxies": self.server.proxies, "interval": self.root_interval, "protocol": HEARTBEAT_PROTOCOL}
            if listeners.draining():  # this process hands over: the leaf dials the new one
                hello["draining"] = True
            data = json.dumps(hello).encode() + b"\n"
            self.hello_due = False
        else:
            data = TINY_BEAT
        try:
            self.chan.write(data)
        except (asyncssh.Error, OSError) as exc:
            self.end(str(exc) or exc.__class__.__name__)

    def end(self, reason: str) -> None:
        """Close the tunnel (REASON is logged; "" when the caller logged it already)."""
        if self._ended:
            return
        self._ended = True
        if reason:
            log.info("tunnel: tunnel from leaf %s (%s) ended: %s", self.leaf, self.peer, reason)
        self.conn.close()
        self.finished()

    def finished(self) -> None:
        """The connection is gone (or going): leave the server and presence, once."""
        self._ended = True
        if not self.closed.is_set():
            self.closed.set()
            self.server.unregister(self)

    async def ask(self, subsystem: str, request: dict) -> dict:
        """One JSON request and answer on a tunnel subsystem; an error the leaf answers is raised here."""
        writer = None
        try:
            writer, reader, _unused = await self.conn.open_session(subsystem=subsystem, encoding=None)
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
        self.end("")


#: How often the server checks every tunnel's deadline and sends the beats that are due (seconds).
SWEEP_INTERVAL = 1.0


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
        #: Every open tunnel, also those whose leaf has not sent a valid heartbeat yet (their deadline counts).
        self._open: set[LeafTunnel] = set()
        self.presence = PresenceReporter(ctx.client, ctx.cfg.proxy.presence_interval)
        proxy = ctx.cfg.proxy
        self.limits = ListenerLimits("this proxy's tunnel listener", "proxy_service", max_startups=proxy.max_startups,
                                     max_channels=proxy.max_sessions, max_sessions=proxy.max_sessions)
        self._round_robin = itertools.count()
        self._acceptor = None
        self._tasks: set[asyncio.Task] = set()
        self._heartbeat_task: asyncio.Task | None = None
        self._sweep_task: asyncio.Task | None = None
        self._renewer: Renewer | None = None
        #: Per leaf, the SSH key fingerprints of leaf proxies its tunnels reported revoked (only ever added to).
        self._revoked: dict[str, set[str]] = {}
        self.port = 0
        #: Leaves' audit events and recordings, asked for over their tunnels (tunnel/forwarding.py).
        self.audit_receiver = AuditReceiver(self)

    # -- lifecycle -------------------------------------------------------------
    async def _tunnel_certificate(self) -> tuple[tuple, float]:
        """A fresh tunnel certificate from auth for this proxy's key: (keypair, expiry)."""
        key = self.ident.ssh_key()
        answer = await self.client.call("POST", "/v1/tunnels/cert",
                                        {"ssh_public_key": key.export_public_key().decode().strip()})
        info = pki.parse_ssh_cert(answer["ssh_cert"])
        log.debug("tunnel certificate serial %d, valid until %d", info.serial, info.valid_before)
        return (key, asyncssh.import_certificate(answer["ssh_cert"])), float(info.valid_before)

    async def _renew_tunnel_certificate(self) -> float:
        """New tunnels present the renewed certificate; the ones already open keep going."""
        keypair, valid_before = await self._tunnel_certificate()
        self._acceptor.update(client_keys=[keypair])
        return valid_before

    async def start(self) -> None:
        keypair, valid_before = await self._tunnel_certificate()
        host, port = split_hostport(self.cfg.proxy.tunnel_listen_addr, TUNNEL_PORT)
        self._acceptor = await asyncssh.listen_reverse(
            sock=listeners.listen("tunnels", host, port), client_factory=lambda: _RootSide(self),
            acceptor=self._accepted,
            username=TUNNEL_LOGIN, host_key_alias=TUNNEL_PRINCIPAL, encoding=None,
            # No SSH keepalives: the heartbeats are the liveness check, and nothing else is sent idle.
            keepalive_interval=0, login_timeout=15,
            **client_options(keypair, max_pktsize=CARRIER_MAX_PKTSIZE, known_hosts=([], [], [])))
        listeners.serving("tunnels", self._acceptor, self.limits, channels_when_idle=1)
        self.port = self._acceptor.sockets[0].getsockname()[1]
        self.cache.on_change(self._on_cache_change)
        self._heartbeat_task = asyncio.create_task(self._proxy_heartbeats(), name="proxy-heartbeat")
        self._sweep_task = asyncio.create_task(self._sweep(), name="tunnel-sweep")
        self.presence.start()
        self._renewer = Renewer("the tunnel certificate", self._renew_tunnel_certificate, valid_before)
        self._renewer.start()
        log.info("reverse tunnel listener on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self._renewer:
            await self._renewer.stop()
        for task in (self._heartbeat_task, self._sweep_task):
            if task:
                task.cancel()
        if self._heartbeat_task and not listeners.draining():  # a successor carries on under this name
            await self._leave()
        if self._acceptor:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        await self.audit_receiver.stop()
        for t in list(self._open):
            t.close()
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(task, 2)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        await self.presence.stop()

    async def _proxy_heartbeats(self) -> None:
        """Announce this proxy (and its web port, where auth asks leaves through it) to auth; learn the
        others, so leaves dial each of them."""
        while not listeners.draining():  # a draining process leaves them to its successor
            try:
                answer = await self.client.call("POST", "/v1/proxies/heartbeat",
                                                {"interval": self.interval,
                                                 "web_listen_addr": self.cfg.proxy.web_listen_addr})
                proxies = answer.get("proxies") or [self.name]
                if proxies != self.proxies:
                    if set(self.proxies) - set(proxies):
                        self.audit_receiver.proxy_left()  # the leaves it forwarded may be ours now
                    self.proxies = proxies
                    for tunnel in self._open:  # leaves learn of a proxy joining or leaving at the next sweep
                        tunnel.hello_due = True
                        tunnel.next_beat = 0.0
            except GatehouseError as exc:
                log.warning("cannot send the proxy heartbeat: %s", exc)
            await listeners.wait_draining(self.interval)

    async def _leave(self) -> None:
        """Tell auth this proxy stops, so the others stop announcing it to leaves within a heartbeat."""
        try:
            await self.client.call("POST", "/v1/proxies/heartbeat", {"leaving": True}, timeout=5)
        except GatehouseError as exc:
            log.info("cannot tell auth that this proxy is leaving (%s); its record expires by itself", exc)

    async def _sweep(self) -> None:
        """Once a second: close tunnels whose leaf missed its beats, send the beats that are due."""
        drain_announced = False
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            if listeners.draining() and not drain_announced:
                drain_announced = True
                for tunnel in self._open:  # a hello saying "draining": each leaf dials the successor
                    tunnel.hello_due = True
                    tunnel.next_beat = 0.0
            for tunnel in list(self._open):
                tunnel.tick(now)

    # -- tunnels ---------------------------------------------------------------
    def _accepted(self, conn: asyncssh.SSHClientConnection) -> None:
        side: _RootSide = conn.get_owner()
        tunnel = LeafTunnel(self, side.leaf, conn, side.peer, pki.ssh_fingerprint(side.cert.public_line))
        side.tunnel = tunnel
        self._open.add(tunnel)
        log.debug("tunnel: leaf %s connected from %s", side.leaf, side.peer)
        task = asyncio.create_task(tunnel.open(), name=f"tunnel-{side.leaf}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def register(self, tunnel: LeafTunnel) -> None:
        self.tunnels.setdefault(tunnel.leaf, []).append(tunnel)
        self.presence.connected(tunnel.leaf, tunnel.interval, tunnel.mode)
        log.info("tunnel: leaf %s is connected (from %s, leaf proxy %s, heartbeat %s every %gs)", tunnel.leaf,
                 tunnel.peer, tunnel.leaf_proxy or "?", tunnel.mode, tunnel.interval)
        self.audit_receiver.ensure(tunnel.leaf)

    def unregister(self, tunnel: LeafTunnel) -> None:
        self._open.discard(tunnel)
        if not tunnel.registered:
            return
        tunnels = self.tunnels.get(tunnel.leaf, [])
        if tunnel in tunnels:
            tunnels.remove(tunnel)
            self.presence.disconnected(tunnel.leaf)
        if not tunnels:
            self.tunnels.pop(tunnel.leaf, None)
            log.info("tunnel: leaf %s is disconnected from proxy %s", tunnel.leaf, self.name)

    def _on_cache_change(self) -> None:
        changed = self.cache.last_changes
        if changed is None:  # a full snapshot: look at every leaf
            leaves = list(self.tunnels)
        else:  # a delta: only leaves whose CA or remote cluster changed
            leaves = {ident.split("/", 1)[0] if section == "cas" else ident for section, ident in changed
                      if section in ("cas", "remote_clusters")}
        for leaf in leaves:
            tunnels = self.tunnels.get(leaf)
            if tunnels and not self.cache.leaf_is_trusted(leaf):
                log.info("tunnel: leaf %s was removed; dropping its %d tunnel(s)", leaf, len(tunnels))
                for t in list(tunnels):
                    t.close()

    def note_revoked(self, leaf: str, beat) -> None:
        """A leaf's heartbeat lists its revoked proxies' keys: close their tunnels and refuse them from now on.

        A leaf speaks only about its own proxies (the keys count only for tunnels its host CA
        signed), and a revocation is never taken back, so a revoked proxy cannot undo it.
        """
        listed = beat.get("revoked") if isinstance(beat, dict) else None
        if not isinstance(listed, list):
            return
        known = self._revoked.setdefault(leaf, set())
        fresh = {k for k in listed[:MAX_REVOKED] if isinstance(k, str) and k.startswith("SHA256:") and len(k) < 100}
        fresh -= known
        if not fresh or len(known) >= MAX_REVOKED:
            return
        known |= set(sorted(fresh)[:MAX_REVOKED - len(known)])
        for tunnel in list(self.tunnels.get(leaf, [])):
            if tunnel.host_key in known:
                log.warning("tunnel: leaf %s revoked its proxy %s (%s); closing that proxy's tunnel", leaf,
                            tunnel.leaf_proxy or "?", tunnel.peer)
                tunnel.close()

    def reported_revoked(self, leaf: str, cert: pki.SSHCertInfo | None) -> bool:
        return cert is not None and pki.ssh_fingerprint(cert.public_line) in self._revoked.get(leaf, ())

    def tunnel_for(self, leaf: str) -> LeafTunnel:
        tunnels = [t for t in self.tunnels.get(leaf, []) if not t.closed.is_set()]
        tunnels = [t for t in tunnels if not t.draining] or tunnels
        if not tunnels:
            raise ConnectionProblem(f'cluster "{leaf}" is offline: no reverse tunnel from it reaches this proxy; '
                                    f"check 'gatectl get rc/{leaf}' on the root and the leaf's trusted_cluster")
        return tunnels[next(self._round_robin) % len(tunnels)]
