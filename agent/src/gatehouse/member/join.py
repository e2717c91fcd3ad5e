"""How a node or proxy process gets its cluster identity.

In the auth process itself the identity is issued directly; elsewhere the process
joins once with a `node`/`proxy` join token and keeps the result under
`data_dir/identity/<role>/`. The token is never needed again after that.

The token is a secret, so it only ever goes to the real auth server: the process
first fetches the cluster's TLS CA (`GET /v1/ca`, public), checks it against
`gatehouse.ca_pin`, and then sends the token over TLS verified against that CA, to a
server whose certificate says it is auth. Without a pin the operator must say so
(`gatehouse.join_insecure: true`: trust the first answer), or the join is refused.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Awaitable, Callable

from .. import pki
from ..client import AsyncAPIClient
from ..clock import now_iso
from ..config import Config
from ..errors import AccessDenied, BadParameter, GatehouseError
from ..identity import IdentityFiles, client_context
from ..wire import AUTH_KIND, CA_PATH

log = logging.getLogger("gatehouse.join")


async def obtain_identity(cfg: Config, role: str, name: str, principals: list[str],
                          issue: Callable[..., Awaitable[dict]] | None = None,
                          keep_keys: bool = False) -> IdentityFiles:
    """This process's identity for ROLE: issued by ``issue`` (the auth service of this very
    process), else the one it joined with earlier, else a new one joined with the join token.
    ``keep_keys``: ``issue`` certifies the keys already on disk again (a process taking over from
    another with a reload, whose certificates for the same keys must stay valid while it drains)."""
    ident = IdentityFiles(os.path.join(cfg.data_dir, "identity", role))
    if issue is None and ident.exists() and os.path.exists(ident.path("ssh_key")):
        log.debug("using the existing %s identity in %s", role, ident.dir)
        _check_not_expired(ident, role, name)
        return ident
    ssh_key, tls_key, tls_pub = _existing_keys(ident) if keep_keys else (None, "", "")
    if ssh_key is None:
        ssh_key = pki.new_ssh_key(comment=f"{role}:{name}")
        tls_key, tls_pub = pki.new_tls_key()
    if issue is not None:
        result = await issue(role, name, ssh_key.public_line, tls_pub, principals)
    else:
        result = await _join(cfg, role, name, ssh_key.public_line, tls_pub)
    ident.save({"identity.key": tls_key, "identity.crt": result["tls_cert"], "ca.crt": result["tls_ca"],
                "auth_addr": "\n".join(cfg.auth_addrs) + "\n", "ssh_key": ssh_key.private_openssh,
                "ssh_key-cert.pub": result["ssh_cert"], "host_ca.pub": result["host_ca"],
                "user_ca.pub": result["user_ca"], "cluster_name": result["cluster_name"] + "\n"})
    return ident


def _existing_keys(ident: IdentityFiles) -> tuple:
    """(SSH key pair, TLS private key, TLS public key) on disk, or (None, "", "") when there are none."""
    try:
        ssh_private, tls_key = ident.read("ssh_key"), ident.read("identity.key")
        return (pki.SSHKeyPair(ssh_private, pki.ssh_public_from_private(ssh_private)), tls_key,
                pki.tls_public_from_private(tls_key))
    except (OSError, GatehouseError):
        return None, "", ""


async def _join(cfg: Config, role: str, name: str, ssh_pub: str, tls_pub: str) -> dict:
    """Join with the token, sent only to the auth server whose CA matches the pin."""
    ca_pem = await _pinned_ca(cfg)
    client = AsyncAPIClient(_urls(cfg.auth_addrs), client_context(None, None, ca_pem, peer_kind=AUTH_KIND))
    try:
        # Auth picks the principals of our certificates; the request names only what we are.
        result = await client.call("POST", "/v1/join", {
            "token": cfg.join_token, "role": role, "name": name, "ssh_public_key": ssh_pub,
            "tls_public_key": tls_pub})
    finally:
        await client.close()
    log.info("joined cluster %s as %s %s", result["cluster_name"], role, name)
    return {**result, "tls_ca": ca_pem}


async def _pinned_ca(cfg: Config) -> str:
    """The cluster's TLS CA, checked against gatehouse.ca_pin (or trusted on first use when the config says so)."""
    if not cfg.ca_pin and not cfg.join_insecure:
        raise BadParameter(f"{cfg.path}: gatehouse.ca_pin is not set, so the join token could be sent to an impostor; "
                           f"set it to the tls CA fingerprint that 'gatectl status' shows on the auth server, or set "
                           f"gatehouse.join_insecure: true to trust the first auth server that answers")
    # Nothing secret is sent on this connection: it only fetches the CA the pin is checked against.
    client = AsyncAPIClient(_urls(cfg.auth_addrs), client_context(None, None, None, insecure=True))
    try:
        answer = await client.call("GET", CA_PATH)
    except GatehouseError as exc:
        if "HTTP 404" in str(exc):
            raise AccessDenied(f"the auth server at {_addr(client)} does not publish its CA at {CA_PATH} (an "
                               f"older version?); upgrade the auth server before joining new members") from None
        raise
    finally:
        await client.close()
    ca_pem = answer.get("tls_ca")
    try:
        actual = pki.tls_fingerprint(ca_pem if isinstance(ca_pem, str) else "")
    except GatehouseError:
        raise AccessDenied(f"the server at {_addr(client)} answered {CA_PATH} without a valid CA certificate; "
                           f"check gatehouse.auth_servers") from None
    if cfg.ca_pin:
        if normal_pin(actual) != normal_pin(cfg.ca_pin):
            raise AccessDenied(f"the auth server's CA fingerprint {actual} does not match gatehouse.ca_pin "
                               f"{cfg.ca_pin}; check the auth_servers address and the pin")
    else:
        log.warning("gatehouse.join_insecure is set: trusting the auth server's CA on first use (fingerprint %s); "
                    "set gatehouse.ca_pin to check it", actual)
    return ca_pem


def _check_not_expired(ident: IdentityFiles, role: str, name: str) -> None:
    """An identity that expired while this process was down cannot renew itself; say what to do."""
    expires = pki.tls_identity(ident.read("identity.crt"))["expires"]
    if expires < time.time():
        raise BadParameter(f"the {role} identity in {ident.dir} expired at {now_iso(expires)} while gatehouse was not "
                           f"running; revoke it on the auth server ('gatectl rm {role}/{name}'), remove {ident.dir} "
                           f"and start again with a new join token")


def normal_pin(text: str) -> str:
    """A fingerprint compared the way people write it: case, `sha256:` and colons do not matter."""
    text = text.strip().lower()
    return text.removeprefix("sha256:").replace(":", "")


def api_client(ident: IdentityFiles) -> AsyncAPIClient:
    """A client that calls auth as IDENT (and presents its renewed certificate once it is renewed)."""
    client = AsyncAPIClient(_urls(ident.auth_addrs), ident.client_context())
    ident.on_renewed(lambda: ident.reload(client.ssl_context))
    return client


def _urls(addrs: list[str]) -> list[str]:
    """Base URLs of the auth servers (the client fails over between them)."""
    return [f"https://{addr}" for addr in addrs]


def _addr(client: AsyncAPIClient) -> str:
    """The host:port of the auth server the client called last."""
    return client.base_url.removeprefix("https://")
