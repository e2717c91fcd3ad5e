"""The trust handshake on the wire: the leaf's request, the root's checks, TLS errors.

The leaf's auth service POSTs `{token, cluster_name, expected_root, version, host_ca}`
to the root's `https://web_proxy_addr/webapi/trustedclusters/validate`; the root
answers with its own host and user CA public parts. Only public keys cross; the token
is used for this one request and never stored on the leaf.

The pure checks live here so they are unit-tested without a network.
"""

from __future__ import annotations

import logging
import ssl

from .. import __version__
from ..errors import BadParameter, ConnectionProblem, TLSProblem, TrustError

log = logging.getLogger("gatehouse.trust")

VALIDATE_PATH = "/webapi/trustedclusters/validate"
_TLS_HINT = ("install a certificate from a CA the leaf trusts on the root proxy (proxy_service.https_cert_file), "
             "or for tests start the leaf with --insecure")


def major(version: str) -> int:
    try:
        return int(str(version).lstrip("v").split(".")[0])
    except ValueError:
        raise BadParameter(f'version "{version}" is not a valid version like 1.2.3') from None


def check_version(root_version: str, leaf_version: str) -> None:
    """The leaf may be at most one major version behind the root, and never ahead of it."""
    root, leaf = major(root_version), major(leaf_version)
    if leaf > root:
        raise TrustError(f"the leaf runs version {leaf_version}, newer than the root's {root_version}; "
                         f"upgrade the root cluster first")
    if leaf < root - 1:
        raise TrustError(f"the leaf runs version {leaf_version}, more than one major version behind the root's "
                         f"{root_version}; upgrade the leaf to at least {root - 1}.0.0")


def check_request(body: dict, root_name: str) -> tuple[str, str]:
    """Validate a handshake request at the root; returns (leaf name, leaf host CA line)."""
    leaf = str(body.get("cluster_name") or "")
    if not leaf:
        raise BadParameter("the trust request names no leaf cluster; send cluster_name")
    cas = body.get("host_cas")
    if not isinstance(cas, list) or len(cas) != 1 or not isinstance(cas[0], str) or not cas[0].strip():
        raise TrustError(f"the leaf must send exactly one host certificate authority, got "
                         f"{len(cas) if isinstance(cas, list) else 'none'}; check the leaf's auth service")
    if leaf == root_name:
        raise TrustError(f'the leaf cluster has the same name as the root ("{leaf}"); cluster names must differ — '
                         f"rename the leaf's auth_service.cluster_name")
    expected = str(body.get("expected_root") or "")
    if expected and expected != root_name:
        raise TrustError(f'the trusted_cluster is named "{expected}" but the root cluster is called '
                         f'"{root_name}"; set metadata.name: {root_name}')
    check_version(__version__, str(body.get("version") or "0"))
    return leaf, cas[0].strip()


def client_ssl_context(insecure: bool, warn: bool = True) -> ssl.SSLContext:
    """Verify the root's web certificate with the system trust store (SSL_CERT_FILE honoured)."""
    ctx = ssl.create_default_context()
    if insecure:
        if warn:
            log.warning("INSECURE: not verifying the root cluster's web certificate (--insecure); "
                        "never use this outside tests")
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_error(addr: str, exc: Exception) -> TLSProblem:
    cert_error = getattr(exc, "certificate_error", None) or exc
    code = getattr(cert_error, "verify_code", None)
    text = str(getattr(cert_error, "verify_message", "") or cert_error)
    if code in (18, 19) or "self-signed" in text or "self signed" in text:
        cause = "its certificate is self-signed"
    elif code == 62 or "hostname mismatch" in text.lower() or "doesn't match" in text:
        cause = f"its certificate is not valid for {addr.rsplit(':', 1)[0]}"
    elif code == 10 or "expired" in text:
        cause = "its certificate has expired"
    else:
        cause = text[:160]
    return TLSProblem(f"the trusted cluster uses misconfigured HTTP/TLS certificate: {cause} ({addr}); {_TLS_HINT}")


async def send_validate(web_proxy_addr: str, payload: dict, insecure: bool, timeout: float = 15.0) -> dict:
    """POST the handshake to the root proxy and return its answer, or raise a clear error."""
    import aiohttp

    from ..client import _decode

    url = f"https://{web_proxy_addr}{VALIDATE_PATH}"
    log.debug("trust: sending the handshake for %s to %s", payload.get("cluster_name"), url)
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(insecure))
    try:
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            async with session.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                body = await resp.read()
                if resp.status == 404 and not body.startswith(b"{"):
                    raise TrustError(f"{web_proxy_addr} answered 404 for the trust handshake; is web_proxy_addr "
                                     f"the root's proxy web address (port 3080)?")
                return _decode(resp.status, body)
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError, ssl.SSLError) as exc:
        raise tls_error(web_proxy_addr, exc) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        reason = str(exc).split(": ")[-1][:160] or exc.__class__.__name__
        raise ConnectionProblem(f"cannot reach the root cluster at {web_proxy_addr}: {reason}; check "
                                f"spec.web_proxy_addr and that the root proxy is running and reachable from "
                                f"this leaf") from None



async def fetch_tunnel_addr(web_proxy_addr: str, insecure: bool, timeout: float = 5.0) -> str | None:
    """The tunnel address the root proxy advertises in /webapi/ping, or None when it cannot be asked."""
    import aiohttp

    connector = aiohttp.TCPConnector(ssl=client_ssl_context(insecure, warn=False))
    try:
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            async with session.get(f"https://{web_proxy_addr}/webapi/ping",
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        log.debug("cannot ask %s for its tunnel address: %s", web_proxy_addr, exc)
        return None
    addr = ((body.get("proxy") or {}).get("ssh") or {}).get("ssh_tunnel_public_addr") if isinstance(body, dict) else None
    return str(addr) if addr else None
