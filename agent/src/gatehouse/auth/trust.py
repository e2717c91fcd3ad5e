"""Trusted clusters, both sides of the trust, as stored by the auth service.

Root side: `validate` answers a leaf's handshake (token, checks, then the leaf host CA
and a `remote_cluster` written in one transaction); remote clusters are listed with a
live status computed from the tunnel heartbeats the root proxies report, relabelled,
and removed (which also revokes the leaf's host CA, so its tunnels are dropped).

Leaf side: creating a `trusted_cluster` runs the handshake and stores the root's host
and user CAs (the user CA carries the role map) plus the resource, without its token;
`enabled` flips the CAs' `active` flag, so root certificates stop working at once.

Storage keys are in `keys.py`: the CAs, `remote_clusters/<leaf>`, tunnel presence on
both sides (root: `presence.py`; leaf: `tunnel_agents/<root>/<proxy>`, written on change
and every summary interval), and `proxies/<name>` (root proxies, announced to leaves so
they dial every one, with the address of their web port through which `relay.py`
reaches a leaf).
"""

from __future__ import annotations

import logging
import time

from .. import __version__, pki, resources
from ..backend.base import Op
from ..clock import now_iso
from ..config import certificate_ttl, split_hostport
from ..errors import AlreadyExists, BadParameter, ConnectionProblem, GatehouseError, NotFound, TrustError
from ..rolemap import validate_role_map
from ..rootclient import RootWebClient
from ..wire import (MAX_ANNOUNCED_PROXIES, MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL, MISSED_HEARTBEATS,
                    TUNNEL_LOGIN, VALIDATE_PATH, heartbeat_interval, is_live)
