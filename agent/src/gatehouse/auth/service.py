"""Auth service: cluster CAs, users, roles, tokens, certificates, node registry.

This is the business logic behind the auth API (`api.py`). It owns the backend and
the audit log; callers pass an already-authenticated `Identity`, and each method
checks what that identity may do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from .. import __version__, pki, resources
from ..access import AccessChecker, explain_ssh, node_not_registered
from ..audit import AuditLog
from ..backend import open_backend
from ..backend.base import Op
from ..clock import now_iso
from ..config import Config, join_hostport, public_addr, split_hostport
from ..errors import AccessDenied, AlreadyExists, BadParameter, CompareFailed, GatehouseError, NotFound
from ..wire import AUTH_PORT, LEAF_ACCESS_CHECK_PATH, MEMBER_KINDS, NODE_PORT, NOLOGIN_PRINCIPAL
from . import keys, listing, passwords, snapshots
from .authz import Identity, require_admin, require_kind, require_node_itself
from .limits import SharedRateLimiter
from .members import MemberRegistry
from .relay import LeafRelay
from .resource_store import not_found
from .tokens import TokenStore

log = logging.getLogger("gatehouse.auth")

USER_CERT_MAX_TTL = 30 * 3600
HOST_CERT_TTL = 365 * 24 * 3600  # the local admin identity's; members' follow auth_service.identity_ttl


class AuthService:
    def __init__(self, cfg: Config, backend, audit: AuditLog):
        self.cfg = cfg
        self.cluster_name = cfg.auth.cluster_name
        self.backend = backend
        self.audit = audit
        # In the backend, so the limits hold across auth servers; addresses and user names apart.
        self.login_addr_limiter = SharedRateLimiter(backend, "login_addr", cfg.auth.login_rate)
        self.login_user_limiter = SharedRateLimiter(backend, "login_user", cfg.auth.login_rate)
        self.validate_limiter = SharedRateLimiter(backend, "validate", cfg.auth.validate_rate)
        self.tokens = TokenStore(backend, audit, cfg.auth.tokens)
        from .presence import PresenceStore
        self.presence = PresenceStore(backend, audit)
        self.snapshot_feed = snapshots.SnapshotFeed(backend)
        self.relay = LeafRelay(backend, cfg.data_dir, self.presence)
        self.members = MemberRegistry(self)
        self._ca_cache: dict[str, dict] = {}
        from .resource_store import ResourceStore
        from .sso import SSOLogins
        from .trust import TrustManager
        self.trust = TrustManager(self)
        self.resources = ResourceStore(self)
        self.sso = SSOLogins(self)
        from .audit_store import AuditStore
        self.audit_store = AuditStore(self)

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    async def open(cls, cfg: Config) -> "AuthService":
        os.makedirs(cfg.data_dir, mode=0o700, exist_ok=True)
        backend = await open_backend(cfg.auth.storage, cfg.data_dir)
        svc = cls(cfg, backend, AuditLog.for_config(cfg, cfg.auth.cluster_name))
        await svc._init_cluster()
        await svc.snapshot_feed.start()
        await svc.audit_store.start()
        return svc

    async def close(self) -> None:
        await self.audit_store.stop()
        await self.snapshot_feed.stop()
        await self.backend.close()
        self.audit.close()

    async def _init_cluster(self) -> None:
        from . import cluster_index
        for ca_type in ("user", "host", "tls"):
            key = keys.ca(self.cluster_name, ca_type)
            if not await self.backend.exists(key):
                ca = self._new_ca(ca_type)
                index = cluster_index.ca_ops(self.cluster_name, ca_type, ca["public"], True) if ca_type != "tls" else []
                try:
                    await self.backend.atomic([Op("create", key, ca)] + index)
                except AlreadyExists:
                    continue   # another auth server of this cluster, starting at the same time, made it
                log.info("created %s certificate authority for cluster %s", ca_type, self.cluster_name)
        await cluster_index.backfill(self.backend, self.cluster_name)
        try:
            await self.backend.create(keys.role("access"), _default_access_role())
        except AlreadyExists:
            pass
        await self._write_admin_identity()

    def _new_ca(self, ca_type: str) -> dict:
        record = {"cluster_name": self.cluster_name, "type": ca_type, "active": True, "local": True}
        if ca_type == "tls":
            record["private"], record["public"] = pki.new_tls_ca(self.cluster_name)
        else:
            pair = pki.new_ssh_key(comment=f"{self.cluster_name} {ca_type} CA")
            record["private"], record["public"] = pair.private_openssh, pair.public_line
        return record

    async def _write_admin_identity(self) -> None:
        """Local admin credentials for gatectl and the Ansible modules on this host."""
        admin_dir = os.path.join(self.cfg.data_dir, "admin")
        key_pem, pub_pem = pki.new_tls_key()
        ca = await self.local_ca("tls")
        cert = pki.issue_tls_cert(ca["private"], ca["public"], pub_pem, common_name="admin",
                                  organization=self.cluster_name, unit="admin",
                                  ttl_seconds=HOST_CERT_TTL, server=False, client=True)
        pki.write_secret(os.path.join(admin_dir, "identity.key"), key_pem)
        pki.write_secret(os.path.join(admin_dir, "identity.crt"), cert)
        pki.write_secret(os.path.join(admin_dir, "ca.crt"), ca["public"])
        # This server first, then the others of gatehouse.auth_servers: gatectl fails over to them.
        pki.write_secret(os.path.join(admin_dir, "auth_addr"), "\n".join(self.cfg.auth_addrs) + "\n")

    # ----------------------------------------------------------------- CAs
    async def local_ca(self, ca_type: str) -> dict:
        if ca_type not in self._ca_cache:
            self._ca_cache[ca_type] = (await self.backend.get(keys.ca(self.cluster_name, ca_type))).value
        return self._ca_cache[ca_type]

    @staticmethod
    def public_ca(record: dict) -> dict:
        """The public view of a stored CA record (what members and users see); raises when it does not parse."""
        return _public_ca(record)

    async def cert_authorities(self) -> list[dict]:
        """Public parts of every CA this cluster knows (its own and trusted clusters').

        A record that does not parse is left out and logged, so one bad record never
        breaks the snapshot, logins or status."""
        out = []
        for item in await self.backend.get_range(keys.CAS_PREFIX):
            try:
                out.append(_public_ca(item.value))
            except (GatehouseError, KeyError, TypeError, ValueError, AttributeError) as exc:
                log.error("skipping the certificate authority record %r, which does not parse (%s); remove it "
                          "or re-create the trust it belongs to", item.key, exc)
        return out

    # ----------------------------------------------------------------- identities
    async def issue_tls(self, public_pem: str, *, name: str, kind: str, ttl: int, server: bool = False,
                        client: bool = True, dns_names=(), ip_addresses=()) -> str:
        ca = await self.local_ca("tls")
        return pki.issue_tls_cert(ca["private"], ca["public"], public_pem, common_name=name,
                                  organization=self.cluster_name, unit=kind, dns_names=dns_names,
                                  ip_addresses=ip_addresses, ttl_seconds=ttl, server=server, client=client)

    async def issue_host_identity(self, kind: str, name: str, ssh_public: str, tls_public: str,
                                  principals: list[str]) -> dict:
        """SSH host cert + X.509 identity for a node or proxy run by this auth process (see members.py)."""
        return await self.members.issue_local(kind, name, ssh_public, tls_public, principals)

    async def ca_bundle(self) -> dict:
        """What a member of this cluster needs to verify everyone else."""
        return {"cluster_name": self.cluster_name,
                "tls_ca": (await self.local_ca("tls"))["public"],
                "host_ca": (await self.local_ca("host"))["public"],
                "user_ca": (await self.local_ca("user"))["public"]}

    async def join(self, token: str, role: str, name: str, ssh_public: str, tls_public: str,
                   client_addr: str) -> dict:
        """A node or proxy process exchanges a join token for its identity (auth picks its principals)."""
        if role not in MEMBER_KINDS:
            raise BadParameter(f"cannot join as {role!r}; use node or proxy")
        await self.validate_limiter.check(f"join:{client_addr}", "join")
        try:
            ident = await self.members.join(token, role, name, ssh_public, tls_public, client_addr)
        except (AccessDenied, BadParameter) as exc:
            self.audit.emit("join", success=False, role=role, name=name, addr=client_addr, error=str(exc))
            raise
        self.audit.emit("join", role=role, name=name, addr=client_addr,
                        principals=pki.parse_ssh_cert(ident["ssh_cert"]).principals)
        return ident

    # ----------------------------------------------------------------- users and login
    async def set_password(self, ident: Identity, user: str, password: str) -> None:
        require_admin(ident, "set passwords")
        resources.validate_password(password)
        if not await self.backend.exists(keys.user(user)):
            not_found("user", user)
        hashed = await asyncio.to_thread(passwords.hash_password, password)
        await self.backend.put(keys.password(user), {"hash": hashed, "updated": now_iso()})
        self.audit.emit("user.password_change", user=ident.name, name=user)

    async def get_user(self, name: str) -> dict:
        return (await self.backend.get(keys.user(name))).value

    async def roles_by_name(self) -> dict[str, dict]:
        return {i.value["metadata"]["name"]: i.value for i in await self.backend.get_range(keys.ROLES_PREFIX)}

    async def checker_for_user(self, user: dict) -> AccessChecker:
        roles = await self.roles_by_name()
        return AccessChecker([roles[r] for r in user["spec"]["roles"] if r in roles], user["spec"]["traits"])

    async def login(self, ident: Identity, user: str, password: str, ssh_public: str, tls_public: str, ttl: int,
                    client_addr: str) -> dict:
        """Check a password and issue the user's SSH and X.509 certificates."""
        require_kind(ident, ("proxy",), "password logins go through the proxy: use 'gate login --proxy=HOST:3080'")
        # The address first: a caller over its limit reaches no per-user bucket, so junk user
        # names from one address can neither fill the user limiter nor reset a user's bucket.
        await self.login_addr_limiter.check(client_addr, "login")
        try:
            resources.validate_name(user, "user name", kind="user")
        except BadParameter:
            valid_name = False  # cannot exist: no bucket, no hash, the same answer as a wrong password
        else:
            valid_name = True
            await self.login_user_limiter.check(user, "login")
        record = None
        if valid_name:
            try:
                record = await self.backend.get(keys.password(user))
            except NotFound:
                pass
        stored = record.value["hash"] if record is not None else None
        ok = valid_name and await asyncio.to_thread(passwords.verify_password, password, stored)
        if not ok:
            self.audit.emit("user.login", success=False, user=user, addr=client_addr,
                            error="invalid user name or password")
            raise AccessDenied("invalid user name or password; check both and try again")
        if passwords.needs_rehash(stored):
            await self._rehash_password(user, password, record)
        certs = await self.issue_user_certs(await self.get_user(user), ssh_public, tls_public, ttl)
        self.audit.emit("user.login", user=user, addr=client_addr, method="password")
        return certs

    async def _rehash_password(self, user: str, password: str, record) -> None:
        """Store a hash with today's parameters after a successful login (unless the password changed meanwhile)."""
        hashed = await asyncio.to_thread(passwords.hash_password, password)
        try:
            await self.backend.compare_and_swap(keys.password(user), record.revision,
                                                {**record.value, "hash": hashed})
        except (CompareFailed, NotFound):
            return
        log.info("rehashed the password of user %s with the current parameters", user)

    async def issue_user_certs(self, user: dict, ssh_public: str, tls_public: str, ttl: int,
                               connector: str = "") -> dict:
        """The user's SSH and X.509 certificates; CONNECTOR ("oidc/NAME") names a single sign-on login."""
        name = user["metadata"]["name"]
        checker = await self.checker_for_user(user)
        opts = checker.cert_options()
        ttl = user_cert_ttl(ttl, opts["ttl"])
        now = int(time.time())
        logins = checker.logins()
        traits = dict(user["spec"]["traits"])
        ca = await self.local_ca("user")
        extensions = pki.user_cert_extensions(
            user["spec"]["roles"], traits, self.cluster_name,
            permit_pty=opts["permit_pty"], permit_port_forwarding=opts["permit_port_forwarding"],
            permit_agent_forwarding=opts["permit_agent_forwarding"],
            permit_x11_forwarding=opts["permit_x11_forwarding"], connector=connector)
        # An empty principal list would mean "any login" to OpenSSH; never issue that.
        principals = logins or [NOLOGIN_PRINCIPAL]
        ssh_cert = pki.sign_ssh_cert(ca["private"], ssh_public, cert_type="user", key_id=name,
                                     principals=principals, valid_after=now - 60, valid_before=now + ttl,
                                     extensions=extensions)
        tls_cert = await self.issue_tls(tls_public, name=name, kind="user", ttl=ttl)
        info = pki.parse_ssh_cert(ssh_cert)
        self.audit.emit("cert.create", user=name, cert_type="user", principals=logins,
                        roles=user["spec"]["roles"], expires=now_iso(now + ttl), serial=info.serial,
                        connector=connector or None)
        return {"ssh_cert": ssh_cert, "tls_cert": tls_cert, "ttl": ttl, **await self.ca_bundle(),
                "host_cas": await self._host_cas_visible_to(checker),
                "user": {"name": name, "roles": user["spec"]["roles"], "logins": logins, "traits": traits,
                         "connector": connector}}

    # ----------------------------------------------------------------- nodes
    async def heartbeat_node(self, ident: Identity, name: str, addr: str, labels: dict, hostname: str,
                             interval: float | None = None, observed: str = "",
                             approved: frozenset[str] = frozenset()) -> str:
        """Record a node's heartbeat; returns the address the proxies will dial for it.

        Proxies route by the registered name only, and dial the address this decides: the
        node's port at the address its heartbeat came from (OBSERVED), or at a host its
        identity was approved for (APPROVED: the names auth put in its certificate). A node
        cannot point its record at anyone else's address; its hostname is for display.
        """
        require_node_itself(ident, name)
        resources.validate_name(name, "node name")
        labels = _node_labels(labels)
        hostname = _display_text(hostname, "hostname")
        addr = node_dial_addr(name, addr, observed, approved, trusted=ident.kind == "admin")
        # Gone after four missed heartbeats, counted in the node's own interval when it says.
        ttl = (interval or self.cfg.heartbeat_interval) * 4
        resource = {"kind": "node", "version": "v2",
                    "metadata": {"name": name, "labels": labels},
                    "spec": {"addr": addr, "hostname": hostname, "cluster_name": self.cluster_name},
                    "status": {"last_heartbeat": now_iso()}}
        # A revocation committed after this caller was checked wins: no record outlives it.
        await self.members.write_as(ident, [Op("put", keys.node(name), resource, expires=time.time() + ttl)])
        return addr

    async def list_nodes(self, ident: Identity) -> list[dict]:
        nodes = [i.value for i in await self.backend.get_range(keys.NODES_PREFIX)]
        if ident.kind in ("admin", "proxy", "node"):
            return nodes
        checker = await self.checker_for_user(await self.get_user(ident.name))
        return [n for n in nodes if checker.can_see_node(n["metadata"]["name"], n["metadata"]["labels"])]

    async def list_clusters(self, ident: Identity) -> list[dict]:
        """This cluster and the leaves the caller may see (root roles' cluster_labels decide)."""
        return (await self.cluster_page(ident, listing.parse_query({})))[0]

    async def cluster_page(self, ident: Identity, query: listing.Query) -> tuple[list[dict], str]:
        """list_clusters filtered and paged by QUERY (auth/listing.py): (the page, the name to continue
        after, or "" on the last page). The root comes first, on the first page only; leaves follow by name."""
        checker = await self.checker_for_user(await self.get_user(ident.name)) if ident.kind == "user" else None
        own = {"name": self.cluster_name, "type": "root", "status": "online", "labels": {}}
        leaves = [{"name": rc["metadata"]["name"], "type": "leaf", "status": rc["status"]["connection"],
                   "labels": rc["metadata"]["labels"]} for rc in await self._leaves_visible_to(checker)]
        items = leaves if query.start_after else [own, *leaves]
        return listing.select(query, items, lambda c: c["name"], lambda c: c["labels"])

    async def _leaves_visible_to(self, checker: AccessChecker | None) -> list[dict]:
        """The remote clusters (leaves) whose labels the checker's roles may see; all of them without one."""
        return [rc for rc in await self.trust.remote_clusters()
                if checker is None or checker.check_cluster(rc["metadata"]["name"], rc["metadata"]["labels"]).allowed]

    async def host_cas(self, ident: Identity) -> list[dict]:
        """The host CAs a user's `gate` trusts for node host keys (refreshed when a leaf joined after login)."""
        require_kind(ident, ("user",), "host CAs are listed for users; log in with 'gate login'")
        return await self._host_cas_visible_to(await self.checker_for_user(await self.get_user(ident.name)))

    async def _host_cas_visible_to(self, checker: AccessChecker) -> list[dict]:
        """Active host CAs of this cluster and of the leaves the checker may see: a leaf hidden by
        cluster labels is not named, and a leaf's users get no root CA (trust is one-way)."""
        visible = {self.cluster_name} | {rc["metadata"]["name"] for rc in await self._leaves_visible_to(checker)}
        return [{"cluster_name": c["cluster_name"], "public": c["public"], "fingerprint": c["fingerprint"]}
                for c in await self.cert_authorities()
                if c["type"] == "host" and c["active"] and c["cluster_name"] in visible]

    async def whoami(self, ident: Identity) -> dict:
        """A user's roles, traits and logins as their certificate states them (for proxies acting for them)."""
        if ident.kind != "user":
            return {"name": ident.name, "kind": ident.kind, "roles": [], "traits": {}, "logins": []}
        user = await self.get_user(ident.name)
        return {"name": ident.name, "kind": "user", **self._cert_claims(user, await self.checker_for_user(user))}

    @staticmethod
    def _cert_claims(user: dict, checker: AccessChecker) -> dict:
        """What the user's certificate carries: roles, traits and logins (its principals)."""
        return {"roles": list(user["spec"]["roles"]), "traits": dict(user["spec"]["traits"]),
                "logins": checker.logins()}

    async def access_check(self, ident: Identity, user: str, login: str, node: str, from_cluster: str = "",
                           roles: list[str] | None = None, traits: dict | None = None, cluster: str = "") -> dict:
        """Explain the SSH decision for USER as LOGIN on NODE, as the node would make it.

        On this cluster: a local user is looked up here; a user of a trusted root
        (`from_cluster`) is described by the roles and traits of their root certificate
        and goes through the role map stored with that root's user CA. For a leaf
        (`cluster`), this root checks its own cluster labels and then asks the leaf
        through a root proxy's reverse tunnel, where the same code decides.
        """
        require_admin(ident, "check access")
        if cluster and cluster != self.cluster_name:
            return await self._access_check_leaf(cluster, user, login, node, from_cluster)
        try:
            node_res = (await self.backend.get(keys.node(node))).value
        except NotFound:
            raise NotFound(node_not_registered(self.cluster_name, node)) from None
        local_roles = await self.roles_by_name()
        if from_cluster and from_cluster != self.cluster_name:
            try:
                ca = (await self.backend.get(keys.ca(from_cluster, "user"))).value
            except NotFound:
                raise NotFound(f'this cluster does not trust a cluster named "{from_cluster}"; list trusted '
                               f"clusters with 'gatectl get tc'") from None
            return explain_ssh(self.cluster_name, local_roles, node_res, login, user=user, roles=list(roles or []),
                               traits=traits or {}, principals=list((traits or {}).get("logins", [])),
                               from_cluster=from_cluster, ca=ca)
        try:
            user_res = await self.get_user(user)
        except NotFound:
            raise NotFound(f'user "{user}" not found here; for a user of the root cluster pass --from ROOT '
                           f"--roles ROLES --logins LOGINS") from None
        return explain_ssh(self.cluster_name, local_roles, node_res, login, user=user,
                           roles=user_res["spec"]["roles"], traits=user_res["spec"]["traits"])

    async def _access_check_leaf(self, leaf: str, user: str, login: str, node: str, from_cluster: str) -> dict:
        """On the root, for a root user and a leaf node: cluster labels here, then the leaf's own explanation."""
        try:
            rc = (await self.backend.get(keys.remote_cluster(leaf))).value
        except NotFound:
            if await self.trust.trusts(leaf):
                raise BadParameter(f'this is cluster "{self.cluster_name}", a leaf of "{leaf}"; run the check on the '
                                   f'auth server of "{leaf}", or check a user of "{leaf}" here with --from={leaf} '
                                   f"--roles=ROLES --logins=LOGINS (without --cluster)") from None
            raise NotFound(f'cluster "{leaf}" is neither this cluster ("{self.cluster_name}") nor one of its leaf '
                           f"clusters; list leaf clusters with 'gatectl get rc'") from None
        if from_cluster:
            raise BadParameter(f"--from describes a user of a trusted root while checking on the leaf; here on "
                               f'"{self.cluster_name}" name only the user: gatectl access check --user=NAME '
                               f"--cluster={leaf} --login=LOGIN --node=NODE")
        try:
            user_res = await self.get_user(user)
        except NotFound:
            raise NotFound(f'user "{user}" not found on "{self.cluster_name}"; on the leaf, check a user of this '
                           f"cluster with --from={self.cluster_name} --roles=ROLES --logins=LOGINS") from None
        checker = await self.checker_for_user(user_res)
        claims = self._cert_claims(user_res, checker)
        visible = checker.check_cluster(leaf, rc["metadata"].get("labels") or {})
        root_view = {"cluster_access": {"allowed": visible.allowed, "reason": visible.reason, "rule": visible.rule}}
        if not visible.allowed:
            # Hidden: users are told the cluster is not found, and the leaf is never asked.
            return {"user": user, "cluster": leaf, "node": node, "node_labels": None, "login": login,
                    "from_cluster": self.cluster_name, "remote_roles": claims["roles"], "mapped_roles": [],
                    "logins": [], "allowed": False, "reason": visible.reason,
                    "rule": visible.rule or "allow.cluster_labels", **root_view}
        answer = await self.relay.ask_leaf(leaf, LEAF_ACCESS_CHECK_PATH,
                                           {"cluster": leaf, "user": user, "login": login, "node": node, **claims})
        return {**answer, **root_view}

    # ----------------------------------------------------------------- snapshots for nodes and proxies
    async def snapshot(self, ident: Identity, since: int = 0, timeout: float = 0, delta: bool = False) -> dict:
        """What a member needs of this cluster (snapshots.member_needs): the changes after SINCE when it
        asks for a DELTA and this server still has them (snapshots.py), else all of it."""
        require_kind(ident, ("node", "proxy", "admin"), "only cluster members can read the access snapshot")
        if delta and since:
            answer = await snapshots.delta(self, ident.kind, since, min(timeout, 55.0))
            if answer is not None:
                return answer
        revision = await self.backend.revision()
        if since and revision <= since and timeout > 0 and not delta:
            revision = await self.backend.wait_for_change(since, min(timeout, 55.0), keys.SNAPSHOT_PREFIXES)
        kind = ident.kind
        cas = [c for c in await self.cert_authorities()
               if snapshots.member_needs(kind, "cas", f'{c["cluster_name"]}/{c["type"]}', self.cluster_name)]
        return {"revision": revision, "cluster_name": self.cluster_name,
                "cas": cas, "roles": list((await self.roles_by_name()).values()),
                "nodes": [i.value for i in await self.backend.get_range(keys.NODES_PREFIX)]
                if snapshots.member_needs(kind, "nodes", "", self.cluster_name) else [],
                "remote_clusters": [i.value for i in await self.backend.get_range(keys.REMOTE_CLUSTERS_PREFIX)]
                if snapshots.member_needs(kind, "remote_clusters", "", self.cluster_name) else [],
                "trusted_clusters": [i.value for i in await self.backend.get_range(keys.TRUSTED_CLUSTERS_PREFIX)],
                "locks": await self.members.locks()}

    # ----------------------------------------------------------------- status
    async def status(self, ident: Identity) -> dict:
        cas = await self.cert_authorities()
        return {"cluster_name": self.cluster_name, "version": __version__, "server_time": now_iso(),
                "auth_addr": public_addr(self.cfg.auth.public_addr, self.cfg.auth.listen_addr, AUTH_PORT),
                "cas": [{"type": c["type"], "cluster_name": c["cluster_name"], "fingerprint": c["fingerprint"],
                         "active": c["active"]} for c in cas],
                "counts": {kind: len(await self.backend.get_range(keys.kind_prefix(kind)))
                           for kind in ("user", "role", "node", "token", "remote_cluster", "trusted_cluster")}}


# --------------------------------------------------------------------- helpers
def user_cert_ttl(requested: int, role_ttl: int) -> int:
    """A user certificate's lifetime: the request (or the roles' limit), never past the roles' shortest
    max_session_ttl nor USER_CERT_MAX_TTL, and at least a minute."""
    return max(60, min(requested or role_ttl, role_ttl, USER_CERT_MAX_TTL))


def _public_ca(v: dict) -> dict:
    """The public view of a stored CA record; raises when the record does not parse."""
    if not isinstance(v["cluster_name"], str) or v["type"] not in ("host", "user", "tls"):
        raise ValueError("it has no cluster name or no known type")
    if v["type"] != "tls":
        pki.ca_public_key(v["public"])  # one valid key on one line (its comment is kept)
    role_map = v.get("role_map", [])
    if not isinstance(role_map, list):
        raise ValueError("its role_map is not a list")
    return {"cluster_name": v["cluster_name"], "type": v["type"], "public": v["public"].strip(),
            "active": bool(v.get("active", True)), "local": bool(v.get("local", False)),
            "role_map": role_map, "fingerprint": _fingerprint(v)}


MAX_NODE_LABELS = 64
MAX_LABEL_VALUE = 256


def _node_labels(labels) -> dict[str, str]:
    """A node's reported labels: a bounded mapping of valid names to short printable values."""
    labels = resources.validate_labels(labels, "node labels")
    if len(labels) > MAX_NODE_LABELS:
        raise BadParameter(f"a node may report at most {MAX_NODE_LABELS} labels, not {len(labels)}; "
                           f"trim ssh_service.labels")
    for key, value in labels.items():
        _display_text(value, f'node label "{key}"', MAX_LABEL_VALUE)
    return labels


def _display_text(value, what: str, limit: int = 253) -> str:
    """A short printable string a member reports for display (its hostname, a label value)."""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise BadParameter(f"the {what} a node reports must be printable text of at most {limit} characters")
    return value


def _same_host(a: str, b: str) -> bool:
    import ipaddress
    try:
        left, right = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()
    mapped = [getattr(ip, "ipv4_mapped", None) or ip for ip in (left, right)]
    return mapped[0] == mapped[1]


def _local_only(host: str) -> bool:
    """Loopback, link-local (cloud metadata) and similar hosts: only ever a node's own if it calls from there."""
    import ipaddress
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast


def node_dial_addr(name: str, reported: str, observed: str, approved: frozenset[str] = frozenset(),
                   trusted: bool = False) -> str:
    """The address proxies dial for node NAME, from the address it REPORTED.

    The port is the node's. The host must be the address auth saw the heartbeat come
    from (an unspecified host means exactly that), or one approved for the node's
    identity (never a loopback or link-local one: those would be the proxy's own, or a
    cloud metadata service); anything else is refused (an admin, TRUSTED, may register
    any address).
    """
    host, port = split_hostport(str(reported), NODE_PORT, what=f'node "{name}" address')
    if host in ("0.0.0.0", "::", ""):
        if not observed:
            raise BadParameter(f'node "{name}" reported no host in its address and auth cannot tell where it '
                               f"connects from; set ssh_service.public_addr")
        host = observed
    elif not trusted and not (observed and _same_host(host, observed)) and \
            (_local_only(host) or not any(_same_host(host, ok) for ok in approved)):
        raise AccessDenied(f'node "{name}" may advertise only the address its heartbeats come from '
                           f"({observed or 'unknown'}) or one approved in its identity, not {host}; leave "
                           f"ssh_service.public_addr unset, or join the node with that address approved")
    return join_hostport(host, port)


def _fingerprint(ca: dict) -> str:
    return pki.tls_fingerprint(ca["public"]) if ca["type"] == "tls" else pki.ssh_fingerprint(ca["public"])


def _default_access_role() -> dict:
    return resources.validate({
        "kind": "role", "version": "v5", "metadata": {"name": "access",
                                                      "description": "SSH access with the user's own logins"},
        "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"},
                           "cluster_labels": {"*": "*"}}}})
