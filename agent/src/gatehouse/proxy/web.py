"""The proxy's web API (port 3080, HTTPS).

Public: `/webapi/ping` (discovery, same shape users script against) and
`/webapi/login` (password → certificates, checked by auth). Per-user endpoints
require the X.509 client certificate from `gate login`; the proxy forwards them to
auth with the verified user name, and auth applies the user's roles.
"""

from __future__ import annotations

import logging
import os
import socket

from aiohttp import web

from .. import __version__, listeners, pki
from ..httputil import error_middleware, make_server_context, peer_subject, read_json, serve_cluster_identity
from ..config import is_ip, public_addr, split_hostport
from ..errors import AccessDenied, BadParameter, NotFound
from ..member.context import MemberContext
from ..member.routing import cluster_not_found
from ..wire import (FORWARDED_IDENTITY, LEAF_ACCESS_CHECK_PATH, PING_PATH, PROXY_SSH_PORT, TUNNEL_PORT,
                    VALIDATE_PATH, WEB_PORT)
from . import audit_web, fleet_search, sso

log = logging.getLogger("gatehouse.proxy.web")
#: The listing parameters `gate clusters` passes on to auth (auth/listing.py).
CLUSTER_QUERY = ("labels", "search", "limit", "start_after")


class ProxyWeb:
    def __init__(self, ctx: MemberContext, tunnels=None):
        self.cfg = ctx.cfg
        self.ident = ctx.ident
        self.client = ctx.client
        self.cache = ctx.cache
        self.tunnels = tunnels
        self.runner = None
        self.port = 0
        self.app = web.Application(middlewares=[error_middleware], client_max_size=256 * 1024)
        r = self.app.router
        r.add_get(PING_PATH, self.ping)
        r.add_post("/webapi/login", self.login)
        r.add_get("/webapi/nodes", self.nodes)
        r.add_get("/webapi/clusters", self.clusters)
        r.add_get("/webapi/nodes/all", self.all_nodes)
        r.add_get("/webapi/hostcas", self.host_cas)
        r.add_post(VALIDATE_PATH, self.validate_trust)
        r.add_get("/webapi/mappings", self.mappings)
        r.add_post(LEAF_ACCESS_CHECK_PATH, self.leaf_access_check)
        sso.add_routes(r, self)
        audit_web.add_routes(r, self)

    def _ssh_addr(self) -> str:
        return self.cfg.proxy.ssh_public_addr or public_addr(
            "", self.cfg.proxy.listen_addr, PROXY_SSH_PORT).replace("127.0.0.1", self._web_host())

    def _web_host(self) -> str:
        return split_hostport(public_addr(self.cfg.proxy.public_addr, self.cfg.proxy.web_listen_addr, WEB_PORT),
                              WEB_PORT)[0]

    def ping_payload(self) -> dict:
        tunnel = self.cfg.proxy.tunnel_public_addr or public_addr(
            "", self.cfg.proxy.tunnel_listen_addr, TUNNEL_PORT).replace("127.0.0.1", self._web_host())
        return {"cluster_name": self.cache.cluster_name, "server_version": __version__,
                "proxy": {"ssh": {"public_addr": self._ssh_addr(), "ssh_tunnel_public_addr": tunnel,
                                  "listen_addr": self.cfg.proxy.listen_addr},
                          "tls_routing_enabled": False}}

    async def ping(self, request):
        return web.json_response(self.ping_payload())

    async def login(self, request):
        body = await read_json(request)
        for field in ("user", "password", "ssh_public_key", "tls_public_key"):
            if not body.get(field):
                raise BadParameter(f"the login request is missing {field}")
        body["client_addr"] = request.remote or ""
        result = await self.client.call("POST", "/v1/login", body)
        result["proxy"] = self.ping_payload()["proxy"]
        return web.json_response(result)

    def user_name(self, request) -> str:
        """The user of the request's login certificate (AccessDenied without one)."""
        return self._user(request)

    def _user(self, request) -> str:
        subject = peer_subject(request)
        if subject.get("organizationalUnitName") != "user":
            raise AccessDenied("this request needs your login certificate; run 'gate login' first")
        return subject["commonName"]

    async def _as_user(self, request, path: str, params: dict | None = None) -> dict:
        return await self.client.call("GET", path, params=params, headers={FORWARDED_IDENTITY: self._user(request)})

    async def nodes(self, request):
        cluster = request.query.get("cluster") or self.cache.cluster_name
        if cluster == self.cache.cluster_name:
            return web.json_response(await self._as_user(request, "/v1/nodes"))
        visible = {c["name"] for c in (await self._as_user(request, "/v1/clusters"))["items"]}
        if cluster not in visible or self.tunnels is None:
            raise cluster_not_found(cluster)
        answer = await self._ask_leaf(request, cluster)
        if answer.get("denied"):
            raise AccessDenied(f'cluster "{cluster}": {answer["denied"]}')
        return web.json_response({"items": answer.get("items", []), "mapped_roles": answer.get("mapped_roles", [])})

    async def _ask_leaf(self, request, cluster: str) -> dict:
        """What the leaf's role mapping gives this user: the nodes they see and the local roles."""
        me = await self._as_user(request, "/v1/whoami")
        return await self.tunnels.tunnel_for(cluster).list_nodes(
            {"user": me["name"], "roles": me["roles"], "traits": me["traits"], "logins": me["logins"]})

    async def mappings(self, request):
        """For `gate status`: the leaf roles the user's root roles map to, per visible leaf."""
        out = []
        for c in (await self._as_user(request, "/v1/clusters"))["items"]:
            if c["type"] != "leaf" or self.tunnels is None:
                continue
            try:
                answer = await self._ask_leaf(request, c["name"])
                out.append({"cluster": c["name"], "mapped_roles": answer.get("mapped_roles", []),
                            "denied": answer.get("denied", "")})
            except Exception as exc:  # noqa: BLE001 - one leaf's trouble must not fail the whole status
                out.append({"cluster": c["name"], "mapped_roles": [], "error": f"unknown: {exc}"})
        return web.json_response({"items": out})

    async def clusters(self, request):
        """`gate clusters`: auth filters (labels, search) and pages (limit, start_after); see auth/listing.py."""
        params = {k: request.query[k][:2000] for k in CLUSTER_QUERY if k in request.query}
        return web.json_response(await self._as_user(request, "/v1/clusters", params or None))

    async def all_nodes(self, request):
        """`gate ls --all` and `gate ssh NODE` without --cluster: the nodes of this cluster and of every leaf
        the user may see (auth decides; a hidden leaf is never asked), leaves asked in parallel through their
        tunnels, each within `timeout` seconds. A leaf that is offline or does not answer in time is
        reported under "unreachable", not waited for. `name` keeps only nodes of that name, `search`
        those whose name, address or labels contain the text."""
        query = fleet_search.parse_query(request.query)
        me = await self._as_user(request, "/v1/whoami")
        identity = {"user": me["name"], "roles": me["roles"], "traits": me["traits"], "logins": me["logins"]}
        leaves = [c for c in (await self._as_user(request, "/v1/clusters"))["items"] if c["type"] == "leaf"]
        own = (await self._as_user(request, "/v1/nodes"))["items"]
        answers = await fleet_search.ask_leaves(leaves, lambda leaf: self._leaf_nodes(leaf, identity), query.timeout)
        return web.json_response(fleet_search.combine(query, self.cache.cluster_name, own, answers))

    async def _leaf_nodes(self, leaf: str, identity: dict) -> list[dict]:
        if self.tunnels is None:
            raise cluster_not_found(leaf)
        answer = await self.tunnels.tunnel_for(leaf).list_nodes(identity)
        if answer.get("denied"):
            raise AccessDenied(answer["denied"])
        return answer.get("items", [])

    async def host_cas(self, request):
        return web.json_response(await self._as_user(request, "/v1/hostcas"))

    async def leaf_access_check(self, request):
        """For this cluster's auth (`gatectl access check --cluster=LEAF` on the root): ask the leaf to explain.

        Only the root's own admin identity may call it; auth has already applied the
        root's cluster labels and sends what the user's certificate would carry.
        """
        subject = peer_subject(request)
        caller = (subject.get("organizationalUnitName"), subject.get("organizationName"))
        if caller != ("admin", self.cache.cluster_name):
            raise AccessDenied("only this cluster's auth service may ask a leaf cluster to explain access")
        body = await read_json(request)
        cluster = str(body.get("cluster") or "")
        if self.tunnels is None or not cluster:
            raise NotFound(f'cluster "{cluster}" is not found; list leaf clusters with \'gatectl get rc\'')
        fields = ("user", "roles", "traits", "logins", "login", "node")
        return web.json_response(await self.tunnels.tunnel_for(cluster).check_access({k: body.get(k) for k in fields}))

    def _public_hosts(self) -> list[str]:
        """The host names and addresses users and leaves reach this proxy by."""
        ssh = self.ping_payload()["proxy"]["ssh"]
        addrs = [ssh["public_addr"], ssh["ssh_tunnel_public_addr"]]
        hosts = {self._web_host(), *(split_hostport(a, 1)[0] for a in addrs if a)}
        return sorted(h for h in hosts if h and h not in ("0.0.0.0", "::"))

    async def validate_trust(self, request):
        """A leaf's trust handshake: public, so auth rate-limits it and checks the token."""
        body = await read_json(request)
        body["client_addr"] = request.remote or ""
        body["proxy_hosts"] = self._public_hosts()  # a leaf may not be named after them (auth/handshake.py)
        answer = await self.client.call("POST", "/v1/trustedclusters/validate", body)
        answer["tunnel_addr"] = self.ping_payload()["proxy"]["ssh"]["ssh_tunnel_public_addr"]
        return web.json_response(answer)

    def _tls_files(self) -> tuple[str, str]:
        if self.cfg.proxy.https_cert_file:
            return self.cfg.proxy.https_cert_file, self.cfg.proxy.https_key_file
        cert_path = os.path.join(self.cfg.data_dir, "proxy", "web.crt")
        key_path = os.path.join(self.cfg.data_dir, "proxy", "web.key")
        if not os.path.exists(cert_path):
            host = self._web_host()
            names = sorted({"localhost", socket.gethostname(), host} - {""})
            ips = sorted({"127.0.0.1", "::1"} | ({host} if is_ip(host) else set()))
            key_pem, cert_pem = pki.self_signed_web_cert([n for n in names if not is_ip(n)], ips)
            pki.write_secret(key_path, key_pem)
            pki.write_public(cert_path, cert_pem)
            log.warning("proxy web: no https_cert_file configured, using a self-signed certificate "
                        "(clients need --insecure); configure a real certificate for production")
        return cert_path, key_path

    async def start(self) -> None:
        cert_path, key_path = self._tls_files()
        with open(cert_path, encoding="utf-8") as fh:
            cert_pem = fh.read()
        with open(key_path, encoding="utf-8") as fh:
            key_pem = fh.read()
        ctx = make_server_context(cert_pem, key_pem, self.ident.read("ca.crt"))
        # Cluster members (the root's auth asking a leaf) verify this proxy by its cluster certificate.
        cluster_ctx = make_server_context(self.ident.read("identity.crt"), self.ident.read("identity.key"),
                                          self.ident.read("ca.crt"))
        serve_cluster_identity(ctx, cluster_ctx)
        self.ident.on_renewed(lambda: self.ident.reload(cluster_ctx))
        host, port = split_hostport(self.cfg.proxy.web_listen_addr, WEB_PORT)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.SockSite(self.runner, listeners.listen("proxy web", host, port), ssl_context=ctx)
        await site.start()
        listeners.serving("proxy web", site)
        self.port = port
        log.info("proxy web listening on https://%s:%d", host, port)

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
