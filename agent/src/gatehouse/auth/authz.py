"""Who is calling the auth service, and the checks of what each kind of caller may do.

The API layer only establishes the identity (from the verified client certificate, or
the user a proxy forwards for); every permission check is one of the calls below,
made by the service method that does the work, so one layer decides and the same
rule holds whether a request came over HTTPS or from this process.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AccessDenied


@dataclass(frozen=True)
class Identity:
    """Who is calling: taken from a verified X.509 client certificate."""
    name: str
    kind: str            # admin | user | node | proxy (wire.IDENTITY_KINDS)
    cluster: str
    #: For nodes and proxies: the fingerprint of the certificate's public key (pki.tls_key_fingerprint),
    #: and the revision of the member record that holds the name for that key (0: none; auth/members.py).
    key: str = ""
    registered: int = 0

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"


def require_admin(ident: Identity, what: str) -> None:
    """Only this cluster's admin identity may do WHAT ("create join tokens")."""
    if not ident.is_admin:
        raise AccessDenied(f"{ident.kind} {ident.name!r} is not allowed to {what}; use the admin identity "
                           f"on the auth server")


def require_kind(ident: Identity, kinds: tuple[str, ...], refusal: str) -> None:
    """Only callers of these kinds; anyone else gets REFUSAL, a sentence that says where to go instead."""
    if ident.kind not in kinds:
        raise AccessDenied(refusal)


def require_node_itself(ident: Identity, name: str) -> None:
    """A node speaks only for itself (the admin may speak for any node)."""
    require_kind(ident, ("node", "admin"), "only nodes can send node heartbeats")
    if ident.kind == "node" and ident.name != name:
        raise AccessDenied(f"node {ident.name!r} cannot heartbeat as {name!r}")
