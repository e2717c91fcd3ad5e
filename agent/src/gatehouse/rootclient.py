"""The leaf's calls to its root's public web API: the trust handshake and tunnel-address discovery.

Both go to `https://web_proxy_addr` with no client certificate (the clusters do not
trust each other yet, or the leaf only asks where to dial), verified with the system
trust store (`SSL_CERT_FILE` honoured) or, with `--insecure`, not at all. The leaf's
auth service uses `validate`; its tunnel agent uses `tunnel_addr` when its dial fails.
"""

from __future__ import annotations

import json
import logging
import ssl

from .client import decode_response
from .errors import BadParameter, ConnectionProblem, TLSProblem, TrustError
from .resources import validate_dial_addr
from .wire import PING_PATH, VALIDATE_PATH

log = logging.getLogger("gatehouse.trust")

#: The most a root may answer a handshake or a ping with; anything longer is refused unread.
MAX_ANSWER = 64 * 1024

_TLS_HINT = ("install a certificate from a CA the leaf trusts on the root proxy (proxy_service.https_cert_file), "
             "or for tests start the leaf with --insecure")


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
    """The one sentence for a root web certificate the leaf cannot verify, naming the likely cause."""
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


async def read_bounded(resp, limit: int = MAX_ANSWER) -> bytes | None:
    """The body of RESP, or None as soon as it grows beyond LIMIT bytes."""
    chunks, total = [], 0
    async for chunk in resp.content.iter_chunked(16384):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class RootWebClient:
    """One root's public web API, as its leaf sees it."""

    def __init__(self, web_proxy_addr: str, insecure: bool):
        self.web_proxy_addr = web_proxy_addr
        self.insecure = insecure

    def _session(self, warn: bool):
        import aiohttp
        connector = aiohttp.TCPConnector(ssl=client_ssl_context(self.insecure, warn=warn))
        return aiohttp.ClientSession(connector=connector, trust_env=False)

    async def validate(self, payload: dict, timeout: float = 15.0) -> dict:
        """POST the trust handshake and return the root's answer, or raise a clear error."""
        import aiohttp

        url = f"https://{self.web_proxy_addr}{VALIDATE_PATH}"
        log.debug("trust: sending the handshake for %s to %s", payload.get("cluster_name"), url)
        try:
            async with self._session(warn=True) as session:
                async with session.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    body = await read_bounded(resp)
                    if body is None:
                        raise TrustError(f"{self.web_proxy_addr} answered the trust handshake with more than "
                                         f"{MAX_ANSWER // 1024} KiB; is web_proxy_addr a Gatehouse root proxy?")
                    if resp.status == 404 and not body.startswith(b"{"):
                        raise TrustError(f"{self.web_proxy_addr} answered 404 for the trust handshake; is "
                                         f"web_proxy_addr the root's proxy web address (port 3080)?")
                    return decode_response(resp.status, body)
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise tls_error(self.web_proxy_addr, exc) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = str(exc).rsplit(": ", maxsplit=1)[-1][:160] or exc.__class__.__name__
            raise ConnectionProblem(f"cannot reach the root cluster at {self.web_proxy_addr}: {reason}; check "
                                    f"spec.web_proxy_addr and that the root proxy is running and reachable from "
                                    f"this leaf") from None

    async def tunnel_addr(self, timeout: float = 5.0) -> str | None:
        """The tunnel address the root proxy advertises in its ping answer, or None when it cannot be asked."""
        import aiohttp

        try:
            async with self._session(warn=False) as session:
                async with session.get(f"https://{self.web_proxy_addr}{PING_PATH}",
                                       timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    if resp.status != 200:
                        return None
                    raw = await read_bounded(resp)
                    body = json.loads(raw) if raw is not None else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.debug("cannot ask %s for its tunnel address: %s", self.web_proxy_addr, exc)
            return None
        try:
            addr = body["proxy"]["ssh"]["ssh_tunnel_public_addr"]
            return validate_dial_addr(addr, f"the tunnel address {self.web_proxy_addr} advertises")
        except (TypeError, KeyError):
            return None
        except BadParameter as exc:
            log.warning("trust: %s; keeping the tunnel address the leaf has", exc)
            return None