from . import cluster_index, handshake, keys
from .authz import Identity, require_kind
from .tokens import check_token_admits_leaf

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
    async def validate(self, ident: Identity, body: dict, client_addr: str, proxy_hosts=()) -> dict:
        """Answer a leaf's handshake; every refusal is audited with its reason.

        PROXY_HOSTS are the public host names of the root proxy that carried the request:
        a leaf may not be named so that "*.LEAF" covers one of them (nor the root's name,
        nor another cluster's); a token bound to a leaf name admits only that name; the
        leaf's host CA must be one valid key that no cluster (this one included) holds.
        """
        require_kind(ident, ("proxy",), f"trust handshakes arrive through the root proxy's {VALIDATE_PATH}")
        await self.svc.validate_limiter.check(f"validate:{client_addr}", "trust validation")
        leaf = str(body.get("cluster_name") or "")[:253]
        try:
            leaf, host_ca = handshake.check_request(body, self.cluster_name)
            resources.validate_name(leaf, "leaf cluster name")
            token = await self.svc.tokens.check(str(body.get("token") or ""), "trusted_cluster")
            check_token_admits_leaf(token, leaf)
            handshake.check_leaf_name(leaf, self.cluster_name, await self._root_hosts(proxy_hosts),
                                      await cluster_index.overlapping(self.backend, leaf, exclude=(self.cluster_name,)))
            try:
                host_ca = pki.ca_public_key(host_ca)
            except BadParameter as exc:
                raise TrustError(f"the leaf's host certificate authority is not a valid SSH public key ({exc}); "
                                 f"check the leaf's auth service") from None
            owner = await self.ca_owner(host_ca)
            if owner is not None and (owner.get("cluster_name"), owner.get("type")) != (leaf, "host"):
                log.warning("trust: leaf %r offered the %s CA of cluster %r as its host CA", leaf,
                            owner.get("type"), owner.get("cluster_name"))
                raise TrustError("the leaf's host certificate authority is already registered here for another "
                                 "cluster; every cluster needs its own CA keys — check that the leaf's auth "
                                 "service data was not copied from another cluster")
            await self._register_leaf(leaf, host_ca, token.get("labels") or {})
        except GatehouseError as exc:
            self.audit.emit("trusted_cluster.validate", success=False, leaf=leaf, addr=client_addr, error=str(exc))
            raise
        self.audit.emit("trusted_cluster.validate", leaf=leaf, addr=client_addr, token_name=token["name"])
        log.info("trust: leaf cluster %s registered from %s", leaf, client_addr)
        host, user = await self.svc.local_ca("host"), await self.svc.local_ca("user")
        return {"cluster_name": self.cluster_name, "version": __version__,
                "host_ca": host["public"], "user_ca": user["public"]}

    async def ca_owner(self, public_key: str) -> dict | None:
        """{cluster_name, type, local} of the SSH CA (any cluster, this one included; host or user) holding
        PUBLIC_KEY (canonical, see pki.ca_public_key), or None: one read of the index (cluster_index.py)."""
        return await cluster_index.ca_owner(self.backend, public_key)

    async def _root_hosts(self, proxy_hosts) -> list[str]:
        """Host names (and addresses) under which users reach this root's proxies."""
        cfg = self.svc.cfg
        addrs = [cfg.proxy.public_addr, cfg.proxy.ssh_public_addr, cfg.proxy.tunnel_public_addr, cfg.auth.public_addr]
        addrs += [i.value.get("web_addr") or "" for i in await self.backend.get_range(keys.PROXIES_PREFIX)]
        hosts = [str(h) for h in proxy_hosts if isinstance(h, str)]
        for addr in addrs:
            try:
                hosts.append(split_hostport(addr, 1)[0])
            except (BadParameter, TypeError):
                continue
        return sorted({h for h in hosts if h and h not in ("0.0.0.0", "::")})

    async def _register_leaf(self, leaf: str, host_ca: str, labels: dict) -> None:
        key = keys.ca(leaf, "host")
        try:
            existing = (await self.backend.get(key)).value
        except NotFound:
            existing = None
        if existing is not None:
            if _same_key(existing.get("public"), host_ca):
                return  # the same leaf retrying a handshake whose answer it lost
            raise AlreadyExists(f'a cluster named "{leaf}" is already registered with the root; remove it there '
                                f"with 'gatectl rm rc/{leaf}' or rename the leaf")
        ca = {"cluster_name": leaf, "type": "host", "public": host_ca, "active": True, "local": False}
        # Status is not stored: remote_clusters() computes it from the tunnel records when asked.
        rc = {"kind": "remote_cluster", "version": "v3",
              "metadata": {"name": leaf, "labels": {str(k): str(v) for k, v in labels.items()}}, "created": now_iso()}
        try:
            await self.backend.atomic([Op("create", key, ca), Op("create", keys.remote_cluster(leaf), rc)]
                                      + cluster_index.ca_ops(leaf, "host", host_ca) + cluster_index.name_ops(leaf))
        except AlreadyExists:
            # Another handshake committed meanwhile: with this key for another cluster, or with this name.
            if (await self.ca_owner(host_ca) or {}).get("cluster_name") not in (None, leaf):
                raise TrustError("the leaf's host certificate authority is already registered here for another "
                                 "cluster; every cluster needs its own CA keys — check that the leaf's auth "
                                 "service data was not copied from another cluster") from None
            raise AlreadyExists(f'a cluster named "{leaf}" is already registered with the root; remove it there '
                                f"with 'gatectl rm rc/{leaf}' or rename the leaf") from None

    async def remote_clusters(self, name: str | None = None) -> list[dict]:
        """Remote clusters with their status, computed from tunnel presence (auth/presence.py)."""
        if name is not None:
            try:
                items = [(await self.backend.get(keys.remote_cluster(name))).value]
            except NotFound:
                raise NotFound(f'remote_cluster "{name}" not found; list remote clusters with \'gatectl get rc\'') \
                    from None
            presence = await self.svc.presence.of_leaves([name])
        else:
            items = [i.value for i in await self.backend.get_range(keys.REMOTE_CLUSTERS_PREFIX)]
            presence = await self.svc.presence.of_leaves()
        return [remote_cluster_view(rc, presence.get(rc["metadata"]["name"])) for rc in items]

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
                                  await cluster_index.delete_ops(self.backend, name) +
                                  [Op("delete", i.key) for i in await self.backend.get_range(keys.cas_of(name))])
        await self.svc.presence.forget_leaf(name)
        try:
            await self.backend.delete(keys.audit_forwarder(name))  # who forwarded its audit (audit_store.py)
        except NotFound:
            pass
        self.audit.emit("remote_cluster.delete", user=ident.name, name=name)
        log.info("trust: remote cluster %s removed; its tunnels will be dropped", name)

    async def tunnel_heartbeat(self, ident, leaf: str, connected: bool, interval) -> None:
        """A root proxy reports its tunnel to `leaf` (on connect, every heartbeat, on disconnect)."""
        require_kind(ident, ("proxy",), "only proxies report tunnel heartbeats")
        interval = reported_interval(interval)
        if not await self.backend.exists(keys.remote_cluster(leaf)):
            raise NotFound(f'remote_cluster "{leaf}" is not registered; the tunnel will be closed')
        key = keys.tunnel(leaf, ident.name)
        previous = None
        try:
            previous = (await self.backend.get(key)).value
        except NotFound:
            pass
        now = time.time()
        await self.backend.put(key, {"proxy": ident.name, "connected": bool(connected), "interval": interval,
                                     "last_heartbeat": now if connected else (previous or {}).get("last_heartbeat", 0.0)})
        if previous is None or bool(previous.get("connected")) != bool(connected):
            self.audit.emit("tunnel.connect" if connected else "tunnel.disconnect", leaf=leaf, proxy=ident.name)

    async def proxy_heartbeat(self, ident, interval, web_addr: str = "", leaving: bool = False) -> list[str]:
        """A root proxy is alive; `web_addr` is where this auth service reaches its web port (see ask_leaf):
        the API passes the address the proxy called from, with the port it says it listens on. A proxy
        that stops says it is LEAVING: its record goes at once, so the other proxies stop announcing it
        to leaves on their next heartbeat (a proxy that dies is dropped when its record expires)."""
        require_kind(ident, ("proxy",), "only proxies send proxy heartbeats")
        if leaving:
            try:
                await self.backend.delete(keys.proxy(ident.name))
            except NotFound:
                pass
            log.info("proxy %s is leaving; leaves stop dialling it", ident.name)
            return sorted(i.value["name"] for i in await self.backend.get_range(keys.PROXIES_PREFIX))
        interval = reported_interval(interval)
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
        if await self.backend.get_range(keys.cas_of(name)):
            raise TrustError(f'a cluster named "{name}" is already registered here (a leaf of this cluster); a root '
                             f"and a leaf of this cluster cannot share a name — remove it with 'gatectl rm rc/{name}' "
                             f"or check metadata.name")
        if dry_run:
            return True
        answer = await self._handshake(name, spec)
        await self._store_root(res, answer)
        self.audit.emit("trusted_cluster.create", user=ident.name, name=name, web_proxy_addr=spec["web_proxy_addr"],
                        enabled=spec["enabled"], forward_audit=spec.get("forward_audit", False))
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
            # The root's own words, shown to this cluster's admin: one bounded line.
            reason = " ".join(str(exc).split())[:400]
            self.audit.emit("trusted_cluster.create", success=False, name=name, error=reason)
            raise type(exc)(f"the root cluster refused trust: {reason}") from None
        try:
            answer = await self._check_answer(name, spec["web_proxy_addr"], answer)
        except GatehouseError as exc:
            self.audit.emit("trusted_cluster.create", success=False, name=name, error=str(exc))
            raise
        log.debug("trust: handshake with %s succeeded", name)
        return answer

    async def _check_answer(self, name: str, web: str, answer: dict) -> dict:
        """The root's answer, validated: its name, version, two distinct CA keys that no cluster known
        here holds (this cluster's own included) and a host:port tunnel address; the CA lines come
        back canonical. TrustError naming the first problem otherwise."""
        for field in ("cluster_name", "host_ca", "user_ca"):
            if not isinstance(answer.get(field), str) or not answer[field]:
                raise TrustError(f"the root's answer to the handshake has no {field}; is {web} a Gatehouse root proxy?")
        if answer["cluster_name"] != name:
            raise TrustError(f'the root cluster is called "{answer["cluster_name"][:253]}", not "{name}"; set '
                             f'metadata.name: {answer["cluster_name"][:253]}')
        handshake.check_version(str(answer.get("version", "0"))[:64], __version__)
        checked = dict(answer)
        for ca_type in ("host", "user"):
            try:
                checked[f"{ca_type}_ca"] = pki.ca_public_key(answer[f"{ca_type}_ca"])
            except BadParameter as exc:
                raise TrustError(f"the root's {ca_type} certificate authority is not one valid SSH public key "
                                 f"({exc}); refusing trust — is {web} a Gatehouse root proxy?") from None
        if checked["host_ca"] == checked["user_ca"]:
            raise TrustError("the root answered with one key as both its host and its user certificate authority; "
                             "refusing trust — a root cluster has two distinct CA keys")
        for ca_type in ("host", "user"):
            owner = await self.ca_owner(checked[f"{ca_type}_ca"])
            if owner is not None:
                whose = ("this cluster's own" if owner.get("local") or owner.get("cluster_name") == self.cluster_name
                         else f'cluster "{owner.get("cluster_name")}"\'s')
                raise TrustError(f"the root's {ca_type} certificate authority is {whose} {owner.get('type')} "
                                 f"certificate authority; refusing trust — a root must use its own CA keys")
        if answer.get("tunnel_addr") not in (None, ""):
            try:
                checked["tunnel_addr"] = resources.validate_dial_addr(answer["tunnel_addr"],
                                                                      "the root's tunnel_addr")
            except BadParameter as exc:
                raise TrustError(f"{exc}; refusing trust — set spec.tunnel_addr, or check the root's "
                                 f"proxy_service.tunnel_public_addr") from None
        return checked

    async def _store_root(self, res: dict, answer: dict) -> None:
        name, spec = res["metadata"]["name"], res["spec"]
        stored = _without_token(res)
        # Where the root says its tunnel listener is, used while spec.tunnel_addr is left at web_proxy_addr.
        stored["discovered_tunnel_addr"] = str(answer.get("tunnel_addr") or "")
        base = {"cluster_name": name, "active": spec["enabled"], "local": False}
        try:
            await self.backend.atomic([
                Op("create", keys.trusted_cluster(name), stored),
                Op("create", keys.ca(name, "host"), {**base, "type": "host", "public": answer["host_ca"]}),
                Op("create", keys.ca(name, "user"), {**base, "type": "user", "public": answer["user_ca"],
                                                     "role_map": spec["role_map"]}),
            ] + cluster_index.ca_ops(name, "host", answer["host_ca"])
                + cluster_index.ca_ops(name, "user", answer["user_ca"]) + cluster_index.name_ops(name))
        except AlreadyExists:
            raise TrustError(f'the answer of root "{name}" names a cluster or certificate authority this cluster '
                             f"already knows (another trust was created at the same moment?); check 'gatectl get tc' "
                             f"and 'gatectl get rc', then try again") from None

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
            self.audit.emit("trusted_cluster.update", user=ident.name, name=name, role_map=spec["role_map"],
                            forward_audit=spec.get("forward_audit", False))
        if bool(old.get("forward_audit")) != bool(spec.get("forward_audit")):
            log.info("trust: audit forwarding to root cluster %s is now %s", name,
                     "on" if spec.get("forward_audit") else "off")

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
            # Reported on change and every summary interval, by leaf proxies that are themselves live.
            live_proxies = await self.svc.presence.live_proxies()
            live = [a for a in agents if a.get("proxies") and is_live(a.get("updated", 0), a.get("interval", 5.0), now)
                    and a.get("proxy", "") in live_proxies | {""}]
            online = bool(live)
            proxies = sorted({p for a in agents for p in a.get("proxies", [])})
            # Where the live tunnels go (the root may have moved since the handshake).
            dialled = sorted({a["tunnel_addr"] for a in live if a.get("tunnel_addr")})
            view = {k: v for k, v in tc.items() if k != "discovered_tunnel_addr"}
            view["spec"] = {**view["spec"], "heartbeat_mode": view["spec"].get("heartbeat_mode") or "default"}
            view["status"] = {"connection": "online" if online and tc["spec"]["enabled"] else "offline",
                              "tunnels": len(proxies) if online else 0,
                              "tunnel_addr": dialled[0] if len(dialled) == 1 else resources.tunnel_dial_addr(tc)}
            out.append(view)
        return out

    async def delete_trusted_cluster(self, ident, name: str) -> None:
        if not await self.backend.exists(keys.trusted_cluster(name)):
            raise NotFound(f'trusted_cluster "{name}" not found; list them with \'gatectl get tc\'')
        await self.backend.atomic([Op("delete", keys.trusted_cluster(name))] +
                                  await cluster_index.delete_ops(self.backend, name) +
                                  [Op("delete", i.key) for i in await self.backend.get_range(keys.cas_of(name))])
        await self.backend.delete_range(keys.tunnel_agents_of(name))
        self.audit.emit("trusted_cluster.delete", user=ident.name, name=name)
        log.info("trust: removed trust with root cluster %s", name)

    async def tunnel_agent_status(self, ident, root: str, proxies: list[str], interval,
                                  tunnel_addr: str = "") -> None:
        """A leaf proxy reports which root proxies it holds tunnels to, and the address it dials."""
        require_kind(ident, ("proxy",), "only proxies report tunnel status")
        interval = reported_interval(interval)
        proxies = [str(p)[:253] for p in proxies][:MAX_ANNOUNCED_PROXIES]
        await self.backend.put(keys.tunnel_agent(root, ident.name),
                               {"proxies": sorted(proxies), "interval": interval, "updated": time.time(),
                                "tunnel_addr": str(tunnel_addr)[:261], "proxy": ident.name},
                               expires=time.time() + MISSED_HEARTBEATS * interval + 60)


