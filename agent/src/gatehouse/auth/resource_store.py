"""`gatectl get / create / rm` for every kind, and the dry run the Ansible modules compare with.

One admin check in front of every write; each kind's rules (roles must exist, trust
needs a handshake, tokens are hashed, a remote cluster takes only its labels) stay
with the code that owns that kind. A dry run validates and checks exactly as the
write would, then answers with the normalised resource, what is stored now, and
whether the write would change anything (`resources.same`).
"""

from __future__ import annotations

import hmac
import time

from .. import resources
from ..clock import parse_iso
from ..errors import AlreadyExists, BadParameter, NotFound
from ..wire import MEMBER_KINDS
from . import keys
from .authz import Identity, require_admin

#: Kinds whose events trust.py and tokens.py write themselves, with more detail.
_SELF_AUDITED = ("trusted_cluster", "remote_cluster", "token")
DEFAULT_TOKEN_TTL = 30 * 60
#: Kinds stored with their secret fields as written (a token keeps a hash, a trusted cluster none).
_STORED_SECRETS = ("oidc",)


def not_found(kind: str, name: str | None):
    """[] when listing everything; NotFound naming where to look when NAME was asked for."""
    if name is None:
        return []
    hint = {"token": "'gatectl tokens ls'", "node": "'gate ls'"}.get(kind, f"'gatectl get {kind}'")
    raise NotFound(f'{kind} "{name}" not found; list what exists with {hint}')


