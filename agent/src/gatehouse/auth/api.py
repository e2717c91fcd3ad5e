"""The auth service's HTTPS API (port 3025), mutual TLS with the cluster X.509 CA.

Handlers are thin: they read the caller's identity from the verified client
certificate, parse JSON and call `AuthService`, whose methods decide what that
identity may do (authz.py). Errors travel as `{"error": {"code", "message"}}` with
the error's HTTP status.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl

from aiohttp import web

from .. import __version__, listeners, pki, resources
from ..config import is_ip, join_hostport, split_hostport
from ..durations import parse_ttl
from ..errors import AccessDenied, BadParameter
from ..httputil import error_middleware, make_server_context, peer_certificate, peer_subject, read_json
from ..wire import AUTH_KIND, AUTH_PORT, CA_PATH, FORWARDED_IDENTITY, MEMBER_KINDS, WEB_PORT
from . import audit_api, listing, sso_api
from .authz import Identity
from .service import AuthService

log = logging.getLogger("gatehouse.auth.api")


def identity_from_request(request: web.Request, cluster_name: str) -> Identity | None:
    """The verified caller, or the user a proxy forwards on behalf of."""
    ident = certificate_identity(request, cluster_name)
    if ident is None:
        return None
    forwarded = request.headers.get(FORWARDED_IDENTITY)
    if forwarded:
        if ident.kind != "proxy":
            raise AccessDenied("only proxies may forward a user identity")
        return Identity(name=forwarded, kind="user", cluster=cluster_name)
    return ident


def certificate_identity(request: web.Request, cluster_name: str) -> Identity | None:
    """Who the verified client certificate names (None without one, or from another cluster)."""
    subject = peer_subject(request)
    if not subject:
        return None
    kind = subject.get("organizationalUnitName", "")
    ident = Identity(name=subject.get("commonName", ""), kind=kind, cluster=subject.get("organizationName", ""),
                     key=_key_of(peer_certificate(request)) if kind in MEMBER_KINDS else "",
                     registered=int(request.get(_REGISTERED) or 0))
    return ident if ident.cluster == cluster_name else None


_REGISTERED = "gatehouse.member_registered"


@functools.lru_cache(maxsize=4096)
def _key_of(der: bytes | None) -> str:
    return pki.tls_key_fingerprint(der) if der else ""


def member_check_middleware(svc: AuthService):
    """Every call of a node or proxy identity is checked against its member record: a revoked or
    superseded certificate is refused before any handler runs (members.py)."""
    @web.middleware
    async def check(request: web.Request, handler):
        ident = certificate_identity(request, svc.cluster_name)  # a proxy forwarding for a user, too
        if ident is not None and ident.kind in MEMBER_KINDS:
            request[_REGISTERED] = await svc.members.check_caller(ident)
        return await handler(request)
    return check


def peer_hosts(request: web.Request) -> frozenset[str]:
    """The DNS names and IP addresses in the verified client certificate (what auth approved at join)."""
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    return frozenset(value for kind, value in (cert or {}).get("subjectAltName", ())
                     if kind in ("DNS", "IP Address"))


def _string(value, name: str, limit: int = 1024) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or len(str(value)) > limit:
        raise BadParameter(f"{name} must be a string of at most {limit} characters")
    return str(value)


def _string_list(value, name: str, limit: int = 1000) -> list[str]:
    if value in (None, ""):
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise BadParameter(f"{name} must be a list of at most {limit} strings")
    return [_string(v, f"each of {name}") for v in value]


def _number(value, name: str, default: float, low: float, high: float, expect: str = "") -> float:
    """A number a caller sends (JSON number or numeric text), within [LOW, HIGH]; DEFAULT when absent.
    EXPECT says what it must be, for the refusal ("a number from LOW to HIGH" if not given)."""
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not low <= number <= high:
        raise BadParameter(f"{name} must be {expect or f'a number from {low:g} to {high:g}'}, "
                           f"not {str(value)[:40]!r}")
    return number


def _need(body: dict, *names: str) -> list:
    missing = [n for n in names if body.get(n) in (None, "")]
    if missing:
        raise BadParameter(f"the request is missing {', '.join(missing)}")
    return [body[n] for n in names]


class AuthAPI:
    def __init__(self, svc: AuthService):
        self.svc = svc
        self.app = web.Application(middlewares=[error_middleware, member_check_middleware(svc)],
                                   client_max_size=1024 * 1024)
        r = self.app.router
        r.add_get("/v1/ping", self.ping)
        r.add_get(CA_PATH, self.cluster_ca)
        r.add_post("/v1/renew", self.renew)
        r.add_get("/v1/status", self.status)
        r.add_get("/v1/resources/{kind}", self.get_resources)
        r.add_get("/v1/resources/{kind}/{name:.+}", self.get_resources)
        r.add_put("/v1/resources", self.put_resource)
        r.add_delete("/v1/resources/{kind}/{name:.+}", self.delete_resource)
        r.add_post("/v1/tokens", self.add_token)
        r.add_get("/v1/tokens", self.list_tokens)
        r.add_delete("/v1/tokens/{name}", self.delete_token)
        r.add_put("/v1/users/{name}/password", self.set_password)
        r.add_post("/v1/login", self.login)
        r.add_post("/v1/join", self.join)
        r.add_post("/v1/nodes/heartbeat", self.heartbeat)
        r.add_get("/v1/nodes", self.nodes)
        r.add_get("/v1/snapshot", self.snapshot)
        r.add_get("/v1/cas", self.cas)
        r.add_post("/v1/trustedclusters/validate", self.validate_trust)
        r.add_put("/v1/remote_clusters/{name}/labels", self.set_cluster_labels)
        r.add_post("/v1/tunnels/heartbeat", self.tunnel_heartbeat)
        r.add_post("/v1/tunnels/agent_status", self.tunnel_agent_status)
        r.add_post("/v1/tunnels/presence", self.tunnel_presence)
        r.add_post("/v1/tunnels/cert", self.tunnel_cert)
        r.add_post("/v1/proxies/heartbeat", self.proxy_heartbeat)
        r.add_get("/v1/clusters", self.clusters)
        r.add_get("/v1/hostcas", self.host_cas)
        r.add_get("/v1/whoami", self.whoami)
        r.add_post("/v1/access/check", self.access_check)
        sso_api.add_routes(r, self)
        audit_api.add_routes(r, self)

    def ident(self, request: web.Request, required: bool = True) -> Identity:
        ident = identity_from_request(request, self.svc.cluster_name)
        if ident is None and required:
            raise AccessDenied("this API requires a client certificate from this cluster; log in with 'gate login' "
                               "or run gatectl on the auth server")
        return ident

    async def ping(self, request):
        return web.json_response({"cluster_name": self.svc.cluster_name, "version": __version__})

    async def cluster_ca(self, request):
        """Public: the cluster's TLS CA, which a joining member checks against its ca_pin before sending a token."""
        return web.json_response({"cluster_name": self.svc.cluster_name,
                                  "tls_ca": (await self.svc.local_ca("tls"))["public"]})

    async def status(self, request):
        return web.json_response(await self.svc.status(self.ident(request)))

    async def get_resources(self, request):
        query = listing.parse_query(request.query)
        kind = request.match_info["kind"]
        items = await self.svc.resources.get(self.ident(request), kind, request.match_info.get("name"),
                                             with_secrets=request.query.get("with_secrets", "") == "true")
        if not (query.is_filtered or query.limit or query.start_after):
            return web.json_response({"items": items})
        if resources.canonical_kind(kind) != "remote_cluster":
            raise BadParameter("labels, search and paging apply to remote clusters only (gatectl get rc "
                               "--labels=env=prod); list other kinds whole")
        items, after = listing.select(query, items, lambda r: r["metadata"]["name"], lambda r: r["metadata"]["labels"])
        return web.json_response({"items": items, "next": after})

    async def put_resource(self, request):
        """Create or (force) replace a resource; `?dry_run=true` only says what would be stored and changed."""
        body = await read_json(request)
        dry_run = request.query.get("dry_run", "").lower() in ("1", "true", "yes")
        answer = await self.svc.resources.put(self.ident(request), _need(body, "resource")[0],
                                              force=bool(body.get("force")), dry_run=dry_run)
        return web.json_response(answer)

    async def delete_resource(self, request):
        message = await self.svc.resources.delete(self.ident(request), request.match_info["kind"],
                                                  request.match_info["name"])
        return web.json_response({"message": message} if message else {})

    async def add_token(self, request):
        body = await read_json(request)
        value, res = await self.svc.tokens.add(self.ident(request), body.get("roles") or body.get("type"),
                                               parse_ttl(body.get("ttl", "30m")), body.get("labels") or {},
                                               name=str(body.get("name") or ""), value=str(body.get("token") or ""),
                                               leaf_name=str(body.get("leaf_name") or ""),
                                               bind_name=str(body.get("bind_name") or ""),
                                               single_use=body.get("single_use") is True,
                                               principals=body.get("principals") or [])
        return web.json_response({"token": value, "resource": res})

    async def list_tokens(self, request):
        return web.json_response({"items": await self.svc.tokens.list(self.ident(request))})

    async def delete_token(self, request):
        name = await self.svc.tokens.delete(self.ident(request), request.match_info["name"])
        return web.json_response({"name": name})

    async def set_password(self, request):
        body = await read_json(request)
        await self.svc.set_password(self.ident(request), request.match_info["name"], str(_need(body, "password")[0]))
        return web.json_response({})

    async def login(self, request):
        ident = self.ident(request)
        body = await read_json(request)
        user, password, ssh_pub, tls_pub = _need(body, "user", "password", "ssh_public_key", "tls_public_key")
        ttl = int(_number(body.get("ttl"), "ttl", 0, 0, 10 * 365 * 24 * 3600, "a number of seconds"))
        result = await self.svc.login(ident, str(user), str(password), ssh_pub, tls_pub, ttl,
                                      str(body.get("client_addr") or request.remote))
        return web.json_response(result)

    async def join(self, request):
        body = await read_json(request)
        token, role, name, ssh_pub, tls_pub = _need(body, "token", "role", "name", "ssh_public_key", "tls_public_key")
        # Principals a member asks for are ignored: auth picks them (members.member_principals).
        result = await self.svc.join(str(token), str(role), str(name), str(ssh_pub), str(tls_pub),
                                     request.remote or "")
        return web.json_response(result)

    async def renew(self, request):
        body = await read_json(request)
        ssh_pub, tls_pub = _need(body, "ssh_public_key", "tls_public_key")
        return web.json_response(await self.svc.members.renew(self.ident(request), str(ssh_pub), str(tls_pub),
                                                              request.remote or ""))

    async def heartbeat(self, request):
        body = await read_json(request)
        name, addr = _need(body, "name", "addr")
        # The dial address is decided by auth (service.node_dial_addr): the node's port at the
        # address this heartbeat comes from, or at a host approved in the node's certificate.
        addr = await self.svc.heartbeat_node(self.ident(request), _string(name, "name"), _string(addr, "addr"),
                                             body.get("labels") or {}, body.get("hostname") or name,
                                             _interval(body.get("interval")), observed=request.remote or "",
                                             approved=peer_hosts(request))
        return web.json_response({"addr": addr})

    async def nodes(self, request):
        return web.json_response({"items": await self.svc.list_nodes(self.ident(request))})

    async def snapshot(self, request):
        since = int(_number(request.query.get("since"), "since", 0, 0, 2 ** 63, "a revision number (0 or more)"))
        timeout = _number(request.query.get("timeout"), "timeout", 0, 0, 3600, "a number of seconds up to 3600")
        delta = request.query.get("delta", "") in ("1", "true")
        return web.json_response(await self.svc.snapshot(self.ident(request), since, timeout, delta))

    async def cas(self, request):
        self.ident(request)
        return web.json_response({"items": await self.svc.cert_authorities(), **await self.svc.ca_bundle()})

    # -- trust ----------------------------------------------------------------

    async def validate_trust(self, request):
        ident = self.ident(request)
        body = await read_json(request)
        client_addr = str(body.pop("client_addr", "") or request.remote)
        proxy_hosts = body.pop("proxy_hosts", None)
        proxy_hosts = [str(h) for h in proxy_hosts][:32] if isinstance(proxy_hosts, list) else []
        return web.json_response(await self.svc.trust.validate(ident, body, client_addr, proxy_hosts))

    async def set_cluster_labels(self, request):
        ident = self.ident(request)
        body = await read_json(request)
        rc = await self.svc.trust.set_labels(ident, request.match_info["name"], body.get("labels") or {})
        return web.json_response({"resource": rc})

    async def tunnel_heartbeat(self, request):
        body = await read_json(request)
        await self.svc.trust.tunnel_heartbeat(self.ident(request), str(_need(body, "cluster")[0]),
                                              bool(body.get("connected")), body.get("interval", 5.0))
        return web.json_response({})

    async def tunnel_agent_status(self, request):
        body = await read_json(request)
        await self.svc.trust.tunnel_agent_status(self.ident(request), str(_need(body, "cluster")[0]),
                                                 _string_list(body.get("proxies"), "proxies"),
                                                 body.get("interval", 5.0),
                                                 str(body.get("tunnel_addr") or ""))
        return web.json_response({})

    async def tunnel_presence(self, request):
        """A root proxy's tunnel presence, per shard of leaf names (auth/presence.py)."""
        body = await read_json(request)
        written = await self.svc.presence.report(self.ident(request), body.get("shards"), body.get("summary_interval"))
        return web.json_response({"written": written})

    async def tunnel_cert(self, request):
        body = await read_json(request)
        cert = await self.svc.trust.issue_tunnel_cert(self.ident(request), str(_need(body, "ssh_public_key")[0]))
        return web.json_response({"ssh_cert": cert})

    async def proxy_heartbeat(self, request):
        """Auth reaches a proxy's web port (relay.py) at the address it sees the proxy call from, never at
        one the proxy names: only the port comes from the proxy's web_listen_addr."""
        body = await read_json(request)
        port = WEB_PORT
        if body.get("web_listen_addr"):
            _unused, port = split_hostport(str(body["web_listen_addr"])[:300], WEB_PORT, what="web_listen_addr")
        web_addr = join_hostport(request.remote, port) if request.remote else ""
        proxies = await self.svc.trust.proxy_heartbeat(self.ident(request), body.get("interval", 5.0), web_addr,
                                                       leaving=body.get("leaving") is True)
        return web.json_response({"proxies": proxies})

    async def clusters(self, request):
        items, after = await self.svc.cluster_page(self.ident(request), listing.parse_query(request.query))
        return web.json_response({"items": items, "next": after})

    async def host_cas(self, request):
        return web.json_response({"items": await self.svc.host_cas(self.ident(request))})

    async def access_check(self, request):
        body = await read_json(request)
        user, login, node = (str(v) for v in _need(body, "user", "login", "node"))
        traits = body.get("traits") or {}
        if not isinstance(traits, dict):
            raise BadParameter("traits must be a mapping of name to a list of values")
        return web.json_response(await self.svc.access_check(
            self.ident(request), user, login, node, str(body.get("from_cluster") or ""),
            [str(r) for r in body.get("roles") or []], traits, str(body.get("cluster") or "")))

    async def whoami(self, request):
        return web.json_response(await self.svc.whoami(self.ident(request)))


