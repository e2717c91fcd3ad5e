"""Trusted clusters, both sides of the trust, as stored by the auth service.

Root side: `validate` answers a leaf's handshake (token, checks, then the leaf host CA
and a `remote_cluster` written in one transaction); remote clusters are listed with a
live status computed from the tunnel heartbeats the root proxies report, relabelled,
and removed (which also revokes the leaf's host CA, so its tunnels are dropped).

Leaf side: creating a `trusted_cluster` runs the handshake and stores the root's host
and user CAs (the user CA carries the role map) plus the resource, without its token;
`enabled` flips the CAs' `active` flag, so root certificates stop working at once.

Storage keys are in `keys.py`: the CAs, `remote_clusters/<leaf>`, per-proxy tunnel
records on both sides, and `proxies/<name>` (root proxies, announced to leaves so they
dial every one, with the address of their web port through which `relay.py` reaches
a leaf).
"""

from __future__ import annotations

import logging
import time

from .. import __version__, pki, resources
from ..backend.base import Op
from ..clock import now_iso
from ..config import certificate_ttl
from ..errors import AlreadyExists, BadParameter, ConnectionProblem, GatehouseError, NotFound, TrustError
from ..rolemap import validate_role_map
from ..rootclient import RootWebClient
from ..wire import MISSED_HEARTBEATS, TUNNEL_LOGIN, VALIDATE_PATH, connection_status, is_live
from . import handshake, keys
from .authz import Identity, require_kind

log = logging.getLogger("gatehouse.trust")



