"""Join tokens: static ones from the config, dynamic ones in the backend (hashed, expiring).

A token's secret is shown once, at creation; the backend keeps its SHA-256 under a
name. Every lookup compares all stored hashes in constant time, with no early exit.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from ..clock import now_iso
from ..errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from ..resources import MIN_TOKEN_LENGTH, validate_leaf_name, validate_name
from ..wire import TOKEN_TYPES
from . import keys
from .authz import Identity, require_admin


def token_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def parse_static_tokens(entries) -> list[tuple[str, str]]:
    """``auth_service.tokens`` entries (``TYPE:SECRET``, checked by config.py) → (type, hash)."""
    out = []
    for entry in entries:
        kind, _, secret = str(entry).partition(":")
        out.append((kind, token_hash(secret)))
    return out


def token_types(roles) -> list[str]:
    """``"node,proxy"`` or a list → the token types; BadParameter naming the valid ones."""
    roles = [roles] if isinstance(roles, str) else list(roles or [])
    roles = [r.strip() for part in roles for r in str(part).split(",") if r.strip()]
    bad = [r for r in roles if r not in TOKEN_TYPES]
    if not roles or bad:
        raise BadParameter(f"token type {', '.join(bad) or '(none)'} is not valid; use --type with "
                           f"{', '.join(TOKEN_TYPES)}")
    return roles


def token_resource(record: dict) -> dict:
    res = {"kind": "token", "version": "v2",
           "metadata": {"name": record["name"], "expires": record["expires"]},
           "spec": {"roles": record["roles"], "labels": record["labels"]}}
    if record.get("leaf_name"):
        res["spec"]["leaf_name"] = record["leaf_name"]
    return res


# -- the leaf name a trusted_cluster token admits (kept apart from node/proxy token rules)
def check_leaf_name_binding(roles: list[str], leaf_name: str) -> str:
    """The leaf name a new token binds (`--leaf-name`), checked; "" when it binds none."""
    if not leaf_name:
        return ""
    if roles != ["trusted_cluster"]:
        raise BadParameter("--leaf-name applies to trusted_cluster tokens only; create the token with "
                           "--type=trusted_cluster alone")
    return validate_leaf_name(leaf_name, "--leaf-name")


def check_token_admits_leaf(record: dict, leaf: str) -> None:
    """A trusted_cluster token bound to a leaf name admits a handshake under that name only."""
    bound = str(record.get("leaf_name") or "")
    if bound and bound.lower() != leaf.lower():
        raise AccessDenied(f'this trusted_cluster join token admits only the leaf cluster "{bound}", not "{leaf}"; '
                           f"ask the root's admin for a token for \"{leaf}\" or name the leaf \"{bound}\"")


class TokenStore:
    def __init__(self, backend, audit, static_entries):
        self.backend = backend
        self.audit = audit
        self.static = parse_static_tokens(static_entries)

    async def add(self, ident: Identity, roles, ttl: int, labels: dict | None = None, name: str = "",
                  value: str = "", leaf_name: str = "") -> tuple[str, dict]:
        """Create a token; returns (secret, resource). The secret is random unless VALUE is given."""
        require_admin(ident, "create join tokens")
        roles = token_types(roles)
        if ttl <= 0:
            raise BadParameter("token TTL must be positive, e.g. --ttl=15m")
        leaf_name = check_leaf_name_binding(roles, leaf_name)
        value = value or secrets.token_hex(16)
        if len(value) < MIN_TOKEN_LENGTH:
            raise BadParameter("a join token must be at least 16 characters long; omit it to get a random one")
        digest = token_hash(value)
        name = name or digest[:16]
        validate_name(name, "token name")
        for item in await self.backend.get_range(keys.TOKENS_PREFIX):
            if hmac.compare_digest(item.value["hash"], digest) and item.value["name"] != name:
                raise AlreadyExists("that token value is already in use; pick another value or omit it")
        expires = time.time() + ttl
        record = {"name": name, "hash": digest, "roles": roles, "labels": dict(labels or {}),
                  "expires": now_iso(expires), "created": now_iso()}
        if leaf_name:
            record["leaf_name"] = leaf_name
        await self.backend.put(keys.token(name), record, expires=expires)
        self.audit.emit("token.create", user=ident.name, token_name=name, roles=roles, expires=record["expires"],
                        **({"leaf_name": leaf_name} if leaf_name else {}))
        return value, token_resource(record)

    async def list(self, ident: Identity) -> list[dict]:
        require_admin(ident, "list join tokens")
        return [token_resource(i.value) for i in await self.backend.get_range(keys.TOKENS_PREFIX)]

    async def delete(self, ident: Identity, name_or_value: str) -> str:
        require_admin(ident, "delete join tokens")
        record = await self._find(name_or_value, by_name=True)
        if record is None:
            raise NotFound("token not found; list tokens with 'gatectl tokens ls'")
        await self.backend.delete(keys.token(record["name"]))
        self.audit.emit("token.delete", user=ident.name, token_name=record["name"])
        return record["name"]

    async def _find(self, value: str, by_name: bool = False) -> dict | None:
        digest = token_hash(value)
        found = None
        for item in await self.backend.get_range(keys.TOKENS_PREFIX):
            # Compare every stored hash in constant time; no early exit on a match.
            if hmac.compare_digest(item.value["hash"], digest) or (by_name and item.value["name"] == value):
                found = item.value
        return found

    async def check(self, value: str, role: str) -> dict:
        """The token record that admits `role`, or a clear AccessDenied."""
        digest = token_hash(value or "")
        static_match = False
        for kind, stored in self.static:
            if hmac.compare_digest(stored, digest) and kind == role:
                static_match = True
        if static_match:
            return {"name": "static", "roles": [role], "labels": {}, "expires": ""}
        record = await self._find(value or "")
        if record is None:
            where = " on the root" if role == "trusted_cluster" else ""
            raise AccessDenied(f"the {role} join token is invalid or has expired; create a new one{where} with "
                               f"'gatectl tokens add --type={role}'")
        if role not in record["roles"]:
            raise AccessDenied(f"the join token is for {', '.join(record['roles'])}, not {role}; create one with "
                               f"'gatectl tokens add --type={role}'")
        return record
