"""Searching nodes across every visible leaf (`gate ls --all`, `gate ssh NODE` without --cluster).

The proxy asks each leaf through its reverse tunnel, many at once but a bounded number
in flight, each within a per-leaf timeout; a leaf that is offline is reported at once
and one that does not answer in time is reported too, so one slow appliance on a
cellular link never holds up the listing. Leaf answers are untrusted: a node entry
that is not a named object is dropped.
"""

from __future__ import annotations

import asyncio

from ..errors import BadParameter, GatehouseError

DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 30.0
#: Leaves asked at once: enough to cover a fleet in a few rounds, few enough not to flood the proxy.
MAX_IN_FLIGHT = 128
MAX_SEARCH = 100


class Query:
    def __init__(self, name: str, search: str, timeout: float):
        self.name, self.search, self.timeout = name, search, timeout


def parse_query(params) -> Query:
    name = str(params.get("name") or "")[:253]
    search = str(params.get("search") or "")
    if len(search) > MAX_SEARCH:
        raise BadParameter(f"the search text is longer than {MAX_SEARCH} characters; search for a shorter part of "
                           f"a node's name, address or label")
    raw = str(params.get("timeout") or DEFAULT_TIMEOUT)
    try:
        timeout = float(raw)
    except ValueError:
        timeout = -1.0
    if not 0.1 <= timeout <= MAX_TIMEOUT:
        raise BadParameter(f"the per-cluster timeout must be a number of seconds from 0.1 to {MAX_TIMEOUT:g}, not "
                           f"{raw[:20]!r}")
    return Query(name, search.lower(), timeout)


async def ask_leaves(leaves: list[dict], ask, timeout: float) -> dict[str, list | str]:
    """{leaf name: its node list, or why it could not be searched}; ASK(name) is a coroutine giving the list."""
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(leaf: dict) -> list | str:
        if leaf.get("status") != "online":
            return "offline (not searched)"
        async with gate:
            try:
                return await asyncio.wait_for(ask(leaf["name"]), timeout)
            except asyncio.TimeoutError:
                return f"no answer within {timeout:g}s"
            except GatehouseError as exc:
                return str(exc)
    results = await asyncio.gather(*(one(leaf) for leaf in leaves))
    return {leaf["name"]: result for leaf, result in zip(leaves, results)}


def _wanted(query: Query, node) -> bool:
    if not isinstance(node, dict) or not isinstance(node.get("metadata"), dict):
        return False
    name = node["metadata"].get("name")
    if not isinstance(name, str) or not name:
        return False
    if query.name and name != query.name:
        return False
    if not query.search:
        return True
    labels = node["metadata"].get("labels") if isinstance(node["metadata"].get("labels"), dict) else {}
    addr = (node.get("spec") or {}).get("addr") if isinstance(node.get("spec"), dict) else ""
    texts = [name, str(addr or ""), *(f"{k}={v}" for k, v in labels.items())]
    return any(query.search in t.lower() for t in texts)


def combine(query: Query, own_cluster: str, own_nodes: list, answers: dict) -> dict:
    """{"items": [node + "cluster"], "unreachable": [{"cluster", "error"}]} in cluster, then node name order."""
    items = [{**n, "cluster": own_cluster} for n in own_nodes if _wanted(query, n)]
    unreachable = []
    for leaf in sorted(answers):
        answer = answers[leaf]
        if isinstance(answer, str):
            unreachable.append({"cluster": leaf, "error": answer})
            continue
        found = [n for n in answer if _wanted(query, n)] if isinstance(answer, list) else []
        items += sorted(({**n, "cluster": leaf} for n in found), key=lambda n: n["metadata"]["name"])
    return {"items": items, "unreachable": unreachable}
