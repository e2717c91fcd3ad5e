"""Joined members (nodes and proxies): who holds a name, with which keys, and revocation.

Auth alone decides what goes into a member's certificates: its kind and name, the
name qualified with the cluster, the address auth saw it join from, and host names
or addresses the admin approved on the join token. Whatever a member asks for beyond
that is ignored, and only proxy certificates carry the tunnel principal.

A name is held by one identity (one SSH key and one X.509 key) from its join until it
is revoked (`gatectl rm node/NAME`) or its certificates expire unrenewed:
`members/<kind>/<name>` records the holder, and a join for a held name with other keys
is refused. Taking a name over is an admin's decision, not a token holder's: the
member record is what the attack needs and what revocation removes.

Revocation writes `locks/<kind>/<name>` (the revoked keys, until their certificates
expire), part of every member's snapshot, and deletes the member's records. Auth
checks every call of a node or proxy identity against the member record (its key must
be the holder's), so a revoked or superseded certificate is refused at once; a revoked
name joins again only with a token created after the revocation. Renewal re-signs the
same keys with the same principals, so a member keeps its name and its sessions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from .. import pki, resources
from ..backend.base import Op
from ..clock import now_iso, parse_iso
from ..config import certificate_ttl, is_ip
from ..errors import AccessDenied, AlreadyExists, BadParameter, CompareFailed, NotFound
from ..wire import EXT_MEMBER_KIND, MEMBER_KINDS, SERVER_KINDS, TUNNEL_PRINCIPAL
from . import keys
from .authz import Identity, require_admin, require_kind

log = logging.getLogger("gatehouse.auth.members")


def member_principals(kind: str, name: str, cluster: str, addr: str = "", approved=()) -> list[str]:
    """What auth puts into a member's certificates, in order, without duplicates."""
    names = [name, f"{name}.{cluster}"]
    if addr and is_ip(addr):
        names.append(addr)
    names += [p for p in approved if p and p != TUNNEL_PRINCIPAL]
    return list(dict.fromkeys(names))


