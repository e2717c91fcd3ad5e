"""HTTP plumbing shared by the auth API and the proxy web API."""

from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile

from aiohttp import web

from . import pki
from .errors import BadParameter, GatehouseError
from .wire import CLUSTER_SERVER_NAME

log = logging.getLogger("gatehouse.http")


def route_pattern(request: web.Request) -> str:
    """The matched route ("/v1/tokens/{name}"), never the path itself: paths can hold secrets (token values)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except GatehouseError as exc:
        log.debug("%s %s -> %s: %s", request.method, route_pattern(request), exc.status, exc)
        return web.json_response(exc.to_dict(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (no such route, wrong method, body too large) answer in the same
        # JSON shape as ours, without echoing the path (it can hold a token value).
        err = GatehouseError(f"the server refused the request with HTTP {exc.status} ({exc.reason}); check the "
                             f"address and that the client and the server run the same Gatehouse version")
        err.code = {404: "not_found", 405: "bad_parameter", 413: "limit_exceeded"}.get(exc.status, "bad_parameter")
        return web.json_response(err.to_dict(), status=exc.status)
    except Exception:  # noqa: BLE001 - last line of defence, logged with traceback
        log.exception("internal error in %s %s", request.method, route_pattern(request))
        err = GatehouseError("internal error in the gatehouse service; see its log for details")
        return web.json_response(err.to_dict(), status=500)


def peer_subject(request: web.Request) -> dict[str, str]:
    """Subject fields of the verified client certificate ({} when none was presented)."""
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    return {k: v for rdn in (cert or {}).get("subject", ()) for k, v in rdn}


def peer_certificate(request: web.Request) -> bytes | None:
    """The verified client certificate (DER), or None when none was presented."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None


async def read_json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadParameter("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadParameter("the request body must be a JSON object")
    return body


def make_server_context(cert_pem: str, key_pem: str, ca_pem: str, require_client: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        pki.write_secret(cert_path, cert_pem)
        pki.write_secret(key_path, key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    ctx.load_verify_locations(cadata=ca_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    return ctx


def serve_cluster_identity(ctx: ssl.SSLContext, cluster_ctx: ssl.SSLContext) -> None:
    """Answer clients that ask for CLUSTER_SERVER_NAME with ``cluster_ctx`` (the cluster certificate)."""
    def pick(ssl_object, server_name, _ctx):
        if server_name == CLUSTER_SERVER_NAME:
            ssl_object.context = cluster_ctx
    ctx.sni_callback = pick
