"""On-disk identities (X.509 client cert + key + cluster CA, optional SSH host cert).

One directory per identity, files 0600:
  identity.crt  identity.key  ca.crt  auth_addr      -- for the auth API (mutual TLS; auth_addr:
                                                        one auth server address per line)
  ssh_key  ssh_key-cert.pub  host_ca.pub  user_ca.pub -- for SSH servers (nodes, proxies)
The auth server writes `data_dir/admin/` for gatectl; joined processes keep
`data_dir/identity/<role>/`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass, field

from . import pki
from .errors import BadParameter
from .wire import AUTH_KIND


log = logging.getLogger("gatehouse.identity")


@dataclass
class IdentityFiles:
    dir: str
    #: Called after the certificates on disk were renewed, so servers and clients load them.
    _renewed: list = field(default_factory=list, repr=False, compare=False)

    def on_renewed(self, callback) -> None:
        """Call ``callback()`` (a function or coroutine function) after every renewal of this identity."""
        self._renewed.append(callback)

    async def notify_renewed(self) -> None:
        for callback in list(self._renewed):
            try:
                result = callback()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # noqa: BLE001 - one listener's trouble must not stop the others
                log.exception("reloading the renewed identity in %s failed", self.dir)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def exists(self) -> bool:
        return os.path.exists(self.path("identity.crt")) and os.path.exists(self.path("identity.key"))

    def read(self, name: str) -> str:
        try:
            with open(self.path(name), encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            raise BadParameter(f"identity file {self.path(name)} is missing; on the auth server start gatehouse "
                               f"first, elsewhere pass --identity or log in again") from None
        except PermissionError:
            raise BadParameter(f"cannot read {self.path(name)}: permission denied; run as the user that owns the "
                               f"gatehouse data directory (usually root)") from None

    @property
    def auth_addr(self) -> str:
        """The first auth server address (see auth_addrs)."""
        return self.auth_addrs[0]

    @property
    def auth_addrs(self) -> list[str]:
        """The auth server addresses, one per line of `auth_addr` (several auth servers on one backend)."""
        addrs = [line.strip() for line in self.read("auth_addr").splitlines() if line.strip()]
        if not addrs:
            raise BadParameter(f"identity file {self.path('auth_addr')} names no auth server; write its "
                               f"host:port there, or pass --auth-server")
        return addrs

    def save(self, files: dict[str, str]) -> None:
        for name, content in files.items():
            pki.write_secret(self.path(name), content)

    def ssh_key(self):
        """This member's SSH private key for asyncssh (imported here, on demand, to keep CLIs quick)."""
        import asyncssh
        return asyncssh.import_private_key(self.read("ssh_key"))

    def ssh_host_keypair(self) -> tuple:
        """The SSH key with its host certificate, as asyncssh's server_host_keys entries take them."""
        import asyncssh
        return self.ssh_key(), asyncssh.import_certificate(self.read("ssh_key-cert.pub"))

    def client_context(self, peer_kind: str = AUTH_KIND) -> ssl.SSLContext:
        """Context for calling a server of this cluster that must be PEER_KIND (auth, or a proxy)."""
        return client_context(self.path("identity.crt"), self.path("identity.key"), self.read("ca.crt"),
                              peer_kind=peer_kind)

    def reload(self, ctx: ssl.SSLContext) -> None:
        """Make CTX present this identity's current (renewed) certificate on its next connections."""
        ctx.load_cert_chain(self.path("identity.crt"), self.path("identity.key"))


def client_context(cert_file: str | None, key_file: str | None, ca_pem: str | None,
                   insecure: bool = False, peer_kind: str | None = None) -> ssl.SSLContext:
    """TLS client context pinned to the cluster's private CA.

    Host names are not checked: only certificates issued by this cluster's own CA are
    accepted, and members reach each other by addresses the CA cannot know in advance.
    What the server is, is checked instead: with PEER_KIND, a server whose certificate's
    OU names another kind (a node or proxy playing auth) is refused right after the
    handshake, before a request is sent.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    if insecure or not ca_pem:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem)
        if peer_kind:
            require_peer_kind(ctx, peer_kind)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


class PeerKindError(ssl.SSLCertVerificationError):
    """The server's certificate is from the cluster CA but names another kind of member."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_peer_kind(peercert: dict, kind: str) -> None:
    """Raise PeerKindError unless the verified server certificate's OU is KIND."""
    subject = {k: v for rdn in (peercert or {}).get("subject", ()) for k, v in rdn}
    actual = subject.get("organizationalUnitName", "")
    if actual != kind:
        who = f'{actual or "unknown"} "{subject.get("commonName", "?")}"'
        raise PeerKindError(f"the server is {who} of cluster \"{subject.get('organizationName', '?')}\", not the "
                            f"{kind} service it must be; a member of the cluster may be impersonating it — check the "
                            f"address you were given for the {kind} service")


def require_peer_kind(ctx: ssl.SSLContext, kind: str) -> None:
    """Make CTX check, once each handshake completes, that the server's certificate is a KIND's."""
    def checking(base):
        class Checked(base):
            def do_handshake(self, *args):
                result = super().do_handshake(*args)
                check_peer_kind(self.getpeercert(), kind)
                return result
        Checked.__name__ = f"{base.__name__}For{kind.capitalize()}"
        return Checked
    ctx.sslobject_class = checking(ssl.SSLObject)   # asyncio (aiohttp)
    ctx.sslsocket_class = checking(ssl.SSLSocket)   # blocking sockets (requests)
