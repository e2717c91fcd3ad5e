"""Root side: ask a leaf cluster something through a root proxy that holds its reverse tunnel.

The auth service holds no tunnel itself. It POSTs to the web port of a root proxy
whose tunnel to the leaf is live (presence.py), at the address that
proxy heartbeats from, asking for the proxy's cluster certificate by the TLS server
name `wire.CLUSTER_SERVER_NAME` so both ends are checked against this cluster's CA,
and presents the local admin identity. A proxy that cannot be reached or has just
lost its tunnel is skipped for the next one.
"""

from __future__ import annotations

import logging
import os
import random

from ..client import AsyncAPIClient
from ..errors import ConnectionProblem, GatehouseError
from ..identity import IdentityFiles
from ..wire import CLUSTER_SERVER_NAME
from . import keys

log = logging.getLogger("gatehouse.trust")


class LeafRelay:
    def __init__(self, backend, data_dir: str, presence):
        self.backend = backend
        self.admin_dir = os.path.join(data_dir, "admin")
        self.presence = presence

    async def ask_leaf(self, leaf: str, path: str, body: dict) -> dict:
        """POST BODY to PATH on a root proxy with a live tunnel to LEAF; its answer, or a clear error."""
        live = set((await self.presence.of_leaf(leaf)).proxies)
        proxies = [i.value for i in await self.backend.get_range(keys.PROXIES_PREFIX)
                   if i.value.get("name") in live and i.value.get("web_addr")]
        if not proxies:
            raise ConnectionProblem(f'cluster "{leaf}" is offline: no reverse tunnel from it reaches a root proxy, '
                                    f"so the leaf cannot be asked; check 'gatectl get rc/{leaf}' here and the "
                                    f"leaf's trusted_cluster")
        random.shuffle(proxies)
        context = IdentityFiles(self.admin_dir).client_context(peer_kind="proxy")  # a node there is refused
        error: GatehouseError | None = None
        for proxy in proxies:
            client = AsyncAPIClient(f"https://{proxy['web_addr']}", context, timeout=30,
                                    server_hostname=CLUSTER_SERVER_NAME)
            try:
                return await client.call("POST", path, body)
            except ConnectionProblem as exc:
                log.info("trust: cannot ask leaf %s through root proxy %s: %s", leaf, proxy["name"], exc)
                error = exc
            finally:
                await client.close()
        raise error
