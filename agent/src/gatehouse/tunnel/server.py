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

from .. import pki
from ..config import split_hostport
from ..errors import ConnectionProblem, GatehouseError, NotFound, from_dict
from ..member.context import MemberContext
from ..member.renew import Renewer
from ..sshparams import CARRIER_MAX_PKTSIZE, client_options
from ..sshserver import ListenerLimits
from ..wire import (ACCESS_SUBSYSTEM, HEARTBEAT_SUBSYSTEM, MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL,
                    MISSED_HEARTBEATS, NODES_SUBSYSTEM, TUNNEL_LOGIN, TUNNEL_PORT, TUNNEL_PRINCIPAL,
                    heartbeat_interval)
from .forwarding import AuditReceiver
from .framing import MAX_ANSWER, MAX_HEARTBEAT_LINE, TooLarge, parse_heartbeat, read_bounded, too_long

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


class LeafTunnel:
    """One live tunnel to a leaf: heartbeats both ways, status reports, routing."""

    def __init__(self, server: "TunnelServer", leaf: str, conn: asyncssh.SSHClientConnection, peer: str,
                 host_key: str = ""):
        self.server = server
        self.leaf = leaf
        self.conn = conn
        self.peer = peer
        self.host_key = host_key  # SSH fingerprint of the leaf proxy's key
        self.leaf_proxy = ""
        self.last_seen = time.monotonic()
        self.closed = asyncio.Event()

    async def run(self) -> None:
        interval = self.server.interval
        registered = False
        try:
            writer, reader, _unused = await self.conn.open_session(subsystem=HEARTBEAT_SUBSYSTEM, encoding="utf-8")
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
                    try:
                        if beat is None:
                            raise ValueError("the leaf sent a heartbeat that is not a JSON object")
                        beat_interval = self._check_beat(beat, interval)
                    except ValueError as exc:
                        # Skipped, not counted: a leaf that sends nothing valid misses its beats and is closed.
                        if not warned:
                            warned = True
                            log.warning("tunnel: leaf %s (%s): %s; ignoring it and any more like it", self.leaf,
                                        self.peer, exc)
                        continue
                    self.server.note_revoked(self.leaf, beat)
                    self.last_seen = time.monotonic()
                    if not registered:
                        registered = True
                        self.server.register(self)
                    await self.server.report(self.leaf, True, beat_interval)
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
        return beat_interval

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
            host or None, port, client_factory=lambda: _RootSide(self), acceptor=self._accepted,
            username=TUNNEL_LOGIN, host_key_alias=TUNNEL_PRINCIPAL, encoding=None,
            keepalive_interval=self.interval, keepalive_count_max=MISSED_HEARTBEATS, login_timeout=15,
            reuse_address=True,
            **client_options(keypair, max_pktsize=CARRIER_MAX_PKTSIZE, known_hosts=([], [], [])))
        self.port = self._acceptor.sockets[0].getsockname()[1]
        self.cache.on_change(self._on_cache_change)
        self._heartbeat_task = asyncio.create_task(self._proxy_heartbeats(), name="proxy-heartbeat")
        self._renewer = Renewer("the tunnel certificate", self._renew_tunnel_certificate, valid_before)
        self._renewer.start()
        log.info("reverse tunnel listener on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self._renewer:
            await self._renewer.stop()
        if self._heartbeat_task:
            self._heartbeat_task.cancel()
        if self._acceptor:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        await self.audit_receiver.stop()
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
        tunnel = LeafTunnel(self, side.leaf, conn, side.peer, pki.ssh_fingerprint(side.cert.public_line))
        log.debug("tunnel: leaf %s connected from %s", side.leaf, side.peer)
        task = asyncio.create_task(tunnel.run(), name=f"tunnel-{side.leaf}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def register(self, tunnel: LeafTunnel) -> None:
        self.tunnels.setdefault(tunnel.leaf, []).append(tunnel)
        log.info("tunnel: leaf %s is connected (from %s, leaf proxy %s)", tunnel.leaf, tunnel.peer,
                 tunnel.leaf_proxy or "?")
        self.audit_receiver.ensure(tunnel.leaf)

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
        if not tunnels:
            raise ConnectionProblem(f'cluster "{leaf}" is offline: no reverse tunnel from it reaches this proxy; '
                                    f"check 'gatectl get rc/{leaf}' on the root and the leaf's trusted_cluster")
        return tunnels[next(self._round_robin) % len(tunnels)]
