"""How a node or proxy process gets its cluster identity.

In the auth process itself the identity is issued directly; elsewhere the process
joins once with a `node`/`proxy` join token and keeps the result under
`data_dir/identity/<role>/`. The token is never needed again after that.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Awaitable, Callable

from .. import pki
from ..client import AsyncAPIClient
from ..config import Config
from ..errors import AccessDenied
from ..identity import IdentityFiles, client_context

log = logging.getLogger("gatehouse.join")


async def obtain_identity(cfg: Config, role: str, name: str, principals: list[str],
                          issue: Callable[..., Awaitable[dict]] | None = None) -> IdentityFiles:
    """This process's identity for ROLE: issued by ``issue`` (the auth service of this very
    process), else the one it joined with earlier, else a new one joined with the join token."""
    ident = IdentityFiles(os.path.join(cfg.data_dir, "identity", role))
    if issue is None and ident.exists() and os.path.exists(ident.path("ssh_key")):
        log.debug("using the existing %s identity in %s", role, ident.dir)
        return ident
    ssh_key = pki.new_ssh_key(comment=f"{role}:{name}")
    tls_key, tls_pub = pki.new_tls_key()
    if issue is not None:
        result = await issue(role, name, ssh_key.public_line, tls_pub, principals)
    else:
        result = await _join(cfg, role, name, ssh_key.public_line, tls_pub, principals)
    ident.save({"identity.key": tls_key, "identity.crt": result["tls_cert"], "ca.crt": result["tls_ca"],
                "auth_addr": cfg.auth_addr + "\n", "ssh_key": ssh_key.private_openssh,
                "ssh_key-cert.pub": result["ssh_cert"], "host_ca.pub": result["host_ca"],
                "user_ca.pub": result["user_ca"], "cluster_name": result["cluster_name"] + "\n"})
    return ident


async def _join(cfg: Config, role: str, name: str, ssh_pub: str, tls_pub: str, principals: list[str]) -> dict:
    # Before joining there is no CA to verify auth with; a ca_pin closes that gap.
    client = AsyncAPIClient(f"https://{cfg.auth_addr}", client_context(None, None, None, insecure=True))
    try:
        result = await client.call("POST", "/v1/join", {
            "token": cfg.join_token, "role": role, "name": name, "ssh_public_key": ssh_pub,
            "tls_public_key": tls_pub, "principals": principals + [socket.gethostname()]})
    finally:
        await client.close()
    if cfg.ca_pin:
        actual = pki.tls_fingerprint(result["tls_ca"])
        if actual != cfg.ca_pin:
            raise AccessDenied(f"the auth server's CA fingerprint {actual} does not match gatehouse.ca_pin "
                               f"{cfg.ca_pin}; check the auth_servers address and the pin")
    else:
        log.warning("no gatehouse.ca_pin configured: trusting the auth server's CA on first use "
                    "(fingerprint %s)", pki.tls_fingerprint(result["tls_ca"]))
    log.info("joined cluster %s as %s %s", result["cluster_name"], role, name)
    return result


def api_client(ident: IdentityFiles) -> AsyncAPIClient:
    return AsyncAPIClient(f"https://{ident.auth_addr}", ident.client_context())
