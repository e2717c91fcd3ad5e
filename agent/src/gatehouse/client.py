"""API clients: `APIClient` (requests, for the CLIs) and `AsyncAPIClient` (aiohttp, for services).

Both speak the auth API's JSON and re-raise its errors as the same Gatehouse error
types, so a CLI prints the server's one-line message unchanged.
"""

from __future__ import annotations

import json
import ssl

from .errors import ConnectionProblem, GatehouseError, TLSProblem, from_dict
from .identity import PeerKindError, client_context
from .wire import AUTH_KIND, FORWARDED_IDENTITY


def _unreachable(url: str, exc: Exception) -> ConnectionProblem:
    # requests and aiohttp nest the OS error in their own text; keep its last sentence only.
    reason = str(exc).rsplit(": ", maxsplit=1)[-1].rstrip("')\"")[:160] or exc.__class__.__name__
    return ConnectionProblem(f"cannot reach {url}: {reason}; check that gatehouse is running there and the "
                             f"address and port are right")


def _tls_problem(url: str, exc: Exception) -> TLSProblem:
    wrong_kind = _find_cause(exc, PeerKindError)
    if wrong_kind is not None:
        return TLSProblem(f"refused {url}: {wrong_kind.message}")
    refused = _find_cause(exc, ssl.SSLCertVerificationError)
    if refused is not None and getattr(refused, "verify_message", ""):
        return TLSProblem(f"TLS handshake with {url} failed: its certificate was refused ({refused.verify_message}); "
                          f"the certificate or CA does not match this cluster, or the server is not the service it "
                          f"should be — check the address and the identity files")
    return TLSProblem(f"TLS handshake with {url} failed ({str(exc)[:160]}); the certificate or CA does not "
                      f"match this cluster — log in again or check the identity files")


def server_cert_sha256(host: str, port: int, timeout: float = 10.0) -> str:
    """SHA-256 (hex) of the DER certificate the TLS server at HOST:PORT presents, unverified: what
    `gate login --insecure` pins, so later calls reach the same server."""
    import hashlib
    import socket
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise _unreachable(f"https://{host}:{port}", exc) from None
    return hashlib.sha256(der).hexdigest()


def _find_cause(exc: BaseException, kind: type, limit: int = 24):
    """The KIND exception somewhere inside EXC (requests and aiohttp wrap the ssl error in their own)."""
    seen, todo = set(), [exc]
    while todo and len(seen) < limit:
        current = todo.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        todo += [current.__cause__, current.__context__, getattr(current, "reason", None),
                 getattr(current, "certificate_error", None), getattr(current, "os_error", None)]
        todo += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
    return None


class APIClient:
    """Synchronous client; lazily imports requests so CLI start-up stays fast.

    `ca_file` pins the server to that CA (our clusters use private CAs); with
    `check_hostname=False` only the CA is checked, which is how cluster members reach
    each other by addresses the CA cannot know in advance. `insecure` skips
    verification entirely (self-signed proxies in test setups).
    """

    def __init__(self, base_url: str, *, cert_file: str | None = None, key_file: str | None = None,
                 ca_file: str | None = None, insecure: bool = False, check_hostname: bool = True,
                 timeout: float = 30.0, forwarded_user: str | None = None, pin_sha256: str = "",
                 peer_kind: str | None = None):
        import requests
        from requests.adapters import HTTPAdapter

        # A server of the cluster must also be the kind of member it is called as (identity.client_context).
        context = None
        if peer_kind and ca_file and not insecure:
            with open(ca_file, encoding="utf-8") as fh:
                context = client_context(None, None, fh.read(), peer_kind=peer_kind)

        class _Adapter(HTTPAdapter):
            def init_poolmanager(self, *args, **kwargs):
                if not check_hostname:
                    kwargs["assert_hostname"] = False
                if pin_sha256:  # the server's certificate must be this one (SHA-256 of its DER form)
                    kwargs["assert_fingerprint"] = pin_sha256
                if context is not None:
                    kwargs["ssl_context"] = context
                super().init_poolmanager(*args, **kwargs)

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.pin_sha256 = pin_sha256
        self.session = requests.Session()
        # Environment CA bundles and proxies must not override the pinned cluster CA.
        self.session.trust_env = False
        self.session.mount("https://", _Adapter())
        self.session.verify = False if insecure else (ca_file or True)
        if cert_file:
            self.session.cert = (cert_file, key_file)
        if forwarded_user:
            self.session.headers[FORWARDED_IDENTITY] = forwarded_user
        if insecure:
            import urllib3
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    @classmethod
    def for_identity(cls, ident, base_url: str | None = None, **kw) -> "APIClient":
        """Client for the auth API with an on-disk identity (see identity.IdentityFiles)."""
        ident.read("ca.crt")  # clear error when the identity is missing
        kw.setdefault("peer_kind", AUTH_KIND)
        return cls(base_url or f"https://{ident.auth_addr}", cert_file=ident.path("identity.crt"),
                   key_file=ident.path("identity.key"), ca_file=ident.path("ca.crt"), check_hostname=False, **kw)

    def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None,
             timeout: float | None = None) -> dict:
        import requests
        url = self.base_url + path
        try:
            resp = self.session.request(method, url, json=body, params=params, timeout=timeout or self.timeout)
        except requests.exceptions.SSLError as exc:
            if self.pin_sha256 and "Fingerprints did not match" in str(exc):
                raise TLSProblem(f"{self.base_url} presented a TLS certificate other than the one pinned when you "
                                 f"logged in with --insecure (SHA-256 {self.pin_sha256[:16]}…), so the connection "
                                 f"may be intercepted; if the proxy's certificate was replaced, log in again") from None
            raise _tls_problem(self.base_url, exc) from None
        except requests.exceptions.RequestException as exc:
            raise _unreachable(self.base_url, exc) from None
        return decode_response(resp.status_code, resp.content)

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.call("PUT", path, body, **kw)

    def delete(self, path, **kw):
        return self.call("DELETE", path, **kw)


class AsyncAPIClient:
    """aiohttp client used inside the agent (nodes and proxies talking to auth)."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, timeout: float = 30.0,
                 server_hostname: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.server_hostname = server_hostname  # TLS server name to ask for, when not the URL's host
        self._session = None

    async def _get_session(self):
        import aiohttp
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context, limit=32))
        return self._session

    async def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None,
                   timeout: float | None = None, headers: dict | None = None) -> dict:
        import aiohttp
        session = await self._get_session()
        url = self.base_url + path
        try:
            async with session.request(method, url, json=body, params=params, headers=headers,
                                       server_hostname=self.server_hostname,
                                       timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)) as resp:
                return decode_response(resp.status, await resp.read())
        except aiohttp.ClientSSLError as exc:
            raise _tls_problem(self.base_url, exc) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(self.base_url, exc) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def decode_response(status: int, content: bytes) -> dict:
    """A Gatehouse JSON answer as a dict; an error answer raised as the Gatehouse error it names."""
    try:
        payload = json.loads(content or b"{}")
    except ValueError:
        payload = {"error": {"message": f"the server answered with HTTP {status} and a body that is not JSON"}}
    if status >= 400:
        raise from_dict(payload, status)
    if not isinstance(payload, dict):
        raise GatehouseError("the server answered with an unexpected response")
    return payload
