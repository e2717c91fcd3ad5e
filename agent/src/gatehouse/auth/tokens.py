"""Join tokens: static ones from the config, dynamic ones in the backend (hashed, expiring).

A token's secret is shown once, at creation; the backend keeps its SHA-256 under a
name. Every lookup compares all stored hashes in constant time, with no early exit.

Node and proxy tokens can say more than their type (`gatectl tokens add --bind-name`,
`--single-use`, `--principals`): the one member name they admit, that they admit one
process only (its proxy and node identities, each once; the use is recorded in the
backend in the same transaction that claims the name, so two concurrent joins cannot
both use it), and the extra host names or addresses the admin approves for the
certificates of the members they admit.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from ..backend.base import Op
from ..clock import now_iso
from ..config import is_ip
from ..errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from ..resources import MIN_TOKEN_LENGTH, validate_leaf_name, validate_name
from ..wire import MEMBER_KINDS, TOKEN_TYPES, TUNNEL_PRINCIPAL
from . import keys
from .authz import Identity, require_admin

MAX_PRINCIPALS = 32
_HOST_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def token_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def parse_static_tokens(entries) -> list[tuple[str, str]]:
    """``auth_service.tokens`` entries (``TYPE:SECRET``, checked by config.py) → (type, hash)."""
    out = []
    for entry in entries:
        kind, _unused, secret = str(entry).partition(":")
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


def validate_principals(values) -> list[str]:
    """Host names or IP addresses an admin approves for the certificates of a token's members.

    Never the tunnel principal, a wildcard or a reserved ``.invalid`` name (the names
    Gatehouse uses to recognise auth and proxies); at most MAX_PRINCIPALS of them.
    """
    if isinstance(values, str):
        values = values.split(",")
    if not isinstance(values, (list, tuple)):
        raise BadParameter("principals must be a list of host names or IP addresses")
    out = []
    for value in values:
        text = str(value).strip()
        if not text:
            continue
        if text == TUNNEL_PRINCIPAL or text.lower().endswith(".invalid") or not (is_ip(text) or _HOST_RE.fullmatch(text)):
            raise BadParameter(f'"{text[:80]}" cannot be approved as a member principal; list host names or IP '
                               f"addresses, e.g. --principals=gate.example.com,10.0.0.5")
        out.append(text)
    if len(set(out)) > MAX_PRINCIPALS:
        raise BadParameter(f"a token approves at most {MAX_PRINCIPALS} principals, not {len(set(out))}; "
                           f"use fewer --principals")
    return sorted(set(out))


def token_resource(record: dict) -> dict:
    spec = {"roles": record["roles"], "labels": record["labels"]}
    # What only some tokens can say is shown when set, so older resources compare unchanged.
    for field in ("leaf_name", "bind_name", "single_use", "principals"):
        if record.get(field):
            spec[field] = record[field]
    res = {"kind": "token", "version": "v2",
           "metadata": {"name": record["name"], "expires": record["expires"]}, "spec": spec}
    if record.get("used"):
        res["status"] = {"used": record["used"]}
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
                  value: str = "", *, leaf_name: str = "", bind_name: str = "", single_use: bool = False,
                  principals=()) -> tuple[str, dict]:
        """Create a token; returns (secret, resource). The secret is random unless VALUE is given."""
        require_admin(ident, "create join tokens")
        roles = token_types(roles)
        if ttl <= 0:
            raise BadParameter("token TTL must be positive, e.g. --ttl=15m")
        leaf_name = check_leaf_name_binding(roles, leaf_name)
        principals = validate_principals(principals or [])
        if (bind_name or single_use or principals) and not set(roles) <= set(MEMBER_KINDS):
            raise BadParameter("--bind-name, --single-use and --principals apply to node and proxy tokens only; "
                               "create the trusted_cluster token without them")
        if bind_name:
            validate_name(bind_name, "--bind-name")
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
                  "expires": now_iso(expires), "created": now_iso(), "created_at": time.time()}
        extra = {"leaf_name": leaf_name, "bind_name": bind_name, "single_use": bool(single_use),
                 "principals": principals}
        record.update({k: v for k, v in extra.items() if v})
        await self.backend.put(keys.token(name), record, expires=expires)
        self.audit.emit("token.create", user=ident.name, token_name=name, roles=roles, expires=record["expires"],
                        **{k: v for k, v in extra.items() if v})
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
        item = await self._find_item(value, by_name)
        return item.value if item is not None else None

    async def _find_item(self, value: str, by_name: bool = False):
        digest = token_hash(value)
        found = None
        for item in await self.backend.get_range(keys.TOKENS_PREFIX):
            # Compare every stored hash in constant time; no early exit on a match.
            if hmac.compare_digest(item.value["hash"], digest) or (by_name and item.value["name"] == value):
                found = item
        return found

    async def check(self, value: str, role: str) -> dict:
        """The token record that admits `role`, or a clear AccessDenied."""
        return (await self._check_item(value, role))[0]

    async def _check_item(self, value: str, role: str) -> tuple[dict, object]:
        """(record, stored item or None for a static token) of the token that admits ROLE."""
        digest = token_hash(value or "")
        static_match = False
        for kind, stored in self.static:
            if hmac.compare_digest(stored, digest) and kind == role:
                static_match = True
        if static_match:
            return {"name": "static", "roles": [role], "labels": {}, "expires": ""}, None
        item = await self._find_item(value or "")
        record = item.value if item is not None else None
        if record is None:
            where = " on the root" if role == "trusted_cluster" else ""
            raise AccessDenied(f"the {role} join token is invalid or has expired; create a new one{where} with "
                               f"'gatectl tokens add --type={role}'")
        if role not in record["roles"]:
            raise AccessDenied(f"the join token is for {', '.join(record['roles'])}, not {role}; create one with "
                               f"'gatectl tokens add --type={role}'")
        if role in (record.get("used") or {}):
            raise AccessDenied(f'the join token "{record["name"]}" is single-use and already admitted {role} '
                               f'"{record["used"][role]["name"]}"; create a new one with \'gatectl tokens add '
                               f"--type={role} --single-use'")
        return record, item

    async def check_join(self, value: str, role: str, name: str) -> tuple[dict, list[Op]]:
        """The token record that admits ROLE named NAME, and the writes that record its use.

        A name-bound token admits only its name; a single-use token admits each of its
        types once, all under one name (the proxy and node identities of one process),
        and its use is a compare-and-swap on the token record, committed together with
        the member's registration, so concurrent joins cannot both use it.
        """
        record, item = await self._check_item(value, role)
        bound = record.get("bind_name") or next((u["name"] for u in (record.get("used") or {}).values()), "")
        if bound and bound != name:
            raise AccessDenied(f'the join token "{record["name"]}" admits only the member named "{bound}", not '
                               f'"{name}"; set gatehouse.nodename: {bound}, or create a token for "{name}" with '
                               f"'gatectl tokens add --type={role} --bind-name={name}'")
        if not record.get("single_use") or item is None:
            return record, []
        used = {**(record.get("used") or {}), role: {"name": name, "at": now_iso()}}
        return record, [Op("cas", item.key, {**record, "used": used}, expires=item.expires, revision=item.revision)]
