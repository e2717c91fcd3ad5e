"""The auth service's storage keyspace: every backend key is built here, and only here.

Keys are `/`-separated (see backend/base.py). One function per kind of record, one
`*_PREFIX` per range, so no key string is written twice and a rename is one edit.

    cas/<cluster>/<type>          certificate authorities (this cluster's and trusted ones')
    roles/<name>  users/<name>  passwords/<user>  tokens/<name>
    nodes/<name>                  registered nodes (expire without heartbeats)
    trusted_clusters/<root>       leaf side: the roots this cluster trusts
    remote_clusters/<leaf>        root side: the leaves that trust this cluster
    tunnels/<leaf>/<root proxy>   root side: a root proxy's tunnel to a leaf (written by proxies of
                                  earlier versions, per heartbeat; still read)
    presence/<shard>/<root proxy> root side: the leaves of one shard of names holding a tunnel to that
                                  proxy, rewritten on connects, disconnects and every summary interval
    tunnel_agents/<root>/<proxy>  leaf side: which root proxies a leaf proxy holds tunnels to
    proxies/<name>                root proxies (expire without heartbeats)
    oidc_connectors/<name>        single sign-on connectors (kind: oidc)
    sso_requests/<id>             SSO logins in progress (expire; single use)
    sso_users/<name>              which connector and subject a single sign-on user came from
                                  (expires with the user record it describes)
    members/<kind>/<name>         joined nodes and proxies: the name's holder and its keys (until its
                                  certificates expire or it is revoked)
    locks/<kind>/<name>           revoked member identities (their keys), until their certificates expire
    ratelimits/<limiter>/<digest>/<window>
                                  attempts of one caller in one rate-limit window (limits.py; expire)
    ca_keys/<sha256>              index: which cluster holds an SSH CA key (written with the CA record)
    cluster_names/<tld>/.../<l1>  index: every cluster name this cluster knows, labels reversed, so the
                                  names under a name are one range (written with remote/trusted clusters)
    audit_forwarded/<root>        leaf side: the last event of this cluster's stream its root confirmed
    audit_forwarders/<leaf>       root side: the root proxy that forwards a leaf's audit now (until it lets go or dies)
    audit_retention               the auth server running audit retention now (expires)

Audit events themselves are not items: they live in the backend's audit table (backend/audit.py).
"""

from __future__ import annotations

CAS_PREFIX = "cas/"
ROLES_PREFIX = "roles/"
USERS_PREFIX = "users/"
TOKENS_PREFIX = "tokens/"
NODES_PREFIX = "nodes/"
TRUSTED_CLUSTERS_PREFIX = "trusted_clusters/"
REMOTE_CLUSTERS_PREFIX = "remote_clusters/"
PROXIES_PREFIX = "proxies/"
TUNNELS_PREFIX = "tunnels/"
TUNNEL_AGENTS_PREFIX = "tunnel_agents/"
OIDC_PREFIX = "oidc_connectors/"
SSO_REQUESTS_PREFIX = "sso_requests/"
SSO_USERS_PREFIX = "sso_users/"
MEMBERS_PREFIX = "members/"
LOCKS_PREFIX = "locks/"
RATE_LIMITS_PREFIX = "ratelimits/"
CA_KEYS_PREFIX = "ca_keys/"
CLUSTER_NAMES_PREFIX = "cluster_names/"
PRESENCE_PREFIX = "presence/"

#: What members' snapshots are made of: a write under these prefixes wakes their long-polls.
SNAPSHOT_PREFIXES = [CAS_PREFIX, ROLES_PREFIX, USERS_PREFIX, TRUSTED_CLUSTERS_PREFIX, REMOTE_CLUSTERS_PREFIX,
                     NODES_PREFIX, LOCKS_PREFIX]

#: Presence and work in progress: rebuilt by heartbeats within seconds, or short-lived (SSO logins,
#: rate-limit counts). Moving a site to other storage leaves them behind (storage_move.py).
PRESENCE_PREFIXES = [NODES_PREFIX, PROXIES_PREFIX, TUNNELS_PREFIX, TUNNEL_AGENTS_PREFIX, PRESENCE_PREFIX,
                     SSO_REQUESTS_PREFIX, RATE_LIMITS_PREFIX]