def remote_cluster_view(rc: dict, presence) -> dict:
    """A stored remote_cluster as `gatectl get rc` shows it: labels, and a status from its presence."""
    status = {"connection": presence.connection if presence else "offline",
              "last_heartbeat": now_iso(presence.last) if presence and presence.last else ""}
    if presence and presence.mode:
        status["heartbeat_mode"] = presence.mode
    return {"kind": "remote_cluster", "version": "v3",
            "metadata": {"name": rc["metadata"]["name"], "labels": dict(rc["metadata"].get("labels") or {})},
            "status": status}


def reported_interval(value) -> float:
    """A heartbeat interval a member reports, within wire's bounds; BadParameter otherwise."""
    interval = heartbeat_interval(value)
    if interval is None:
        raise BadParameter(f"the heartbeat interval must be a number of seconds from {MIN_HEARTBEAT_INTERVAL:g} to "
                           f"{MAX_HEARTBEAT_INTERVAL:g}, not {str(value)[:40]!r}; check "
                           f"proxy_service.tunnel_heartbeat_interval on the proxy")
    return interval


def _same_key(stored, public_key: str) -> bool:
    try:
        return pki.ca_public_key(stored) == public_key
    except BadParameter:
        return False


def _without_token(res: dict) -> dict:
    spec = {k: v for k, v in res["spec"].items() if k != "token"}
    return {"kind": res["kind"], "version": res.get("version", "v2"), "metadata": res["metadata"], "spec": spec}