class TrustManager:
    def __init__(self, svc):
        self.svc = svc
        self.backend = svc.backend
        self.audit = svc.audit

    @property
    def cluster_name(self) -> str:
        return self.svc.cluster_name

    # ================================================================ root side
    async def validate(self, ident: Identity, body: dict, client_addr: str) -> dict:
        """Answer a leaf's handshake; every refusal is audited with its reason."""
        require_kind(ident, ("proxy",), f"trust handshakes arrive through the root proxy's {VALIDATE_PATH}")
        self.svc.validate_limiter.check(f"validate:{client_addr}", "trust validation")
        leaf = str(body.get("cluster_name") or "")
        try:
            leaf, host_ca = handshake.check_request(body, self.cluster_name)
            resources.validate_name(leaf, "leaf cluster name")
            token = await self.svc.tokens.check(str(body.get("token") or ""), "trusted_cluster")
            try:
                pki.ssh_fingerprint(host_ca)
            except GatehouseError:
                raise TrustError("the leaf's host certificate authority is not a valid SSH public key; "
                                 "check the leaf's auth service") from None
            await self._register_leaf(leaf, host_ca, token.get("labels") or {})
        except GatehouseError as exc:
            self.audit.emit("trusted_cluster.validate", success=False, leaf=leaf, addr=client_addr, error=str(exc))
            raise
        self.audit.emit("trusted_cluster.validate", leaf=leaf, addr=client_addr, token_name=token["name"])
        log.info("trust: leaf cluster %s registered from %s", leaf, client_addr)
        host, user = await self.svc.local_ca("host"), await self.svc.local_ca("user")
        return {"cluster_name": self.cluster_name, "version": __version__,
                "host_ca": host["public"], "user_ca": user["public"]}

    async def _register_leaf(self, leaf: str, host_ca: str, labels: dict) -> None:
        key = keys.ca(leaf, "host")
        try:
            existing = (await self.backend.get(key)).value
        except NotFound:
            existing = None
        if existing is not None:
            if pki.ssh_fingerprint(existing["public"]) == pki.ssh_fingerprint(host_ca):
                return  # the same leaf retrying a handshake whose answer it lost
            raise AlreadyExists(f'a cluster named "{leaf}" is already registered with the root; remove it there '
                                f"with 'gatectl rm rc/{leaf}' or rename the leaf")
        ca = {"cluster_name": leaf, "type": "host", "public": host_ca, "active": True, "local": False}
        # Status is not stored: remote_clusters() computes it from the tunnel records when asked.
        rc = {"kind": "remote_cluster", "version": "v3",
              "metadata": {"name": leaf, "labels": {str(k): str(v) for k, v in labels.items()}}, "created": now_iso()}
        await self.backend.atomic([Op("create", key, ca), Op("create", keys.remote_cluster(leaf), rc)])

    async def remote_clusters(self, name: str | None = None) -> list[dict]:
        items = [i.value for i in await self.backend.get_range(keys.REMOTE_CLUSTERS_PREFIX)]
        if name is not None:
            items = [rc for rc in items if rc["metadata"]["name"] == name]
            if not items:
                raise NotFound(f'remote_cluster "{name}" not found; list remote clusters with \'gatectl get rc\'')
        now = time.time()
        out = []
        for rc in items:
            leaf = rc["metadata"]["name"]
            records = [i.value for i in await self.backend.get_range(keys.tunnels_of(leaf))]
            connection, last = connection_status(records, now)
            out.append({"kind": "remote_cluster", "version": "v3",
                        "metadata": {"name": leaf, "labels": dict(rc["metadata"].get("labels") or {})},
                        "status": {"connection": connection, "last_heartbeat": now_iso(last) if last else ""}})
        return out

    async def set_labels(self, ident: Identity, name: str, labels, dry_run: bool = False) -> dict:
        require_kind(ident, ("admin",), "only the root's admin can set a remote cluster's labels")
        labels = resources.validate_labels(labels, "remote cluster labels")
        key = keys.remote_cluster(name)
        try:
            item = await self.backend.get(key)
        except NotFound:
            raise NotFound(f'remote_cluster "{name}" not found; a leaf appears here once it creates its '
                           f"trusted_cluster (list them with 'gatectl get rc')") from None
        if dry_run:
            return (await self.remote_clusters(name))[0]
        value = dict(item.value)
        value["metadata"] = {**value["metadata"], "labels": labels}
        value.pop("status", None)  # written by earlier versions; status is computed when read
        await self.backend.compare_and_swap(key, item.revision, value)
        self.audit.emit("remote_cluster.update", user=ident.name, name=name, labels=labels)
        return (await self.remote_clusters(name))[0]

    async def delete_remote_cluster(self, ident, name: str) -> None:
        if not await self.backend.exists(keys.remote_cluster(name)):
            raise NotFound(f'remote_cluster "{name}" not found; list remote clusters with \'gatectl get rc\'')
        await self.backend.atomic([Op("delete", keys.remote_cluster(name))] +
                                  [Op("delete", i.key) for i in await self.backend.get_range(keys.cas_of(name))])
        await self.backend.delete_range(keys.tunnels_of(name))
        self.audit.emit("remote_cluster.delete", user=ident.name, name=name)
        log.info("trust: remote cluster %s removed; its tunnels will be dropped", name)

    async def tunnel_heartbeat(self, ident, leaf: str, connected: bool, interval: float) -> None:
        """A root proxy reports its tunnel to `leaf` (on connect, every heartbeat, on disconnect)."""
        require_kind(ident, ("proxy",), "only proxies report tunnel heartbeats")
        if not await self.backend.exists(keys.remote_cluster(leaf)):
            raise NotFound(f'remote_cluster "{leaf}" is not registered; the tunnel will be closed')
        key = keys.tunnel(leaf, ident.name)
        previous = None
        try:
            previous = (await self.backend.get(key)).value
        except NotFound:
            pass
        now = time.time()
        await self.backend.put(key, {"proxy": ident.name, "connected": bool(connected), "interval": float(interval),
                                     "last_heartbeat": now if connected else (previous or {}).get("last_heartbeat", 0.0)})
        if previous is None or bool(previous.get("connected")) != bool(connected):
            self.audit.emit("tunnel.connect" if connected else "tunnel.disconnect", leaf=leaf, proxy=ident.name)

    async def proxy_heartbeat(self, ident, interval: float, web_addr: str = "") -> list[str]:
        """A root proxy is alive; `web_addr` is where this auth service reaches its web port (see ask_leaf)."""
        require_kind(ident, ("proxy",), "only proxies send proxy heartbeats")
        await self.backend.put(keys.proxy(ident.name), {"name": ident.name, "last_heartbeat": now_iso(),
                                                        "web_addr": web_addr},
                               expires=time.time() + MISSED_HEARTBEATS * interval)
        return sorted(i.value["name"] for i in await self.backend.get_range(keys.PROXIES_PREFIX))

    async def issue_tunnel_cert(self, ident, ssh_public: str) -> str:
        """A user-type certificate a root proxy presents to leaves: login TUNNEL_LOGIN only, no roles."""
        require_kind(ident, ("proxy",), "only proxies get tunnel certificates")
        ca = await self.svc.local_ca("user")
        now = int(time.time())
        ttl = certificate_ttl(self.svc.cfg.auth.tunnel_cert_ttl)  # renewed by the proxy at half-life
        return pki.sign_ssh_cert(ca["private"], ssh_public, cert_type="user", key_id=f"proxy:{ident.name}",
                                 principals=[TUNNEL_LOGIN], valid_after=now - 60,
                                 valid_before=now + ttl,
                                 extensions={"permit-port-forwarding": ""})  # channels to leaf nodes

    # ================================================================ leaf side
    async def trusts(self, root: str) -> bool:
        """Whether this cluster is a leaf of a root called ROOT."""
        return await self.backend.exists(keys.trusted_cluster(root))

    async def put_trusted_cluster(self, ident, res: dict, force: bool, dry_run: bool = False) -> bool:
        """Create (handshake with the root) or, with force, update the trust; True when created.
        A dry run makes every check that needs no network and changes nothing."""
        name = res["metadata"]["name"]
        spec = res["spec"]
        await self._check_role_map(spec["role_map"])
        key = keys.trusted_cluster(name)
        try:
            current = await self.backend.get(key)
        except NotFound:
            current = None
        if current is not None:
            if not force:
                raise AlreadyExists(f'trusted_cluster "{name}" already exists; use \'gatectl create -f\' to update '
                                    f"it (enabled, role_map, addresses)")
            if not dry_run:
                await self._update(ident, current, res)
            return False
        if not spec.get("token"):
            raise BadParameter("spec.token is missing; the first handshake needs a trusted_cluster join token from "
                               "the root ('gatectl tokens add --type=trusted_cluster' there)")
        if name == self.cluster_name:
            raise TrustError(f'the trusted_cluster "{name}" has this cluster\'s own name; name it after the root '
                             f"cluster")
        for other in await self.backend.get_range(keys.TRUSTED_CLUSTERS_PREFIX):
            raise TrustError(f'this cluster already trusts "{other.value["metadata"]["name"]}"; a leaf trusts one '
                             f"root — remove that trusted_cluster first")
        if dry_run:
            return True
        answer = await self._handshake(name, spec)
        await self._store_root(res, answer)
        self.audit.emit("trusted_cluster.create", user=ident.name, name=name, web_proxy_addr=spec["web_proxy_addr"],
                        enabled=spec["enabled"])
        log.info("trust: this cluster now trusts root cluster %s (enabled=%s)", name, spec["enabled"])
        return True

    async def _check_role_map(self, role_map: list) -> None:
        existing = {keys.name_of(i.key) for i in await self.backend.get_range(keys.ROLES_PREFIX)}
        validate_role_map(role_map, existing)

    async def _handshake(self, name: str, spec: dict) -> dict:
        host_ca = (await self.svc.local_ca("host"))["public"]
        payload = {"token": spec["token"], "cluster_name": self.cluster_name, "expected_root": name,
                   "host_cas": [host_ca], "version": __version__}
        try:
            answer = await RootWebClient(spec["web_proxy_addr"], self.svc.cfg.insecure).validate(payload)
        except ConnectionProblem:
            raise
        except GatehouseError as exc:
            self.audit.emit("trusted_cluster.create", success=False, name=name, error=str(exc))
            raise type(exc)(f"the root cluster refused trust: {exc}") from None
        for field in ("cluster_name", "host_ca", "user_ca"):
            if not isinstance(answer.get(field), str) or not answer[field]:
                raise TrustError(f"the root's answer to the handshake has no {field}; is {spec['web_proxy_addr']} "
                                 f"a Gatehouse root proxy?")
        if answer["cluster_name"] != name:
            raise TrustError(f'the root cluster is called "{answer["cluster_name"]}", not "{name}"; set '
                             f'metadata.name: {answer["cluster_name"]}')
        handshake.check_version(answer.get("version", "0"), __version__)
        log.debug("trust: handshake with %s succeeded", name)
        return answer

    async def _store_root(self, res: dict, answer: dict) -> None:
        name, spec = res["metadata"]["name"], res["spec"]
        stored = _without_token(res)
        # Where the root says its tunnel listener is, used while spec.tunnel_addr is left at web_proxy_addr.
        stored["discovered_tunnel_addr"] = str(answer.get("tunnel_addr") or "")
        base = {"cluster_name": name, "active": spec["enabled"], "local": False}
        await self.backend.atomic([
            Op("create", keys.trusted_cluster(name), stored),
            Op("put", keys.ca(name, "host"), {**base, "type": "host", "public": answer["host_ca"]}),
            Op("put", keys.ca(name, "user"), {**base, "type": "user", "public": answer["user_ca"],
                                           "role_map": spec["role_map"]}),
        ])

    async def _update(self, ident, current, res: dict) -> None:
        name, spec = res["metadata"]["name"], res["spec"]
        old = current.value["spec"]
        updated = _without_token(res)
        updated["discovered_tunnel_addr"] = current.value.get("discovered_tunnel_addr", "")
        ops = [Op("cas", current.key, updated, revision=current.revision)]
        for ca_type in ("host", "user"):
            try:
                item = await self.backend.get(keys.ca(name, ca_type))
            except NotFound:
                raise TrustError(f'the certificate authorities of "{name}" are missing; remove the trusted_cluster '
                                 f"and create it again with a new token") from None
            value = {**item.value, "active": spec["enabled"]}
            if ca_type == "user":
                value["role_map"] = spec["role_map"]
            ops.append(Op("cas", item.key, value, revision=item.revision))
        await self.backend.atomic(ops)
        if old.get("enabled") != spec["enabled"]:
            event = "trusted_cluster.enable" if spec["enabled"] else "trusted_cluster.disable"
            self.audit.emit(event, user=ident.name, name=name)
            log.info("trust: %s trust with root cluster %s", "enabled" if spec["enabled"] else "disabled", name)
        else:
            self.audit.emit("trusted_cluster.update", user=ident.name, name=name, role_map=spec["role_map"])

    async def trusted_clusters(self, name: str | None = None) -> list[dict]:
        items = [i.value for i in await self.backend.get_range(keys.TRUSTED_CLUSTERS_PREFIX)]
        if name is not None:
            items = [tc for tc in items if tc["metadata"]["name"] == name]
            if not items:
                raise NotFound(f'trusted_cluster "{name}" not found; list them with \'gatectl get tc\'')
        out = []
        now = time.time()
        for tc in items:
            root = tc["metadata"]["name"]
            agents = [i.value for i in await self.backend.get_range(keys.tunnel_agents_of(root))]
            live = [a for a in agents if a.get("proxies") and is_live(a.get("updated", 0), a.get("interval", 5.0), now)]
            online = bool(live)
            proxies = sorted({p for a in agents for p in a.get("proxies", [])})
            # Where the live tunnels go (the root may have moved since the handshake).
            dialled = sorted({a["tunnel_addr"] for a in live if a.get("tunnel_addr")})
            view = {k: v for k, v in tc.items() if k != "discovered_tunnel_addr"}
            view["status"] = {"connection": "online" if online and tc["spec"]["enabled"] else "offline",
                              "tunnels": len(proxies) if online else 0,
                              "tunnel_addr": dialled[0] if len(dialled) == 1 else resources.tunnel_dial_addr(tc)}
            out.append(view)
        return out

    async def delete_trusted_cluster(self, ident, name: str) -> None:
        if not await self.backend.exists(keys.trusted_cluster(name)):
            raise NotFound(f'trusted_cluster "{name}" not found; list them with \'gatectl get tc\'')
        await self.backend.atomic([Op("delete", keys.trusted_cluster(name))] +
                                  [Op("delete", i.key) for i in await self.backend.get_range(keys.cas_of(name))])
        await self.backend.delete_range(keys.tunnel_agents_of(name))
        self.audit.emit("trusted_cluster.delete", user=ident.name, name=name)
        log.info("trust: removed trust with root cluster %s", name)

    async def tunnel_agent_status(self, ident, root: str, proxies: list[str], interval: float,
                                  tunnel_addr: str = "") -> None:
        """A leaf proxy reports which root proxies it holds tunnels to, and the address it dials."""
        require_kind(ident, ("proxy",), "only proxies report tunnel status")
        await self.backend.put(keys.tunnel_agent(root, ident.name),
                               {"proxies": sorted(proxies), "interval": float(interval), "updated": time.time(),
                                "tunnel_addr": tunnel_addr},
                               expires=time.time() + 10 * interval + 60)


def _without_token(res: dict) -> dict:
    spec = {k: v for k, v in res["spec"].items() if k != "token"}
    return {"kind": res["kind"], "version": res.get("version", "v2"), "metadata": res["metadata"], "spec": spec}
