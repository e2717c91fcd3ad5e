"""Certificates that renew themselves at half their lifetime, without dropping anything.

A member's identity (its SSH host certificate and X.509 certificate, `POST /v1/renew`)
and a root proxy's tunnel certificate are re-signed for the same keys when half of
what was left of their lifetime has passed. Connections made before keep going with
the certificate they authenticated with; new ones use the new certificate (servers
reload their host keys, clients their TLS certificate). A renewal that fails is
retried, backing off, until it succeeds or the certificate expires; a revoked member
gets refused here and stops working when its certificates expire.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Awaitable, Callable

from .. import pki
from ..client import AsyncAPIClient
from ..clock import now_iso
from ..errors import GatehouseError
from ..identity import IdentityFiles

log = logging.getLogger("gatehouse.renew")

#: Never renew more often than this (seconds), whatever the lifetime.
MIN_DELAY = 2.0
MAX_RETRY_DELAY = 60.0


def renew_delay(valid_before: float, now: float | None = None) -> float:
    """Seconds until half of the remaining lifetime has passed."""
    now = time.time() if now is None else now
    return max(MIN_DELAY, (valid_before - now) / 2)


class Renewer:
    """Calls RENEW (which returns the new certificate's expiry, unix time) at half-life, forever."""

    def __init__(self, what: str, renew: Callable[[], Awaitable[float]], valid_before: float):
        self.what = what
        self.renew = renew
        self.valid_before = valid_before
        self.renewals = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"renew-{self.what}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        delay = renew_delay(self.valid_before)
        retry = 1.0
        while True:
            await asyncio.sleep(delay)
            try:
                self.valid_before = await self.renew()
            except asyncio.CancelledError:
                raise
            except (GatehouseError, OSError) as exc:
                left = self.valid_before - time.time()
                log.warning("cannot renew %s (%s); retrying, it expires in %ds", self.what, exc, max(0, int(left)))
                delay = min(retry * (0.5 + random.random()), MAX_RETRY_DELAY, max(MIN_DELAY, left / 2))
                retry = min(retry * 2, MAX_RETRY_DELAY)
                continue
            retry = 1.0
            self.renewals += 1
            log.info("renewed %s (valid until %s)", self.what, now_iso(self.valid_before))
            delay = renew_delay(self.valid_before)


def identity_expiry(ident: IdentityFiles) -> float:
    """When the first of the identity's certificates expires (unix time)."""
    tls = pki.tls_identity(ident.read("identity.crt"))["expires"]
    ssh = pki.parse_ssh_cert(ident.read("ssh_key-cert.pub")).valid_before
    return float(min(tls, ssh))


def identity_renewer(ident: IdentityFiles, client: AsyncAPIClient, kind: str) -> Renewer:
    """Renews a node or proxy identity through CLIENT (which calls auth as that identity)."""

    async def renew() -> float:
        answer = await client.call("POST", "/v1/renew", {
            "ssh_public_key": pki.ssh_public_from_private(ident.read("ssh_key")),
            "tls_public_key": pki.tls_public_from_private(ident.read("identity.key"))})
        ident.save({"identity.crt": answer["tls_cert"], "ssh_key-cert.pub": answer["ssh_cert"]})
        await ident.notify_renewed()  # its API clients (join.api_client) and servers load the new certificates
        return identity_expiry(ident)

    return Renewer(f"the {kind} identity", renew, identity_expiry(ident))
