"""The root proxy's single sign-on endpoints: gate's side of an OIDC login, and the provider's callback.

    POST /webapi/oidc/login        gate: start a browser login → the provider's authorization URL
    GET  /webapi/oidc/callback     the browser, sent back by the provider (an oidc connector's
                                   redirect_url) → 302 to gate's loopback listener with a one-time
                                   secret, or a page that says why the login failed
    POST /webapi/oidc/certs        gate: the one-time secret → its certificates
    POST /webapi/oidc/device       gate: start a device login → user code and verification URL
    POST /webapi/oidc/device/poll  gate: poll it → pending, or its certificates

The proxy only passes these on to auth (auth/sso.py decides and audits), adds the client's
address, and checks once more that it sends a browser nowhere but to a loopback address.
Certificates travel only in the bodies of gate's own requests, never in a URL.
"""

from __future__ import annotations

import html

from aiohttp import web

from ..errors import GatehouseError
from ..httputil import read_json
from ..wire import (OIDC_CALLBACK_PATH, OIDC_CERTS_PATH, OIDC_DEVICE_PATH, OIDC_DEVICE_POLL_PATH, OIDC_LOGIN_PATH,
                    SSO_API_CALLBACK, SSO_API_CERTS, SSO_API_DEVICE, SSO_API_DEVICE_POLL, SSO_API_LOGIN,
                    is_loopback_redirect)

_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
_LOGIN_FIELDS = ("connector", "redirect_url", "ssh_public_key", "tls_public_key", "ttl")


def page(title: str, message: str, status: int) -> web.Response:
    """A small HTML page for the browser (no scripts, nothing loaded from elsewhere)."""
    text = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"</head><body><h1>{html.escape(title)}</h1><p id=\"message\">{html.escape(message)}</p></body></html>\n")
    return web.Response(status=status, text=text, content_type="text/html", headers=_NO_STORE)


def add_routes(router, proxy_web) -> None:
    """Register the SSO endpoints on the proxy's web app (PROXY_WEB: its auth client and ping payload)."""
    client = proxy_web.client

    async def forward(request, path: str, fields: tuple, *, with_addr: bool) -> dict:
        body = await read_json(request)
        out = {k: body.get(k) for k in fields}
        if with_addr:
            out["client_addr"] = request.remote or ""
        return await client.call("POST", path, out)

    def with_proxy(answer: dict) -> dict:
        if "ssh_cert" in answer:  # certificates: gate also needs where the proxy's SSH port is
            answer["proxy"] = proxy_web.ping_payload()["proxy"]
        return answer

    async def login(request):
        return web.json_response(await forward(request, SSO_API_LOGIN, _LOGIN_FIELDS, with_addr=True))

    async def callback(request):
        params = {k: request.query.get(k) for k in request.query.keys()}
        try:
            answer = await client.call("POST", SSO_API_CALLBACK, {"params": params, "client_addr": request.remote or ""})
        except GatehouseError as exc:
            return page("Gatehouse login failed", exc.message, exc.status)
        if not is_loopback_redirect(str(answer.get("redirect") or "").partition("?")[0]):
            return page("Gatehouse login failed", "the login's client redirect is not a loopback address; run "
                                                  "'gate login' again", 400)
        raise web.HTTPFound(answer["redirect"], headers=_NO_STORE)

    async def certs(request):
        return web.json_response(with_proxy(await forward(request, SSO_API_CERTS, ("request_id", "secret"),
                                                          with_addr=False)), headers=_NO_STORE)

    async def device(request):
        fields = tuple(f for f in _LOGIN_FIELDS if f != "redirect_url")
        return web.json_response(await forward(request, SSO_API_DEVICE, fields, with_addr=True))

    async def device_poll(request):
        return web.json_response(with_proxy(await forward(request, SSO_API_DEVICE_POLL, ("request_id", "secret"),
                                                          with_addr=False)), headers=_NO_STORE)

    router.add_post(OIDC_LOGIN_PATH, login)
    router.add_get(OIDC_CALLBACK_PATH, callback)
    router.add_post(OIDC_CERTS_PATH, certs)
    router.add_post(OIDC_DEVICE_PATH, device)
    router.add_post(OIDC_DEVICE_POLL_PATH, device_poll)
