"""API clients: `APIClient` (requests, for the CLIs) and `AsyncAPIClient` (aiohttp, for services).

Both speak the auth API's JSON and re-raise its errors as the same Gatehouse error
types, so a CLI prints the server's one-line message unchanged.
"""

from __future__ import annotations

import json
import logging
import ssl

from .errors import ConnectionProblem, GatehouseError, TLSProblem, from_dict
from .identity import PeerKindError, client_context
from .wire import AUTH_KIND, FORWARDED_IDENTITY

log = logging.getLogger("gatehouse.client")


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


def _base_urls(base_url) -> list[str]:
    """One base URL, or several (auth servers to fail over between), without trailing slashes."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    urls = [str(u).rstrip("/") for u in urls if str(u).strip()]
    if not urls:
        raise GatehouseError("no auth server address is configured; set gatehouse.auth_servers (host:3025)")
    return urls


class _Servers:
    """The addresses of one service (auth servers, or one load balancer) and the one in use.

    A call goes to the server that worked last; when the connection to it fails the next
    one is tried, and the one that answers is remembered. Which failures are tried again
    elsewhere is the caller's decision (FAILOVER in APIClient.call / AsyncAPIClient.call).
    """

    def __init__(self, base_url):
        self.urls = _base_urls(base_url)
        self.current = 0

    def order(self) -> list[int]:
        n = len(self.urls)
        return [(self.current + i) % n for i in range(n)]

    def worked(self, index: int) -> None:
        if index != self.current:
            log.info("auth API: switched to %s", self.urls[index])
        self.current = index

    def failed(self, index: int) -> None:
        """A server that failed mid-request: later calls start with the next one."""
        if index == self.current and len(self.urls) > 1:
            self.current = (index + 1) % len(self.urls)


#: Methods that may be sent to another server after the connection broke mid-request (reads).
#: Writes are sent again elsewhere only when no connection was made (nothing can have arrived).
_REPEATABLE = ("GET", "HEAD")


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

        self.servers = _Servers(base_url)
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

    @property
    def base_url(self) -> str:
        """The server calls go to now."""
        return self.servers.urls[self.servers.current]

    @classmethod
    def for_identity(cls, ident, base_url=None, **kw) -> "APIClient":
        """Client for the auth API with an on-disk identity (see identity.IdentityFiles); BASE_URL (one or
        a list) replaces the identity's auth server addresses."""
        ident.read("ca.crt")  # clear error when the identity is missing
        kw.setdefault("peer_kind", AUTH_KIND)
        return cls(base_url or [f"https://{addr}" for addr in ident.auth_addrs], cert_file=ident.path("identity.crt"),
                   key_file=ident.path("identity.key"), ca_file=ident.path("ca.crt"), check_hostname=False, **kw)

    def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None,
             timeout: float | None = None) -> dict:
        """One request; on a connection failure the next server (if several are configured) is tried."""
        import requests
        error = None
        for index in self.servers.order():
            base = self.servers.urls[index]
            try:
                resp = self.session.request(method, base + path, json=body, params=params,
                                            timeout=timeout or self.timeout)
            except requests.exceptions.SSLError as exc:
                if self.pin_sha256 and "Fingerprints did not match" in str(exc):
                    raise TLSProblem(f"{base} presented a TLS certificate other than the one pinned when you logged "
                                     f"in with --insecure (SHA-256 {self.pin_sha256[:16]}…), so the connection may be "
                                     f"intercepted; if the proxy's certificate was replaced, log in again") from None
                raise _tls_problem(base, exc) from None
            except requests.exceptions.RequestException as exc:
                error = _unreachable(base, exc)
                if method not in _REPEATABLE and not _never_connected(exc):
                    self.servers.failed(index)
                    raise error from None
                continue
            self.servers.worked(index)
            return decode_response(resp.status_code, resp.content)
        raise error

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

    def __init__(self, base_url, ssl_context: ssl.SSLContext, timeout: float = 30.0,
                 server_hostname: str | None = None, connect_timeout: float = 5.0):
        self.servers = _Servers(base_url)   # one address, or several auth servers to fail over between
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.server_hostname = server_hostname  # TLS server name to ask for, when not the URL's host
        self._session = None

    async def _get_session(self):
        import aiohttp
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context, limit=32),
                                                  trace_configs=[_connection_tracer()])
        return self._session

    @property
    def base_url(self) -> str:
        """The server calls go to now."""
        return self.servers.urls[self.servers.current]

    async def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None,
                   timeout: float | None = None, headers: dict | None = None) -> dict:
        """One request; on a connection failure the next server (if several are configured) is tried:
        always when no connection was made, after a broken connection only for reads."""
        import aiohttp
        session = await self._get_session()
        total = timeout or self.timeout
        error = None
        for index in self.servers.order():
            base = self.servers.urls[index]
            attempt: dict = {}     # "connected" once a connection to BASE exists (_connection_tracer)
            try:
                async with session.request(method, base + path, json=body, params=params, headers=headers,
                                           server_hostname=self.server_hostname, trace_request_ctx=attempt,
                                           timeout=aiohttp.ClientTimeout(total=total, sock_connect=min(
                                               total, self.connect_timeout))) as resp:
                    content = await resp.read()
            except aiohttp.ClientSSLError as exc:
                raise _tls_problem(base, exc) from None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = _unreachable(base, exc)
                if method not in _REPEATABLE and attempt.get("connected"):
                    self.servers.failed(index)
                    raise error from None
                continue
            self.servers.worked(index)
            return decode_response(resp.status, content)
        raise error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _connection_tracer():
    """aiohttp trace hooks that mark a request's trace_request_ctx dict "connected" once it has a
    connection. Only before that is a write certainly not sent: aiohttp itself sends PUT and DELETE
    a second time after a dropped connection, so a connect error can follow a request that arrived."""
    import aiohttp

    async def connected(session, ctx, params) -> None:
        if isinstance(ctx.trace_request_ctx, dict):
            ctx.trace_request_ctx["connected"] = True
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(connected)
    trace.on_connection_reuseconn.append(connected)
    return trace


def _never_connected(exc: BaseException) -> bool:
    """Whether a requests failure happened before a connection existed (so no request was sent)."""
    import requests
    import urllib3
    return isinstance(exc, requests.exceptions.ConnectTimeout) or \
        _find_cause(exc, urllib3.exceptions.NewConnectionError) is not None


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
