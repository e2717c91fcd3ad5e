"""The typed context a member service (node, proxy, tunnel) is built with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..audit import AuditLog
from ..client import AsyncAPIClient
from ..config import Config
from ..identity import IdentityFiles
from .cache import ClusterCache
from .checkers import CheckerCache


@dataclass(frozen=True)
class MemberContext:
    """One process's view of its cluster: config, its identity for one role, the auth API
    client for that identity, the shared cache with its checkers, and the audit log."""

    cfg: Config
    ident: IdentityFiles
    client: AsyncAPIClient
    cache: ClusterCache
    checkers: CheckerCache
    audit: AuditLog

    @property
    def name(self) -> str:
        return self.cfg.nodename

    def for_identity(self, ident: IdentityFiles, client: AsyncAPIClient) -> "MemberContext":
        """The same process's context acting under another of its identities (node vs proxy)."""
        return dataclasses.replace(self, ident=ident, client=client)
