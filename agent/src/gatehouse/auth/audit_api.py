"""The auth API's audit routes (audit_store.py decides who may do what).

    POST /v1/audit/events                  {events}: a node's or proxy's audit events
    GET  /v1/audit/events                  ?cluster&user&event&session&since&until&limit&cursor: search
    GET  /v1/audit/streams                 the clusters whose events are stored here, with their bounds
    GET  /v1/audit/verify                  ?cluster&after&prev&limit: check a part of a chain
    GET  /v1/audit/export                  ?root&after&limit: a leaf's signed batch for its root (leaf proxies)
    POST /v1/audit/export/ack              {root, seq}: the root holds events up to seq (leaf proxies)
    GET  /v1/audit/export/recording        ?root&sid&offset&limit: a recording for the root (leaf proxies)
    POST /v1/audit/forwarded/{cluster}/lease       one root proxy at a time forwards a leaf
    GET  /v1/audit/forwarded/{cluster}             what the root holds of a leaf's stream (root proxies)
    POST /v1/audit/forwarded/{cluster}             {batch}: a leaf's batch (root proxies)
    GET  /v1/recordings                    ?user&cluster&since&until&limit&cursor: recordings one may replay
    GET  /v1/recordings/{sid}              ?cluster&offset&limit: a piece of a recording
    GET  /v1/recordings/{sid}/upload       ?cluster: bytes held of an upload
    POST /v1/recordings/{sid}/upload       {cluster, offset, data}: append to an upload
    POST /v1/recordings/{sid}/complete     {cluster, size, sha256, meta}: finish an upload
"""

from __future__ import annotations

from aiohttp import web

from ..errors import BadParameter
from ..httputil import read_json


def _int(value, name: str, default: int = 0, high: int = 2 ** 62) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(str(value))
    except ValueError:
        number = -1
    if not 0 <= number <= high:
        raise BadParameter(f"{name} must be a whole number from 0 to {high}")
    return number


def _text(value, name: str, limit: int = 253) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise BadParameter(f"{name} must be text of at most {limit} characters")
    return value


def add_routes(router, api) -> None:
    """Register the audit handlers on the auth API (API is the AuthAPI: its service and identity check)."""

    def store():
        return api.svc.audit_store

    async def post_events(request):
        body = await read_json(request)
        return web.json_response(await store().deliver_member(api.ident(request), body.get("events")))

    async def search(request):
        return web.json_response(await store().search(api.ident(request), request.query))

    async def streams(request):
        return web.json_response(await store().streams(api.ident(request)))

    async def verify(request):
        q = request.query
        return web.json_response(await store().verify(
            api.ident(request), _text(q.get("cluster"), "cluster"), _int(q.get("after"), "after"),
            _text(q.get("prev"), "prev", 64), _int(q.get("limit"), "limit", 20000, 100000)))

    async def export(request):
        q = request.query
        return web.json_response(await store().export(api.ident(request), _text(q.get("root"), "root"),
                                                      _int(q.get("after"), "after"), _int(q.get("limit"), "limit", 1000)))

    async def export_ack(request):
        body = await read_json(request)
        await store().export_ack(api.ident(request), _text(body.get("root"), "root"), _int(body.get("seq"), "seq"))
        return web.json_response({})

    async def export_recording(request):
        q = request.query
        return web.json_response(await store().export_recording(
            api.ident(request), _text(q.get("root"), "root"), _text(q.get("sid"), "sid", 40),
            _int(q.get("offset"), "offset"), _int(q.get("limit"), "limit", 512 * 1024)))

    async def lease(request):
        return web.json_response(await store().forward_lease(api.ident(request), request.match_info["cluster"]))

    async def release(request):
        return web.json_response(await store().release_lease(api.ident(request), request.match_info["cluster"]))

    async def forward_state(request):
        return web.json_response(await store().forward_state(api.ident(request), request.match_info["cluster"]))

    async def ingest(request):
        body = await read_json(request)
        return web.json_response(await store().ingest(api.ident(request), request.match_info["cluster"],
                                                      body.get("batch")))

    async def recordings(request):
        return web.json_response(await store().list_recordings(api.ident(request), request.query))

    async def recording(request):
        q = request.query
        return web.json_response(await store().read_recording(
            api.ident(request), request.match_info["sid"], _text(q.get("cluster"), "cluster"),
            _int(q.get("offset"), "offset"), _int(q.get("limit"), "limit", 512 * 1024)))

    async def upload_size(request):
        cluster = _text(request.query.get("cluster"), "cluster")
        return web.json_response(await store().upload_size(api.ident(request), cluster, request.match_info["sid"]))

    async def upload(request):
        body = await read_json(request)
        return web.json_response(await store().upload(api.ident(request), _text(body.get("cluster"), "cluster"),
                                                      request.match_info["sid"], body.get("offset"), body.get("data")))

    async def complete(request):
        body = await read_json(request)
        return web.json_response(await store().complete(
            api.ident(request), _text(body.get("cluster"), "cluster"), request.match_info["sid"], body.get("size"),
            body.get("sha256"), body.get("meta") or {}))

    router.add_post("/v1/audit/events", post_events)
    router.add_get("/v1/audit/events", search)
    router.add_get("/v1/audit/streams", streams)
    router.add_get("/v1/audit/verify", verify)
    router.add_get("/v1/audit/export", export)
    router.add_post("/v1/audit/export/ack", export_ack)
    router.add_get("/v1/audit/export/recording", export_recording)
    router.add_post("/v1/audit/forwarded/{cluster}/lease", lease)
    router.add_delete("/v1/audit/forwarded/{cluster}/lease", release)
    router.add_get("/v1/audit/forwarded/{cluster}", forward_state)
    router.add_post("/v1/audit/forwarded/{cluster}", ingest)
    router.add_get("/v1/recordings", recordings)
    router.add_get("/v1/recordings/{sid}", recording)
    router.add_get("/v1/recordings/{sid}/upload", upload_size)
    router.add_post("/v1/recordings/{sid}/upload", upload)
    router.add_post("/v1/recordings/{sid}/complete", complete)
