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
#: The single sign-on connector that authenticated the user, as "oidc/NAME" (JSON); absent after a
#: password login. Leaves record it in their audit log.
EXT_CONNECTOR = "gatehouse-connector@gatehouse"
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
#: Opened by the root on a leaf's tunnel: the leaf streams its audit events (and recordings of root
#: users' sessions) when its trusted_cluster says forward_audit: true (tunnel/forwarding.py).
AUDIT_SUBSYSTEM = "gatehouse-audit@gatehouse"
#: A peer that misses this many heartbeat intervals in a row is offline.
MISSED_HEARTBEATS = 3
#: Heartbeat intervals (seconds) a member may report: shorter ones flood, longer ones would
#: keep a dead peer "online" for hours. Reports outside them are refused.
MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL = 0.5, 300.0
#: The most root proxies a root announces on a tunnel heartbeat (a leaf refuses a longer list).
MAX_ANNOUNCED_PROXIES = 64
#: The tunnel heartbeat protocol both ends announce in their first heartbeat. 1 (no "protocol" field):
#: a JSON object on every beat. 2: a JSON object first and whenever what it says changes, and one
#: empty line ("\n", the smallest SSH data packet) as the beat in between; an end sends empty lines
#: only to a peer that announced 2.
HEARTBEAT_PROTOCOL = 2
#: Heartbeat modes of a trusted cluster (``spec.heartbeat_mode``): the leaf applies its mode and
#: announces it with its interval. Per mode: how often the leaf beats (the root shows it offline
#: after MISSED_HEARTBEATS of them) and how often the root beats back (the leaf redials after
#: MISSED_HEARTBEATS of those; a silent network is noticed sooner, by TCP_USER_TIMEOUT).
HEARTBEAT_MODES = ("default", "low_bandwidth")
HEARTBEAT_TIMING = {"default": (4.0, 30.0), "low_bandwidth": (25.0, 120.0)}
#: Presence: a root proxy reports which leaves hold tunnels to it in PRESENCE_SHARDS records (one
#: per shard of leaf names), each rewritten when one of its leaves connects or disconnects (batched:
#: at most every PRESENCE_FLUSH_DELAY seconds) and every summary interval.
PRESENCE_SHARDS = 16
PRESENCE_FLUSH_DELAY = 1.0
DEFAULT_PRESENCE_INTERVAL = 30.0


def presence_shard(name: str) -> int:
    """The presence shard a leaf's name falls in (both the reporting proxy and auth compute it)."""
    import zlib
    return zlib.crc32(name.encode("utf-8", "replace")) % PRESENCE_SHARDS


def heartbeat_timing(mode) -> tuple[float, float]:
    """(leaf interval, root interval) in seconds for a heartbeat mode; the default mode's for anything else."""
    return HEARTBEAT_TIMING.get(mode if isinstance(mode, str) else "default", HEARTBEAT_TIMING["default"])


def heartbeat_mode(value) -> str | None:
    """VALUE as a heartbeat mode, or None unless it is one."""
    return value if isinstance(value, str) and value in HEARTBEAT_MODES else None


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

# -- single sign-on (OIDC) at the root proxy ---------------------------------------
#: gate asks for a login (connector, its loopback redirect, its public keys) and gets the
#: provider's authorization URL; the provider sends the browser to OIDC_CALLBACK_PATH (an
#: oidc connector's redirect_url); the proxy sends it on to gate's loopback listener at
#: SSO_CLIENT_CALLBACK_PATH with a one-time secret, which gate trades for its certificates.
OIDC_LOGIN_PATH = "/webapi/oidc/login"
OIDC_CALLBACK_PATH = "/webapi/oidc/callback"
OIDC_CERTS_PATH = "/webapi/oidc/certs"
#: The device authorization flow: start (user code and verification URL), then poll.
OIDC_DEVICE_PATH = "/webapi/oidc/device"
OIDC_DEVICE_POLL_PATH = "/webapi/oidc/device/poll"
SSO_CLIENT_CALLBACK_PATH = "/callback"
#: Query parameter of the redirect to gate's loopback listener holding the one-time secret.
SSO_SECRET_PARAM = "secret"


