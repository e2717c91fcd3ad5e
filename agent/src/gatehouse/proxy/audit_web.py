"""The proxy's web routes for `gate play`: a user's recordings, forwarded to auth with their identity.

    GET /webapi/recordings          ?cluster&limit&cursor: the recordings the user may replay
    GET /webapi/recordings/{sid}    ?cluster&offset&limit: a piece of one (their own, or any with audit: read)
"""

from __future__ import annotations

from aiohttp import web

from ..wire import FORWARDED_IDENTITY

_LIST_PARAMS = ("cluster", "limit", "cursor", "since", "until")
_READ_PARAMS = ("cluster", "offset", "limit")


def add_routes(router, proxy_web) -> None:
    """PROXY_WEB is the ProxyWeb: its auth client and its check of the user's certificate."""

    async def call(request, path: str, allowed: tuple) -> dict:
        params = {k: v for k, v in request.query.items() if k in allowed}
        return await proxy_web.client.call("GET", path, params=params,
                                           headers={FORWARDED_IDENTITY: proxy_web.user_name(request)})

    async def recordings(request):
        return web.json_response(await call(request, "/v1/recordings", _LIST_PARAMS))

    async def recording(request):
        sid = request.match_info["sid"]
        return web.json_response(await call(request, f"/v1/recordings/{sid}", _READ_PARAMS))

    router.add_get("/webapi/recordings", recordings)
    router.add_get("/webapi/recordings/{sid}", recording)
