"""The auth API's single sign-on routes (proxy identity only; see sso.py for the flow).

    POST /v1/sso/oidc/login        {connector, redirect_url, ssh_public_key, tls_public_key, ttl, client_addr}
    POST /v1/sso/oidc/callback     {params: the provider's answer (code, state, iss or error), client_addr}
    POST /v1/sso/oidc/certs        {request_id, secret}
    POST /v1/sso/oidc/device       {connector, ssh_public_key, tls_public_key, ttl, client_addr}
    POST /v1/sso/oidc/device/poll  {request_id, secret}
"""

from __future__ import annotations

from aiohttp import web

from ..errors import BadParameter
from ..httputil import read_json
from ..wire import SSO_API_CALLBACK, SSO_API_CERTS, SSO_API_DEVICE, SSO_API_DEVICE_POLL, SSO_API_LOGIN


def _text(body: dict, name: str, required: bool = True) -> str:
    value = body.get(name)
    if value in (None, "") and required:
        raise BadParameter(f"the request is missing {name}")
    if value is not None and not isinstance(value, str):
        raise BadParameter(f"{name} must be a string")
    return value or ""


def _ttl(body: dict) -> int:
    try:
        return max(0, int(body.get("ttl") or 0))
    except (TypeError, ValueError):
        raise BadParameter("ttl must be a number of seconds") from None


def add_routes(router, api) -> None:
    """Register the SSO handlers on the auth API (API is the AuthAPI: its service and identity check)."""

    async def login(request):
        body = await read_json(request)
        return web.json_response(await api.svc.sso.begin(
            api.ident(request), _text(body, "connector"), _text(body, "redirect_url"), _text(body, "ssh_public_key"),
            _text(body, "tls_public_key"), _ttl(body), _text(body, "client_addr", False) or request.remote or ""))

    async def callback(request):
        body = await read_json(request)
        params = body.get("params")
        if not isinstance(params, dict):
            raise BadParameter("params must be the provider's answer as a mapping")
        params = {str(k): str(v) for k, v in params.items()}
        return web.json_response(await api.svc.sso.callback(api.ident(request), params,
                                                            _text(body, "client_addr", False) or request.remote or ""))

    async def certs(request):
        body = await read_json(request)
        return web.json_response(await api.svc.sso.collect(api.ident(request), _text(body, "request_id"),
                                                           _text(body, "secret")))

    async def device(request):
        body = await read_json(request)
        return web.json_response(await api.svc.sso.device_begin(
            api.ident(request), _text(body, "connector"), _text(body, "ssh_public_key"),
            _text(body, "tls_public_key"), _ttl(body), _text(body, "client_addr", False) or request.remote or ""))

    async def device_poll(request):
        body = await read_json(request)
        return web.json_response(await api.svc.sso.device_poll(api.ident(request), _text(body, "request_id"),
                                                               _text(body, "secret")))

    router.add_post(SSO_API_LOGIN, login)
    router.add_post(SSO_API_CALLBACK, callback)
    router.add_post(SSO_API_CERTS, certs)
    router.add_post(SSO_API_DEVICE, device)
    router.add_post(SSO_API_DEVICE_POLL, device_poll)
