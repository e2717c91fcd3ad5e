"""The wire contract between Gatehouse processes: names, paths, ports and rules both ends share.

This module is the bottom layer: it imports nothing from Gatehouse, and every
constant two services (or a service and a client) must agree on lives here once.
Changing a value here changes the protocol; docs/architecture.md has the table.
"""

from __future__ import annotations

import re
import time

# -- default ports -------------------------------------------------------------
NODE_PORT = 3022          # node SSH
PROXY_SSH_PORT = 3023     # proxy SSH (users, `ssh -J`)
TUNNEL_PORT = 3024        # proxy reverse-tunnel listener (leaves dial in)
AUTH_PORT = 3025          # auth API (mutual TLS)
WEB_PORT = 3080           # proxy web API (HTTPS)

# -- identities ----------------------------------------------------------------
#: What a cluster X.509 certificate's OU says its holder is.
IDENTITY_KINDS = ("admin", "user", "node", "proxy")
#: Join-token types, and so the kinds of member a token can admit.
TOKEN_TYPES = ("trusted_cluster", "node", "proxy")
#: Kinds of member that join a cluster with a token and can be revoked (`gatectl rm node/NAME`).
MEMBER_KINDS = ("node", "proxy")
#: The OU of the auth server's own TLS certificate: members talking to auth require it.
AUTH_KIND = "auth"
#: Kinds whose X.509 certificates may serve TLS (serverAuth); a node's is for clients only.
SERVER_KINDS = (AUTH_KIND, "proxy")
#: Unauthenticated auth API path that returns the cluster's TLS CA, so a joining member can
#: check `gatehouse.ca_pin` before it sends its token.
CA_PATH = "/v1/ca"

# -- SSH certificates ------------------------------------------------------------
#: Custom user-certificate extensions (values are JSON).
EXT_ROLES = "gatehouse-roles@gatehouse"
EXT_TRAITS = "gatehouse-traits@gatehouse"
EXT_CLUSTER = "gatehouse-cluster@gatehouse"
#: The only principal of a user certificate whose roles allow no login: an empty
#: principal list would mean "any login" to OpenSSH.
NOLOGIN_PRINCIPAL = "-gatehouse-nologin-"
#: Host-certificate extension naming the kind of member (node or proxy) auth issued it to (JSON string).
EXT_MEMBER_KIND = "gatehouse-kind@gatehouse"

# -- reverse tunnels ------------------------------------------------------------
#: Host-certificate principal a leaf proxy presents on its tunnels to the root.
TUNNEL_PRINCIPAL = "gatehouse-tunnel"
#: Login (only principal) of the user certificate a root proxy presents to leaves.
TUNNEL_LOGIN = "-gatehouse-tunnel-"
HEARTBEAT_SUBSYSTEM = "gatehouse-heartbeat@gatehouse"
NODES_SUBSYSTEM = "gatehouse-nodes@gatehouse"
ACCESS_SUBSYSTEM = "gatehouse-access@gatehouse"
#: A peer that misses this many heartbeat intervals in a row is offline.
MISSED_HEARTBEATS = 3

# -- HTTP -----------------------------------------------------------------------
#: Header with which a proxy tells auth which verified user it calls for.
FORWARDED_IDENTITY = "X-Gatehouse-Forwarded-User"
#: TLS server name (SNI) with which a cluster member asks a proxy's web port for the
#: proxy's cluster certificate instead of the public web certificate, so it can verify
#: the proxy against the cluster CA (``.invalid`` is reserved: no real host is called that).
CLUSTER_SERVER_NAME = "cluster.gatehouse.invalid"
PING_PATH = "/webapi/ping"
VALIDATE_PATH = "/webapi/trustedclusters/validate"
LEAF_ACCESS_CHECK_PATH = "/webapi/leaves/access_check"


def is_live(last_seen: float, interval: float, now: float | None = None) -> bool:
    """Whether a peer that last reported at ``last_seen`` (every ``interval`` s) still counts as up."""
    now = time.time() if now is None else now
    return now - last_seen <= MISSED_HEARTBEATS * interval


def connection_status(records: list[dict], now: float | None = None) -> tuple[str, float]:
    """(online|offline, last heartbeat epoch) from per-proxy tunnel records
    ``{connected, last_heartbeat, interval}``: online while any live record says connected."""
    now = time.time() if now is None else now
    last = max((r.get("last_heartbeat", 0.0) for r in records), default=0.0)
    online = any(r.get("connected") and is_live(r.get("last_heartbeat", 0.0), r.get("interval", 5.0), now)
                 for r in records)
    return ("online" if online else "offline"), last


# -- the proxy's routing subsystem ----------------------------------------------
_PROXY_SUBSYSTEM = re.compile(r"^proxy:(?P<host>[^:@\s]+|\[[^\]]+\]):(?P<port>\d{1,5})(?:@(?P<cluster>[^@\s]+))?$")


def proxy_subsystem(node: str, port: int, cluster: str) -> str:
    """`proxy:NODE:PORT@CLUSTER` for the proxy's router; `node1.C` and `node1` are the same node."""
    if cluster and node.endswith("." + cluster):
        node = node[: -len(cluster) - 1]
    if ":" in node:
        node = f"[{node}]"
    return f"proxy:{node}:{port}@{cluster}"


def parse_proxy_subsystem(text: str) -> tuple[str, int, str | None] | None:
    """(host, port, cluster or None) of a `proxy:HOST:PORT[@CLUSTER]` subsystem name, else None."""
    match = _PROXY_SUBSYSTEM.match(text)
    if not match:
        return None
    return match["host"].strip("[]"), int(match["port"]), match["cluster"]
