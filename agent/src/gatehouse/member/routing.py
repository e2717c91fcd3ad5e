"""Where a requested destination goes: a registered node here, or a leaf cluster the user may reach.

Only registered nodes are reachable, never arbitrary addresses, and a leaf is
reachable only by users of this cluster whose roles' cluster_labels let them see it
(a hidden leaf is "not found", exactly like one that does not exist).
"""

from __future__ import annotations

from ..config import split_hostport
from ..errors import NotFound
from ..wire import NODE_PORT
from .cache import ClusterCache
from .checkers import CheckerCache


def split_cluster(cache: ClusterCache, host: str, cluster: str | None) -> tuple[str, str]:
    """`node.leaf` → (node, leaf) for this cluster and every registered leaf; else this cluster."""
    if cluster:
        return host, cluster
    dot = host.find(".")
    while dot != -1:  # the longest suffix that names a cluster (one lookup per label, at any fleet size)
        if cache.is_cluster(host[dot + 1:]):
            return host[:dot], host[dot + 1:]
        dot = host.find(".", dot + 1)
    return host, cache.cluster_name


def resolve_node(cache: ClusterCache, host: str, port: int) -> tuple[str, int, dict]:
    """(address, port, node) of the node registered under the name HOST.

    Only the registered name counts (`name.cluster` is split off by split_cluster): a
    node's self-reported hostname is for display, and an address is never a route, so a
    node cannot capture another's route. The address is the one auth recorded for the
    node (auth.service.node_dial_addr); PORT is what the client asked for and is not used.
    """
    node = cache.node(host)
    if node is None:
        raise node_not_found(cache, host)
    node_host, node_port = split_hostport(node["spec"]["addr"], NODE_PORT)
    return node_host, node_port, node


def node_not_found(cache: ClusterCache, host: str) -> NotFound:
    return NotFound(f'node "{host}" is not registered in cluster "{cache.cluster_name}"; '
                    f"list nodes with 'gate ls'")


def can_see_node(checkers: CheckerCache, user, node: dict) -> bool:
    """Whether the user's roles let them see NODE (a local route to a hidden node is "not registered",
    exactly like one that does not exist)."""
    checker = checkers.checker(user.cluster, user.cert.roles, user.cert.traits, list(user.cert.principals),
                               user.ca)[0]
    meta = node["metadata"]
    return checker is not None and checker.can_see_node(meta["name"], meta.get("labels") or {})


def cluster_not_found(cluster: str) -> NotFound:
    return NotFound(f'cluster "{cluster}" is not found; list clusters with \'gate clusters\'')


def visible_leaf(cache: ClusterCache, checkers: CheckerCache, user, cluster: str):
    """(remote cluster, decision) for a leaf the user asks for; NotFound when there is no such leaf
    or the user is not of this cluster. The decision says whether cluster_labels let them see it."""
    rc = cache.remote_cluster(cluster)
    if rc is None or user.cluster != cache.cluster_name:
        raise cluster_not_found(cluster)
    checker = checkers.checker(user.cluster, user.cert.roles, user.cert.traits, list(user.cert.principals),
                               user.ca)[0]
    return rc, checker.check_cluster(cluster, rc["metadata"].get("labels") or {})