class ResourceStore:
    def __init__(self, svc):
        self.svc = svc
        self.backend = svc.backend
        self.audit = svc.audit

    # ------------------------------------------------------------------ read
    async def get(self, ident: Identity, kind: str, name: str | None = None, *,
                  with_secrets: bool = False) -> list[dict]:
        """Resources as stored; secret fields (an oidc connector's client_secret) only WITH_SECRETS."""
        kind = resources.canonical_kind(kind)
        if kind == "token":
            items = await self.svc.tokens.list(ident)
            return [t for t in items if name is None or t["metadata"]["name"] == name] or not_found(kind, name)
        if kind == "cert_authority":
            require_admin(ident, "read certificate authorities")
            cas = [_ca_resource(c) for c in await self.svc.cert_authorities()]
            return [c for c in cas if name is None or c["metadata"]["name"] == name] or not_found(kind, name)
        if kind == "node":
            nodes = await self.svc.list_nodes(ident)
            return [n for n in nodes if name is None or n["metadata"]["name"] == name] or not_found(kind, name)
        require_admin(ident, f"read {kind} resources")
        if kind == "proxy":
            proxies = await self.svc.members.list("proxy")
            return [p for p in proxies if name is None or p["metadata"]["name"] == name] or not_found(kind, name)
        if kind == "remote_cluster":
            return await self.svc.trust.remote_clusters(name)
        if kind == "trusted_cluster":
            return await self.svc.trust.trusted_clusters(name)
        if name is not None:
            try:
                items = [(await self.backend.get(keys.resource(kind, name))).value]
            except NotFound:
                not_found(kind, name)
        else:
            items = [i.value for i in await self.backend.get_range(keys.kind_prefix(kind))]
        return [resources.redact(i, with_secrets=with_secrets) for i in items]

    async def _current(self, ident: Identity, kind: str, name: str) -> dict | None:
        """What is stored now under KIND/NAME, as `gatectl get` shows it without its status; None if absent."""
        try:
            found = await self.get(ident, kind, name)
        except NotFound:
            return None
        current = resources.redact(found[0])
        current.pop("status", None)
        return current

    # ------------------------------------------------------------------ write
    async def put(self, ident: Identity, resource: dict, force: bool = False, dry_run: bool = False) -> dict:
        """Create (or with force, replace) a resource: {"resource", "created"}; a dry run adds
        {"current", "changed"} and writes nothing."""
        require_admin(ident, "create resources")
        res = resources.validate(resource)
        kind, name = res["kind"], res["metadata"]["name"]
        handler = getattr(self, f"_put_{kind}")
        current = await self._current(ident, kind, name) if dry_run else None
        created = await handler(ident, res, force, dry_run)
        shown = resources.redact(res)
        if dry_run:
            secret_changed = current is not None and await self._secret_changed(kind, name, res)
            return {"resource": shown, "created": created, "current": current, "secret_changed": secret_changed,
                    "changed": created or secret_changed or not resources.same(shown, current)}
        if kind not in _SELF_AUDITED:
            self.audit.emit(f"{kind}.{'create' if created else 'update'}", user=ident.name, name=name)
        return {"resource": shown, "created": created}

    async def _secret_changed(self, kind: str, name: str, res: dict) -> bool:
        """Whether a write would change a secret field that the dry run's answer leaves out."""
        if kind not in _STORED_SECRETS:
            return False
        fields = resources.SECRET_FIELDS[kind]
        try:
            stored = (await self.backend.get(keys.resource(kind, name))).value
        except NotFound:
            return False
        return not all(hmac.compare_digest(str(stored["spec"].get(f, "")).encode(),
                                           str(res["spec"].get(f, "")).encode()) for f in fields)

    async def _put_simple(self, res: dict, force: bool, dry_run: bool) -> bool:
        key = keys.resource(res["kind"], res["metadata"]["name"])
        exists = await self.backend.exists(key)
        if exists and not force:
            raise AlreadyExists(f'{res["kind"]} "{res["metadata"]["name"]}" already exists; use '
                                f"'gatectl create -f' to overwrite it")
        if not dry_run:
            if force:
                await self.backend.put(key, res)
            else:
                try:
                    await self.backend.create(key, res)
                except AlreadyExists:  # created meanwhile by someone else
                    raise AlreadyExists(f'{res["kind"]} "{res["metadata"]["name"]}" already exists; use '
                                        f"'gatectl create -f' to overwrite it") from None
        return not exists

    async def _put_role(self, ident, res, force, dry_run) -> bool:
        return await self._put_simple(res, force, dry_run)

    async def _put_user(self, ident, res, force, dry_run) -> bool:
        await self._require_roles(res["spec"]["roles"])
        return await self._put_simple(res, force, dry_run)

    async def _require_roles(self, names: list[str], who: str = "") -> None:
        existing = {keys.name_of(i.key) for i in await self.backend.get_range(keys.ROLES_PREFIX)}
        missing = list(dict.fromkeys(n for n in names if n not in existing))
        if missing:
            raise BadParameter(f"{who}role {', '.join(repr(m) for m in missing)} does not exist; create it first with "
                               f"'gatectl create role.yaml'")

    async def _put_oidc(self, ident, res, force, dry_run) -> bool:
        await self._require_roles([r for e in res["spec"]["claims_to_roles"] for r in e["roles"] if "$" not in r],
                                  f'oidc connector "{res["metadata"]["name"]}": ')
        return await self._put_simple(res, force, dry_run)

    async def _put_trusted_cluster(self, ident, res, force, dry_run) -> bool:
        return await self.svc.trust.put_trusted_cluster(ident, res, force, dry_run)

    async def _put_remote_cluster(self, ident, res, force, dry_run) -> bool:
        """A remote cluster exists once its leaf joins; a file changes only its labels."""
        await self.svc.trust.set_labels(ident, res["metadata"]["name"], res["metadata"]["labels"], dry_run)
        return False

    async def _put_token(self, ident, res, force, dry_run) -> bool:
        """A token from a file names its own secret (spec.token) and expiry (metadata.expires, else 30m)."""
        name, spec = res["metadata"]["name"], res["spec"]
        if not spec.get("token"):
            raise BadParameter(f'token "{name}": spec.token is missing; put the secret in the file, or create a '
                               f"token with a random secret with 'gatectl tokens add'")
        ttl = DEFAULT_TOKEN_TTL
        if res["metadata"].get("expires"):
            ttl = int(parse_iso(res["metadata"]["expires"]) - time.time())
            if ttl <= 0:
                raise BadParameter(f'token "{name}": metadata.expires is in the past; set a time in the future')
        exists = await self.backend.exists(keys.token(name))
        if exists and not force:
            raise AlreadyExists(f'token "{name}" already exists; use \'gatectl create -f\' to replace it')
        if not dry_run:
            await self.svc.tokens.add(ident, spec["roles"], ttl, spec["labels"], name=name, value=spec["token"],
                                      leaf_name=spec.get("leaf_name", ""))
        return not exists

    # ------------------------------------------------------------------ delete
    async def delete(self, ident: Identity, kind: str, name: str) -> str | None:
        """Remove KIND/NAME; for a node or proxy, revoke its identity (the answer says what that means)."""
        require_admin(ident, "delete resources")
        kind = resources.canonical_kind(kind)
        if kind in MEMBER_KINDS:
            return await self.svc.members.revoke(ident, kind, name)
        if kind == "token":
            await self.svc.tokens.delete(ident, name)
        elif kind == "trusted_cluster":
            await self.svc.trust.delete_trusted_cluster(ident, name)
        elif kind == "remote_cluster":
            await self.svc.trust.delete_remote_cluster(ident, name)
        elif kind in ("user", "role", "oidc"):
            await self._delete_simple(kind, name)
            self.audit.emit(f"{kind}.delete", user=ident.name, name=name)
        else:
            raise BadParameter(f"{kind} resources cannot be removed with 'gatectl rm'")

    async def _delete_simple(self, kind: str, name: str) -> None:
        if kind == "role":
            users = [i.value["metadata"]["name"] for i in await self.backend.get_range(keys.USERS_PREFIX)
                     if name in i.value["spec"]["roles"]]
            if users:
                raise BadParameter(f'role "{name}" is still assigned to {", ".join(users)}; remove it from them first')
        try:
            await self.backend.delete(keys.resource(kind, name))
        except NotFound:
            not_found(kind, name)
        if kind == "user" and await self.backend.exists(keys.password(name)):
            await self.backend.delete(keys.password(name))


def _ca_resource(ca: dict) -> dict:
    return {"kind": "cert_authority", "version": "v2",
            "metadata": {"name": f'{ca["cluster_name"]}/{ca["type"]}'},
            "spec": {"type": ca["type"], "cluster_name": ca["cluster_name"], "active": ca["active"],
                     "active_keys": [ca["public"]], "fingerprint": ca["fingerprint"], "role_map": ca["role_map"]}}
