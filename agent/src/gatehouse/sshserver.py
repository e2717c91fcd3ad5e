"""Shared SSH server base for nodes and proxies: user-certificate authentication.

Only certificates signed by a trusted, active user CA are accepted — plain keys and
passwords never are. asyncssh validates signature, principal and validity; we keep
the validated certificate (asyncssh does not expose it) so the access decision can
read its roles, traits and principals, and we explain failures in an auth banner,
which both `gate` and OpenSSH print.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Callable, Optional

import asyncssh

from . import pki
from .errors import GatehouseError
from .wire import TUNNEL_LOGIN

log = logging.getLogger("gatehouse.ssh")


class CertUser:
    """The authenticated user of one connection, as read from their certificate."""

    def __init__(self, cert_info: pki.SSHCertInfo, login: str, ca: dict, peer: str):
        self.cert = cert_info
        self.login = login
        self.ca = ca                      # the CA record that signed the certificate
        self.peer = peer

    @property
    def name(self) -> str:
        return self.cert.key_id

    @property
    def cluster(self) -> str:
        return self.ca["cluster_name"]


class ListenerLimits:
    """Caps for one SSH listener (or the tunnels of one proxy), so no peer can take it all.

    * ``max_startups``: connections that have not authenticated yet (like sshd's
      MaxStartups); one more is disconnected at once, and reaching the cap is logged
      once (again only after it was left);
    * ``max_channels``: open channels (sessions, forwards) on one connection;
    * ``max_sessions``: open channels on all of the listener's connections together.

    ``setting`` names the config section the caps come from, for the refusal messages.
    Channels are counted from asyncssh's own channel table, so every kind is seen.
    """

    def __init__(self, what: str, setting: str, *, max_startups: int, max_channels: int, max_sessions: int):
        self.what = what
        self.setting = setting
        self.max_startups = int(max_startups)
        self.max_channels = int(max_channels)
        self.max_sessions = int(max_sessions)
        self._pending: set = set()
        self._conns: set = set()
        self._full_logged = False

    def admit(self, conn) -> bool:
        """A new connection: False (and it is being disconnected) when too many are still unauthenticated."""
        if len(self._pending) >= self.max_startups:
            if not self._full_logged:
                self._full_logged = True
                log.warning("%s: %d connections have not authenticated yet (%s.max_startups); refusing new "
                            "connections until some authenticate or time out", self.what, len(self._pending),
                            self.setting)
            reason = f"{self.what} has too many unauthenticated connections; try again later"
            asyncio.get_running_loop().call_soon(_disconnect, conn, reason)
            return False
        self._pending.add(conn)
        self._conns.add(conn)
        return True

    def authenticated(self, conn) -> None:
        self._pending.discard(conn)
        if self._full_logged and len(self._pending) < self.max_startups:
            self._full_logged = False
            log.info("%s accepts new connections again (%d unauthenticated)", self.what, len(self._pending))

    def lost(self, conn) -> None:
        self._conns.discard(conn)
        self.authenticated(conn)

    def connections(self) -> set:
        """The connections this listener holds now (a draining process lets them finish)."""
        return set(self._conns)

    @staticmethod
    def open_channels(conn) -> int:
        return _open_channels(conn)

    def check_channel(self, conn) -> None:
        """Before a channel opens on CONN: raise ChannelOpenError (with the reason) when a cap is reached."""
        open_here = _open_channels(conn)
        if open_here >= self.max_channels:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE,
                f"too many channels on this connection: {open_here} are open, the limit of {self.what} is "
                f"{self.max_channels} ({self.setting}.max_channels_per_connection); close some or use another "
                f"connection")
        total = sum(_open_channels(c) for c in self._conns)
        if total >= self.max_sessions:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE,
                f"{self.what} is at its limit of {self.max_sessions} concurrent sessions "
                f"({self.setting}.max_sessions); try again later")


def _open_channels(conn) -> int:
    # asyncssh has no public count; its channel table holds every open channel of the connection.
    return len(getattr(conn, "_channels", ()))


# A refused connection's socket is kept open up to this long after the refusal, reading and
# discarding what the client still sends, and at most this many at once (beyond that the
# refusal is a plain close): closing a socket with unread input makes the kernel send a
# reset, which can destroy the refusal message before the client reads it.
REFUSAL_LINGER = 2.0
MAX_LINGERING = 64
_lingering: set = set()


def _disconnect(conn, reason: str) -> None:
    keep = _keep_socket_open(conn)
    try:
        conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, reason)
    except Exception:  # noqa: BLE001 - already gone
        conn.abort()
    if keep is not None:
        task = asyncio.get_running_loop().create_task(_linger(keep))
        _lingering.add(task)
        task.add_done_callback(_lingering.discard)


def _keep_socket_open(conn):
    """A duplicate of CONN's socket, so asyncssh's close does not reset it; None when too many linger."""
    sock = conn.get_extra_info("socket")
    if sock is None or len(_lingering) >= MAX_LINGERING:
        return None
    try:
        dup = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
    except OSError:
        return None
    dup.setblocking(False)
    return dup


async def _linger(sock) -> None:
    """Drain SOCK until the peer closes it or REFUSAL_LINGER passes, then close it.

    No half-close first: a client that reads the end of the stream before it has parsed
    the refusal (asyncssh does, in the middle of a key exchange) reports "connection lost"
    instead of the reason; a client that has parsed it closes at once.
    """
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + REFUSAL_LINGER
        while loop.time() < deadline:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), deadline - loop.time())
            if not data:
                break
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        sock.close()


class CertificateOnlyServer(asyncssh.SSHServer):
    """Public-key authentication only (certificates in practice); no passwords, no keyboard-interactive."""

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True


class CertAuthServer(CertificateOnlyServer):
    """Subclass and implement `auth_ok(user)`; `find_user_ca(public_line)` comes from the cache."""

    server_kind = "server"

    def __init__(self, find_user_ca: Callable[[str], Optional[dict]], cluster_name: str,
                 limits: ListenerLimits | None = None):
        self.find_user_ca = find_user_ca
        self.cluster_name = cluster_name
        self.limits = limits
        self.conn: asyncssh.SSHServerConnection | None = None
        self.user: CertUser | None = None
        self._last_cert = None
        self._pending_ca: dict | None = None
        self._banner_sent = False
        self.peer = ""

    # -- connection ------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        if self.limits is not None and not self.limits.admit(conn):
            self.limits = None  # never counted
            return
        original = conn._validate_openssh_certificate  # pylint: disable=protected-access

        async def keep_certificate(username, cert):
            # asyncssh hands us only the CA key; remember the whole certificate.
            try:
                self._last_cert = pki.parse_ssh_cert(cert.export_certificate().decode())
            except GatehouseError:
                self._last_cert = None  # not one of ours (e.g. not Ed25519): the CA check rejects it
            return await original(username, cert)

        conn._validate_openssh_certificate = keep_certificate  # pylint: disable=protected-access

    def validate_public_key(self, username: str, key) -> bool:
        if not self._banner_sent:
            self._banner("plain SSH keys are not accepted here; log in with 'gate login' to get a certificate")
        return False

    def validate_ca_key(self, username: str, key) -> bool:
        cert = self._last_cert
        ca_line = key.export_public_key().decode().strip()
        ca = self.find_user_ca(ca_line) if cert is not None else None
        if ca is None:
            self._banner(f"your certificate is signed by a certificate authority that {self.server_kind} "
                         f"in cluster \"{self.cluster_name}\" does not trust (or trust was disabled); "
                         f"log in to the right cluster with 'gate login'")
            log.info("rejected %s@%s: untrusted certificate authority", username, self.peer)
            return False
        if TUNNEL_LOGIN in cert.principals:
            # A root proxy's role-less tunnel certificate: it opens tunnels, never sessions or routes.
            self._banner(f"a root proxy's tunnel certificate cannot log in as a user on {self.server_kind} "
                         f"in cluster \"{self.cluster_name}\"; users log in with 'gate login'")
            log.warning("rejected a tunnel certificate (%r) presented as a user from %s", cert.key_id, self.peer)
            return False
        now = time.time()
        if cert.valid_before < now:
            self._banner(f"your certificate expired at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(cert.valid_before))}; "
                         f"run 'gate login' to get a new one")
            return False
        if username not in cert.principals:
            self._banner(f"your certificate does not allow login \"{username}\"; allowed logins are "
                         f"[{', '.join(cert.principals)}]")
            return False
        self._pending_ca = ca
        return True

    def auth_completed(self) -> None:
        if self.limits is not None:
            self.limits.authenticated(self.conn)
        self.user = CertUser(self._last_cert, self.conn.get_extra_info("username"), self._pending_ca, self.peer)
        self.auth_ok(self.user)

    def connection_lost(self, exc) -> None:
        if self.limits is not None:
            self.limits.lost(self.conn)

    def check_channel(self) -> None:
        """Call before opening a channel: raises ChannelOpenError when this listener's caps are reached."""
        if self.limits is not None:
            self.limits.check_channel(self.conn)

    def auth_ok(self, user: CertUser) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _banner(self, message: str) -> None:
        self._banner_sent = True
        if self.conn is not None:
            try:
                self.conn.send_auth_banner(f"gatehouse: {message}\n")
            except Exception:  # noqa: BLE001 - the banner is best effort
                pass