#: Resource kinds stored one record per name under a prefix.
_KIND_PREFIXES = {"user": USERS_PREFIX, "role": ROLES_PREFIX, "token": TOKENS_PREFIX, "node": NODES_PREFIX,
                  "trusted_cluster": TRUSTED_CLUSTERS_PREFIX, "remote_cluster": REMOTE_CLUSTERS_PREFIX,
                  "oidc": OIDC_PREFIX}


def kind_prefix(kind: str) -> str:
    return _KIND_PREFIXES[kind]


def resource(kind: str, name: str) -> str:
    return _KIND_PREFIXES[kind] + name


def name_of(key: str) -> str:
    """The name part of a `kind/name` key."""
    return key.split("/", 1)[1]


def ca(cluster: str, ca_type: str) -> str:
    return f"{CAS_PREFIX}{cluster}/{ca_type}"


def cas_of(cluster: str) -> str:
    """Prefix of every CA of CLUSTER."""
    return f"{CAS_PREFIX}{cluster}/"


def role(name: str) -> str:
    return ROLES_PREFIX + name


def user(name: str) -> str:
    return USERS_PREFIX + name


def password(user_name: str) -> str:
    return f"passwords/{user_name}"


def token(name: str) -> str:
    return TOKENS_PREFIX + name


def node(name: str) -> str:
    return NODES_PREFIX + name


def trusted_cluster(root: str) -> str:
    return TRUSTED_CLUSTERS_PREFIX + root


def remote_cluster(leaf: str) -> str:
    return REMOTE_CLUSTERS_PREFIX + leaf


def tunnel(leaf: str, proxy: str) -> str:
    return f"{tunnels_of(leaf)}{proxy}"


def tunnels_of(leaf: str) -> str:
    return f"{TUNNELS_PREFIX}{leaf}/"


def presence(shard: int, proxy: str) -> str:
    return f"{presence_shard_prefix(shard)}{proxy}"


def presence_shard_prefix(shard: int) -> str:
    return f"{PRESENCE_PREFIX}{int(shard)}/"


def tunnel_agent(root: str, proxy: str) -> str:
    return f"{tunnel_agents_of(root)}{proxy}"


def tunnel_agents_of(root: str) -> str:
    return f"{TUNNEL_AGENTS_PREFIX}{root}/"


def proxy(name: str) -> str:
    return PROXIES_PREFIX + name


def oidc_connector(name: str) -> str:
    return OIDC_PREFIX + name


def sso_request(request_id: str) -> str:
    return SSO_REQUESTS_PREFIX + request_id


def sso_user(name: str) -> str:
    return SSO_USERS_PREFIX + name


def member(kind: str, name: str) -> str:
    return f"{MEMBERS_PREFIX}{kind}/{name}"


def members_of(kind: str) -> str:
    return f"{MEMBERS_PREFIX}{kind}/"


def lock(kind: str, name: str) -> str:
    return f"{LOCKS_PREFIX}{kind}/{name}"


def rate_limits_of(limiter: str, digest: str) -> str:
    """Prefix of the attempt counts of one caller (DIGEST of its key) in LIMITER."""
    return f"{RATE_LIMITS_PREFIX}{limiter}/{digest}/"


def rate_limit(limiter: str, digest: str, window: int) -> str:
    return f"{rate_limits_of(limiter, digest)}{window}"


def ca_key_index(public_key: str) -> str:
    """The index record of an SSH CA key (its canonical ``type base64`` form, see pki.ca_public_key)."""
    import hashlib
    return CA_KEYS_PREFIX + hashlib.sha256(public_key.encode()).hexdigest()


def cluster_name_index(name: str) -> str:
    """The index record of a cluster name: its labels, lower-cased, in reverse order (``leaf.example.com``
    → ``cluster_names/com/example/leaf``), so every name under NAME is the range below this key."""
    labels = [label or "~" for label in name.lower().rstrip(".").split(".")]  # "~" never occurs in a name
    return CLUSTER_NAMES_PREFIX + "/".join(reversed(labels))


def audit_forwarded(root: str) -> str:
    return f"audit_forwarded/{root}"


def audit_forwarder(leaf: str) -> str:
    return f"audit_forwarders/{leaf}"


AUDIT_RETENTION = "audit_retention"
