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
from ..resources import MIN_TOKEN_LENGTH, validate_name
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
    return {"kind": "token", "version": "v2",
            "metadata": {"name": record["name"], "expires": record["expires"]},
            "spec": {"roles": record["roles"], "labels": record["labels"]}}


class TokenStore:
    def __init__(self, backend, audit, static_entries):
        self.backend = backend
        self.audit = audit
        self.static = parse_static_tokens(static_entries)

    async def add(self, ident: Identity, roles, ttl: int, labels: dict | None = None, name: str = "",
                  value: str = "") -> tuple[str, dict]:
        """Create a token; returns (secret, resource). The secret is random unless VALUE is given."""
        require_admin(ident, "create join tokens")
        roles = token_types(roles)
        if ttl <= 0:
            raise BadParameter("token TTL must be positive, e.g. --ttl=15m")
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
        await self.backend.put(keys.token(name), record, expires=expires)
        self.audit.emit("token.create", user=ident.name, token_name=name, roles=roles, expires=record["expires"])
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
