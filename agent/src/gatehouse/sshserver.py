"""Shared SSH server base for nodes and proxies: user-certificate authentication.

Only certificates signed by a trusted, active user CA are accepted — plain keys and
passwords never are. asyncssh validates signature, principal and validity; we keep
the validated certificate (asyncssh does not expose it) so the access decision can
read its roles, traits and principals, and we explain failures in an auth banner,
which both `gate` and OpenSSH print.
"""

from __future__ import annotations

import logging
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

    def __init__(self, find_user_ca: Callable[[str], Optional[dict]], cluster_name: str):
        self.find_user_ca = find_user_ca
        self.cluster_name = cluster_name
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
        self.user = CertUser(self._last_cert, self.conn.get_extra_info("username"), self._pending_ca, self.peer)
        self.auth_ok(self.user)

    def auth_ok(self, user: CertUser) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _banner(self, message: str) -> None:
        self._banner_sent = True
        if self.conn is not None:
            try:
                self.conn.send_auth_banner(f"gatehouse: {message}\n")
            except Exception:  # noqa: BLE001 - the banner is best effort
                pass