def is_loopback_redirect(url) -> bool:
    """Whether URL is where gate's loopback listener can be: http://127.0.0.1:PORT/... or
    http://[::1]:PORT/..., with no user name, query or fragment. Auth refuses any other client
    redirect and the proxy checks again before it sends a browser there with a one-time secret."""
    from urllib.parse import urlsplit

    text = str(url or "")
    if len(text) > 200 or any(ch.isspace() or not ch.isprintable() for ch in text):
        return False  # urlsplit drops tabs and newlines silently; a Location header must not hold them
    try:
        parsed = urlsplit(text)
        port = parsed.port
    except ValueError:
        return False
    return (parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "::1") and bool(port)
            and not (parsed.username or parsed.password or parsed.query or parsed.fragment))


#: The auth API's side of the same steps (called by proxies only).
SSO_API_LOGIN = "/v1/sso/oidc/login"
SSO_API_CALLBACK = "/v1/sso/oidc/callback"
SSO_API_CERTS = "/v1/sso/oidc/certs"
SSO_API_DEVICE = "/v1/sso/oidc/device"
SSO_API_DEVICE_POLL = "/v1/sso/oidc/device/poll"


def heartbeat_interval(value) -> float | None:
    """VALUE as a heartbeat interval in seconds, or None unless it is a number within the bounds above."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        interval = float(value)
    except (ValueError, OverflowError):
        return None
    return interval if MIN_HEARTBEAT_INTERVAL <= interval <= MAX_HEARTBEAT_INTERVAL else None


def is_live(last_seen: float, interval: float, now: float | None = None) -> bool:
    """Whether a peer that last reported at ``last_seen`` (every ``interval`` s) still counts as up.
    An interval beyond the bounds (a record written before they existed) counts as the maximum."""
    now = time.time() if now is None else now
    return now - last_seen <= MISSED_HEARTBEATS * min(interval, MAX_HEARTBEAT_INTERVAL)


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


# -- one session id across the trust (docs/security.md, "Session ids") --------------
#: A session id: a random UUID (version 4) chosen by the proxy that routes the connection, or by
#: the node for a connection that came without one; a channel after the first on one connection
#: gets "-N" appended (N from 2 to 999).
_SESSION_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}(-[1-9][0-9]{0,2})?$")
#: How a root proxy names the session id in the originator-address field of the `direct-tcpip`
#: channel it opens through a leaf's tunnel (only the tunnel's root proxy can set it there).
SESSION_ORIGIN_PREFIX = "gatehouse-session:"
#: A node's first line on every connection, before its SSH version line (RFC 4253 lets a server send
#: lines there; SSH clients skip them): "GATEHOUSE-SESSION-ASK NONCE\r\n". A cluster's own proxy
#: answers it, before the client's bytes, with "GATEHOUSE-SESSION-1 PAYLOAD SIGNATURE CERTIFICATE\r\n",
#: signed with its host key over the nonce and the session id (member/session_header.py).
SESSION_ASK_PREFIX = b"GATEHOUSE-SESSION-ASK "
SESSION_HEADER_PREFIX = b"GATEHOUSE-SESSION-1 "
#: Longest such line either end reads.
MAX_SESSION_HEADER = 8 * 1024


def is_session_id(value) -> bool:
    """Whether VALUE is a session id (see _SESSION_ID); nothing else names a session or a recording."""
    return isinstance(value, str) and len(value) <= 40 and _SESSION_ID.match(value) is not None


def new_session_id() -> str:
    import uuid
    return str(uuid.uuid4())


def session_origin(session_id: str) -> str:
    """The originator field a root proxy sends to a leaf with a session id."""
    return SESSION_ORIGIN_PREFIX + session_id


def parse_session_origin(orig_host) -> str:
    """The session id in a `direct-tcpip` originator field, or "" when it holds none (or a malformed one)."""
    if not isinstance(orig_host, str) or not orig_host.startswith(SESSION_ORIGIN_PREFIX):
        return ""
    sid = orig_host[len(SESSION_ORIGIN_PREFIX):]
    return sid if is_session_id(sid) and "-" not in sid[36:] else ""