async def server_tls_context(svc: AuthService, host: str) -> ssl.SSLContext:
    """A fresh server certificate from the cluster CA; client certs optional so /v1/join works."""
    key_pem, pub_pem = pki.new_tls_key()
    names = {"localhost", socket.gethostname(), "auth", f"auth.{svc.cluster_name}"}
    ips = {"127.0.0.1", "::1"}
    pub_host = split_hostport(svc.cfg.auth.public_addr, AUTH_PORT)[0] if svc.cfg.auth.public_addr else ""
    for h in (host, pub_host):
        if h and h not in ("0.0.0.0", "::"):
            (ips if is_ip(h) else names).add(h)
    cert = await svc.issue_tls(pub_pem, name="auth", kind=AUTH_KIND, ttl=365 * 24 * 3600, server=True, client=False,
                               dns_names=sorted(names), ip_addresses=sorted(ips))
    ca = (await svc.local_ca("tls"))["public"]
    return make_server_context(cert, key_pem, ca)


async def start(svc: AuthService) -> web.AppRunner:
    api = AuthAPI(svc)
    host, port = split_hostport(svc.cfg.auth.listen_addr, AUTH_PORT)
    runner = web.AppRunner(api.app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, listeners.listen("auth", host, port), ssl_context=await server_tls_context(svc, host))
    await site.start()
    listeners.serving("auth", site)
    log.info("auth API listening on https://%s:%d (cluster %s)", host, port, svc.cluster_name)
    return runner


def _interval(value) -> float | None:
    """A heartbeat interval a member reports, when it is a sane number of seconds."""
    try:
        interval = float(value)
    except (TypeError, ValueError):
        return None
    return interval if 0 < interval <= 3600 else None