class MemberRegistry:
    def __init__(self, svc):
        self.svc = svc
        self.backend = svc.backend
        self.audit = svc.audit

    @property
    def cluster_name(self) -> str:
        return self.svc.cluster_name

    @property
    def ttl(self) -> int:
        return certificate_ttl(self.svc.cfg.auth.identity_ttl)

    # ------------------------------------------------------------------ certificates
    async def _sign(self, kind: str, name: str, ssh_public: str, tls_public: str, principals: list[str]) -> dict:
        """The SSH host certificate and X.509 certificate of member KIND/NAME, valid for the identity TTL."""
        host_ca = await self.svc.local_ca("host")
        now = int(time.time())
        ssh_names = list(principals) + ([TUNNEL_PRINCIPAL] if kind == "proxy" else [])
        ssh_cert = pki.sign_ssh_cert(host_ca["private"], ssh_public, cert_type="host", key_id=f"{kind}:{name}",
                                     principals=ssh_names, valid_after=now - 60, valid_before=now + self.ttl,
                                     extensions={EXT_MEMBER_KIND: json.dumps(kind)})
        # Only proxies serve TLS to other members; a node's X.509 certificate is for clients only.
        tls_cert = await self.svc.issue_tls(tls_public, name=name, kind=kind, ttl=self.ttl,
                                            server=kind in SERVER_KINDS,
                                            dns_names=[p for p in principals if not is_ip(p)],
                                            ip_addresses=[p for p in principals if is_ip(p)])
        return {"ssh_cert": ssh_cert, "tls_cert": tls_cert, "expires": now + self.ttl, **await self.svc.ca_bundle()}

    @staticmethod
    def _record(kind: str, name: str, ssh_public: str, tls_public: str, principals: list[str], addr: str,
                token: str, expires: float) -> dict:
        return {"kind": kind, "name": name, "ssh_key": pki.ssh_fingerprint(ssh_public),
                "tls_key": pki.tls_key_fingerprint(tls_public), "principals": principals, "addr": addr,
                "token": token, "joined": now_iso(), "renewed": "", "expires": now_iso(expires)}

    # ------------------------------------------------------------------ issue
    async def issue_local(self, kind: str, name: str, ssh_public: str, tls_public: str,
                          principals: list[str]) -> dict:
        """Identity for a member in the auth process itself: its own config names its addresses."""
        names = member_principals(kind, name, self.cluster_name, approved=principals)
        certs = await self._sign(kind, name, ssh_public, tls_public, names)
        record = self._record(kind, name, ssh_public, tls_public, names, "", "", certs["expires"])
        await self.backend.put(keys.member(kind, name), record, expires=certs["expires"])
        return certs

    async def join(self, token: str, kind: str, name: str, ssh_public: str, tls_public: str,
                   client_addr: str) -> dict:
        """Exchange a join token for the identity of KIND named NAME, if the name is free."""
        grant, token_ops = await self.svc.tokens.check_join(token, kind, name)
        resources.validate_name(name, f"{kind} name")
        await self._check_not_revoked(kind, name, grant)
        names = member_principals(kind, name, self.cluster_name, client_addr, grant.get("principals") or ())
        record_key = keys.member(kind, name)
        try:
            current = (await self.backend.get(record_key)).value
        except NotFound:
            current = None
        certs = await self._sign(kind, name, ssh_public, tls_public, names)
        record = self._record(kind, name, ssh_public, tls_public, names, client_addr, grant["name"], certs["expires"])
        if current is not None:
            if (current["ssh_key"], current["tls_key"]) != (record["ssh_key"], record["tls_key"]):
                raise AccessDenied(_name_held(kind, name, current))
            claim = [Op("put", record_key, record, expires=certs["expires"])]  # the same member asks again
        else:
            claim = [Op("create", record_key, record, expires=certs["expires"]),
                     Op("require_absent", _live_key(kind, name))]  # held by a member that joined before records
        try:
            await self.backend.atomic(claim + token_ops)
        except (AlreadyExists, CompareFailed, NotFound):
            raise await self._lost_race(token, kind, name) from None
        return certs

    async def _check_not_revoked(self, kind: str, name: str, grant: dict) -> None:
        """A revoked name joins again only with a token created after its revocation."""
        try:
            lock = (await self.backend.get(keys.lock(kind, name))).value
        except NotFound:
            return
        if float(grant.get("created_at") or 0) <= float(lock["revoked_at"]):
            raise AccessDenied(f'{kind} "{name}" was revoked at {lock["revoked"]}; it can join again only with a '
                               f"token created since then: 'gatectl tokens add --type={kind}'")

    async def _lost_race(self, token: str, kind: str, name: str) -> AccessDenied:
        """The refusal for a join whose writes failed: someone took the name or used the token meanwhile."""
        try:
            held = (await self.backend.get(keys.member(kind, name))).value
            return AccessDenied(_name_held(kind, name, held))
        except NotFound:
            pass
        if await self.backend.exists(_live_key(kind, name)):
            return AccessDenied(f'{kind} name "{name}" is held by a live {kind}; pick another name '
                                f"(gatehouse.nodename), or revoke that {kind} with 'gatectl rm {kind}/{name}' "
                                f"and join again with a new token")
        try:
            await self.svc.tokens.check_join(token, kind, name)
        except AccessDenied as exc:
            return exc
        return AccessDenied(f"another join for {kind} \"{name}\" was accepted at the same moment; try again")

    # ------------------------------------------------------------------ renew
    async def renew(self, ident: Identity, ssh_public: str, tls_public: str, client_addr: str) -> dict:
        """New certificates for the caller's own keys and principals (members renew at half-life)."""
        require_kind(ident, MEMBER_KINDS, "only nodes and proxies renew their identity")
        tls_key = pki.tls_key_fingerprint(tls_public)
        if tls_key != ident.key:
            raise AccessDenied("a renewal is for the key the member calls with; send the public key of the "
                               "certificate this connection uses")
        key = keys.member(ident.kind, ident.name)
        try:
            item = await self.backend.get(key)
        except NotFound:
            item = None
        if item is not None:
            record = item.value
            if pki.ssh_fingerprint(ssh_public) != record["ssh_key"]:
                raise AccessDenied(f'{ident.kind} "{ident.name}" renews the SSH key it joined with, not another; '
                                   f"join again with a new token to change keys")
            names = list(record["principals"])
        else:
            # Joined before member records existed: the first renewal records its keys.
            names = member_principals(ident.kind, ident.name, self.cluster_name, client_addr)
            record = self._record(ident.kind, ident.name, ssh_public, tls_public, names, client_addr, "", 0)
        certs = await self._sign(ident.kind, ident.name, ssh_public, tls_public, names)
        updated = {**record, "renewed": now_iso(), "expires": now_iso(certs["expires"])}
        op = (Op("cas", key, updated, expires=certs["expires"], revision=item.revision) if item is not None
              else Op("create", key, updated, expires=certs["expires"]))
        try:
            await self.backend.atomic([op])
        except (AlreadyExists, CompareFailed, NotFound):
            raise AccessDenied(f'{ident.kind} "{ident.name}" was revoked or renewed at the same moment; try '
                               f"again, or join again with a new token if it was revoked") from None
        self.audit.emit("member.renew", kind=ident.kind, name=ident.name, addr=client_addr,
                        expires=now_iso(certs["expires"]))
        return certs

    # ------------------------------------------------------------------ checks on every call
    async def check_caller(self, ident: Identity) -> int:
        """Refuse a node or proxy certificate that is revoked, or no longer its name's holder's; the
        revision of the member record it holds (0: not a member kind, or joined before records)."""
        if ident.kind not in MEMBER_KINDS:
            return 0
        try:
            item = await self.backend.get(keys.member(ident.kind, ident.name))
        except NotFound:
            item = None
        if item is not None:
            if item.value["tls_key"] != ident.key:
                raise AccessDenied(_superseded(ident))
            return item.revision
        if await self.backend.exists(keys.lock(ident.kind, ident.name)):
            raise AccessDenied(_superseded(ident))
        # Otherwise a member that joined before member records existed; its first renewal records it.
        return 0

    async def write_as(self, ident: Identity, ops: list[Op]) -> None:
        """Write what a member reports about itself, only while its member record is the one it was
        checked against: a revocation committed after the check is never undone by the write."""
        for _unused in range(3):
            revision = ident.registered if ident.kind in MEMBER_KINDS else 0
            guard = [Op("require_revision", keys.member(ident.kind, ident.name), revision=revision)] if revision else []
            try:
                await self.backend.atomic(guard + ops)
                return
            except (CompareFailed, NotFound):
                if not guard:
                    raise
            # The record changed meanwhile (renewed, or revoked): check the caller again.
            ident = dataclasses.replace(ident, registered=await self.check_caller(ident))
        raise AccessDenied(_superseded(ident))

    # ------------------------------------------------------------------ revoke
    async def revoke(self, ident: Identity, kind: str, name: str) -> str:
        """`gatectl rm node/NAME`: the member's certificates are refused from now on; answers what was done."""
        require_admin(ident, f"remove {kind}s")
        if kind not in MEMBER_KINDS:
            raise BadParameter(f"{kind} is not a kind of cluster member; remove nodes or proxies")
        resources.validate_name(name, f"{kind} name")
        member_key, lock_key = keys.member(kind, name), keys.lock(kind, name)
        try:
            record = (await self.backend.get(member_key)).value
        except NotFound:
            record = None
        live = await self.backend.exists(_live_key(kind, name))
        if record is None and not live:
            hint = "'gate ls'" if kind == "node" else "'gatectl get proxies'"
            raise NotFound(f'{kind} "{name}" not found; list what exists with {hint}')
        try:
            lock = (await self.backend.get(lock_key)).value
        except NotFound:
            lock = {"kind": kind, "name": name, "ssh_keys": [], "tls_keys": []}
        now = time.time()
        expires = max(now + self.ttl, parse_iso(lock["until"]) if lock.get("until") else 0)
        if record is not None:
            expires = max(expires, parse_iso(record["expires"]))
            lock["ssh_keys"] = sorted({*lock["ssh_keys"], record["ssh_key"]})
            lock["tls_keys"] = sorted({*lock["tls_keys"], record["tls_key"]})
        lock.update({"revoked_at": now, "revoked": now_iso(now), "until": now_iso(expires),
                     "token": (record or {}).get("token", "")})
        # One transaction: from the moment the lock exists, the member record that admitted the keys is gone.
        await self.backend.atomic([Op("put", lock_key, lock, expires=expires)] +
                                  ([Op("delete", member_key)] if record is not None else []))
        await self._forget_presence(kind, name)
        self.audit.emit("member.revoke", user=ident.name, kind=kind, name=name, token_name=lock["token"])
        log.info("revoked %s %s: its certificates are refused from now on", kind, name)
        return await self._revoked_message(kind, name, lock["token"])

    async def _forget_presence(self, kind: str, name: str) -> None:
        """Drop what the member reported about itself, so routing and relays stop using it now."""
        try:
            await self.backend.delete(_live_key(kind, name))
        except NotFound:
            pass
        if kind == "proxy":
            await self.svc.presence.forget_proxy(name)

    async def _revoked_message(self, kind: str, name: str, token: str) -> str:
        message = (f'{kind} "{name}" has been revoked: its certificates are refused from now on, and it can join '
                   f"again only with a token created from now on")
        if token and token != "static" and await self.backend.exists(keys.token(token)):
            message += (f'; it joined with token "{token}", which still admits other members until it expires '
                        f"(remove it with 'gatectl tokens rm {token}')")
        return message

    # ------------------------------------------------------------------ reading
    async def list(self, kind: str) -> list[dict]:
        return [_member_resource(i.value) for i in await self.backend.get_range(keys.members_of(kind))]

    async def locks(self) -> list[dict]:
        """Revoked member keys, for members' snapshots (no secrets: fingerprints of public keys)."""
        from .snapshots import public_lock
        return [public_lock(i.value) for i in await self.backend.get_range(keys.LOCKS_PREFIX)]


def _live_key(kind: str, name: str) -> str:
    """The record a live member of KIND keeps fresh by heartbeats."""
    return keys.node(name) if kind == "node" else keys.proxy(name)


def _name_held(kind: str, name: str, record: dict) -> str:
    since = record.get("joined", "")[:19].replace("T", " ")
    where = f" from {record['addr']}" if record.get("addr") else ""
    return (f'{kind} name "{name}" is already held by a {kind} that joined at {since} UTC{where}; pick another '
            f"name (gatehouse.nodename), or if that {kind} is gone for good, revoke it with 'gatectl rm "
            f"{kind}/{name}' and join again with a new token")


def _superseded(ident: Identity) -> str:
    return (f'the {ident.kind} identity "{ident.name}" has been revoked (or replaced by a newer join); this '
            f"certificate is refused — join again with a new token")


def _member_resource(record: dict) -> dict:
    return {"kind": record["kind"], "version": "v2", "metadata": {"name": record["name"]},
            "spec": {"principals": record["principals"], "addr": record["addr"], "ssh_key": record["ssh_key"],
                     "tls_key": record["tls_key"]},
            "status": {"joined": record["joined"], "renewed": record["renewed"], "expires": record["expires"]}}
