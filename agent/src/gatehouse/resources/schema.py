"""Resource kinds: what each kind may hold, and its normalised shape.

Operators write resources as YAML (``gatectl create FILE``, see ``io.py``) or Ansible
passes them as dicts; both go through :func:`validate`, which returns a normalised
deep copy in which every key the kind defines is present, lists are lists, label
values are lists and durations are whole seconds. Normalising twice gives the same
result, so two normalised resources can be compared key by key (the server-side
dry run the Ansible modules use relies on this).

Every problem raises :class:`~gatehouse.errors.BadParameter` with one sentence that
names the resource, the field path and the fix, for example::

    role "dev": unknown field "spec.allow.login"; did you mean "logins"?

Kinds and their normalised shapes:

* ``role`` (v1..v7, default v5) — ``metadata {name, description, labels}``,
  ``spec {options, allow, deny}``; ``allow``/``deny`` each hold ``logins``,
  ``node_labels``, ``cluster_labels``, ``kubernetes_groups``, ``kubernetes_users``,
  ``db_users`` and ``db_names``.
* ``user`` (v2) — ``spec {roles, traits}``; never a password.
* ``token`` (v2) — ``metadata {name, expires?}``, ``spec {roles, labels, token?}``.
* ``trusted_cluster`` (v1, v2; default v2) — ``spec {enabled, token, tunnel_addr,
  web_proxy_addr, role_map, heartbeat_mode, forward_audit}``; ``tunnel_addr`` defaults to ``web_proxy_addr``,
  which means "dial where the root says its tunnel listener is" (:func:`tunnel_dial_addr`);
  ``heartbeat_mode`` is ``default`` or ``low_bandwidth`` (``wire.HEARTBEAT_TIMING``).
* ``remote_cluster`` (v3) — ``metadata {name, labels}``, ``status {connection,
  last_heartbeat}``; a file can change only its labels.
* ``oidc`` (v2, v3; default v3) — an OpenID Connect single sign-on connector:
  ``spec {issuer_url, client_id, client_secret, redirect_url, scope, claims_to_roles,
  username_claim}``; ``scope`` always holds ``openid``; ``client_secret`` is a secret
  (SECRET_FIELDS), shown only with ``--with-secrets``.
* ``node``, ``cert_authority`` — shown by ``gatectl get``, never created from a file.
"""

from __future__ import annotations

import copy
import datetime as _dt
import difflib
import re
from typing import Any, NoReturn
from urllib.parse import urlsplit

from ..durations import describe, parse_duration, parse_ttl
from ..errors import BadParameter
from ..wire import HEARTBEAT_MODES, OIDC_CALLBACK_PATH, TOKEN_TYPES

# --------------------------------------------------------------------------- kinds
KINDS = ("role", "user", "token", "trusted_cluster", "remote_cluster", "oidc", "node", "cert_authority", "proxy")
#: Kinds the API shows but never takes from a file (remote_cluster takes only its labels).
READ_ONLY_KINDS = ("node", "cert_authority", "proxy")

KIND_ALIASES = {
    "roles": "role",
    "users": "user",
    "tokens": "token",
    "tc": "trusted_cluster", "trusted_clusters": "trusted_cluster",
    "rc": "remote_cluster", "remote_clusters": "remote_cluster",
    "nodes": "node",
    "proxies": "proxy",
    "ca": "cert_authority", "cas": "cert_authority", "cert_authorities": "cert_authority",
    "oidc_connector": "oidc", "oidc_connectors": "oidc",
}

VERSIONS = {
    "role": ("v1", "v2", "v3", "v4", "v5", "v6", "v7"),
    "user": ("v2",),
    "token": ("v2",),
    "trusted_cluster": ("v1", "v2"),
    "remote_cluster": ("v3",),
    "oidc": ("v2", "v3"),
    "node": ("v2",),
    "cert_authority": ("v2",),
    "proxy": ("v2",),
}
DEFAULT_VERSIONS = {"role": "v5", "user": "v2", "token": "v2", "trusted_cluster": "v2",
                    "remote_cluster": "v3", "oidc": "v3", "node": "v2", "cert_authority": "v2", "proxy": "v2"}

CA_TYPES = ("user", "host", "tls")
CONNECTION_STATES = ("online", "offline")
DEFAULT_MAX_SESSION_TTL = 12 * 3600
MIN_TOKEN_LENGTH = 16

# Fields that hold secrets, per kind: left out of rendered output unless asked for.
SECRET_FIELDS = {"trusted_cluster": ("token",), "token": ("token",), "oidc": ("client_secret",),
                 "cert_authority": ("private", "private_key", "private_keys")}

_ROLE_OPTION_KEYS = ("max_session_ttl", "permit_pty", "permit_port_forwarding",
                     "permit_agent_forwarding", "permit_x11_forwarding", "client_idle_timeout",
                     "record_session", "recording_failure", "audit")
_ROLE_BOOL_DEFAULTS = {"permit_pty": True, "permit_port_forwarding": True,
                       "permit_agent_forwarding": True, "permit_x11_forwarding": False,
                       "record_session": True}
#: Role options that take one of a few words, and their defaults (docs/audit.md): what a node does
#: when a session it must record cannot be written, and whether the role may read the audit log and
#: every recording (without it a user reads only recordings of their own sessions).
RECORDING_FAILURE_POLICIES = ("fail_open", "fail_closed")
AUDIT_ACCESS = ("none", "read")
_ROLE_WORD_OPTIONS = {"recording_failure": RECORDING_FAILURE_POLICIES, "audit": AUDIT_ACCESS}
_CONDITION_LISTS = ("logins", "kubernetes_groups", "kubernetes_users", "db_users", "db_names")
_CONDITION_SELECTORS = ("node_labels", "cluster_labels")
_CONDITION_KEYS = ("logins", "node_labels", "cluster_labels", "kubernetes_groups",
                   "kubernetes_users", "db_users", "db_names")

# Names other tools of this kind use for fields Gatehouse spells differently.
_RENAMED_FIELDS = {"forward_agent": "permit_agent_forwarding", "port_forwarding": "permit_port_forwarding",
                   "x11_forwarding": "permit_x11_forwarding", "login": "logins", "role": "roles",
                   "labels": "node_labels", "trait": "traits", "proxy_addr": "web_proxy_addr",
                   "web_proxy": "web_proxy_addr", "tunnel": "tunnel_addr", "rolemap": "role_map"}
# Role fields other tools know that Gatehouse deliberately does not implement.
_UNSUPPORTED_ROLE_FIELDS = frozenset({
    "rules", "app_labels", "db_labels", "kubernetes_labels", "kubernetes_resources",
    "windows_desktop_labels", "windows_desktop_logins", "impersonate", "request", "review_requests",
    "join_sessions", "host_groups", "host_sudoers", "aws_role_arns", "node_labels_expression",
    "cert_format", "enhanced_recording", "disconnect_expired_cert",
    "ssh_file_copy", "create_host_user", "require_session_mfa", "max_sessions", "pin_source_ip",
    "desktop_clipboard", "desktop_directory_sharing", "lock", "max_connections",
})

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,252}")
_NAME_RULE = "use 1-253 letters, digits, '.', '-' or '_', starting with a letter or digit"
_USER_NAME_RULE = "use 1-253 letters, digits, '.', '-', '_' or '@', starting with a letter or digit"
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9/._:*-]{1,253}")
_TRAIT_NAME_RE = re.compile(r"[^\s{}\"',=]{1,253}")
DEFAULT_OIDC_SCOPE = ("openid", "email", "profile")
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_RFC3339_RE = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.I)

# --------------------------------------------------------------------------- kinds and references


def canonical_kind(kind: Any) -> str:
    """``rc`` → ``remote_cluster``, ``users`` → ``user``; BadParameter for an unknown kind."""
    text = str(kind if kind is not None else "").strip()
    key = text.lower().replace("-", "_")
    if key in KINDS:
        return key
    if key in KIND_ALIASES:
        return KIND_ALIASES[key]
    if not text:
        raise BadParameter(f"the resource kind is empty; use one of: {', '.join(KINDS)}")
    raise BadParameter(f'unknown kind "{text}"; expected one of: {", ".join(KINDS)}')


def parse_ref(ref: Any) -> tuple[str, str | None]:
    """``user/alice`` → ``("user", "alice")``; ``users`` → ``("user", None)``.

    A certificate authority's name has the form ``CLUSTER/TYPE`` (``ca/root/host``).
    """
    text = str(ref if ref is not None else "").strip()
    if not text:
        raise BadParameter("the resource reference is empty; use KIND or KIND/NAME, e.g. user/alice")
    kind_part, slash, name = text.partition("/")
    if not kind_part:
        raise BadParameter(f'resource reference "{text}" has no kind before "/"; use KIND/NAME, e.g. user/alice')
    kind = canonical_kind(kind_part)
    if not slash:
        return kind, None
    if not name:
        raise BadParameter(f'resource reference "{text}" has no name after "/"; use KIND/NAME, e.g. {kind}/NAME '
                           f'or just {kind_part} for all of them')
    _check_ref_name(kind, name, text)
    return kind, name


def _check_ref_name(kind: str, name: str, text: str) -> None:
    if kind == "cert_authority":
        cluster, _unused, ca_type = name.partition("/")
        validate_name(cluster, "cluster name")
        if ca_type and ca_type not in CA_TYPES:
            raise BadParameter(f'resource reference "{text}" names CA type "{ca_type}"; use ca/CLUSTER/TYPE '
                               f'with TYPE one of {", ".join(CA_TYPES)}')
        return
    validate_name(name, f"{kind} name", kind=kind)


def validate_name(name: Any, what: str = "name", *, kind: str | None = None) -> str:
    """Check a cluster, role, user, token or node name; return it unchanged.

    Names are 1-253 letters, digits, ``.``, ``-`` and ``_`` (user names also ``@``),
    starting with a letter or digit, so they are safe in storage keys, URLs,
    certificate fields and shell commands.
    """
    pattern, rule = (_USER_NAME_RE, _USER_NAME_RULE) if kind == "user" else (_NAME_RE, _NAME_RULE)
    if not isinstance(name, str) or isinstance(name, bool):
        raise BadParameter(f"{what} must be a string, not {describe(name)}; {rule}")
    if not name:
        raise BadParameter(f"{what} is empty; {rule}")
    if len(name) > 253:
        raise BadParameter(f"{what} is {len(name)} characters long; {rule}")
    if not pattern.fullmatch(name):
        raise BadParameter(f'{what} "{name}" is not valid; {rule}')
    return name


# A leaf's name becomes a host-name suffix on users' machines: `gate login` trusts its
# host CA for "*.NAME" (known_hosts) and `gate config` writes "Host *.NAME". So it must
# be a DNS-style name of two labels or more that never ends in a number (IP addresses).
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")


def validate_leaf_name(name: Any, what: str = "leaf cluster name") -> str:
    """Check a name a leaf cluster is registered under at its root; return it unchanged."""
    validate_name(name, what)
    labels = name.split(".")
    if len(labels) < 2:
        raise BadParameter(f'{what} "{name}" is a single label, and users\' machines would trust it for every '
                           f'host matching "*.{name}"; use a name of two labels or more, e.g. {name}.example.com')
    if not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
        raise BadParameter(f'{what} "{name}" is not a DNS-style name; use labels of 1-63 letters, digits, \'-\' or '
                           f"'_' joined by single dots, each starting and ending with a letter or digit")
    if labels[-1].isdigit():
        raise BadParameter(f'{what} "{name}" ends in a number, so "*.{name}" would match IP addresses; end it '
                           f"with a name, e.g. {name}.example")
    return name


def is_name_suffix(suffix: str, name: str) -> bool:
    """Whether NAME is SUFFIX or ends in ".SUFFIX" (so the pattern "*.SUFFIX" covers it); case-blind."""
    suffix, name = suffix.lower().rstrip("."), name.lower().rstrip(".")
    return bool(suffix) and (name == suffix or name.endswith("." + suffix))


_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?")


def validate_dial_addr(value: Any, what: str) -> str:
    """A host:port another cluster tells this one to dial (a root's tunnel address): one host name or
    IP address and a port from 1 to 65535, at most 261 characters; BadParameter naming WHAT otherwise."""
    import ipaddress
    text = value if isinstance(value, str) else ""
    if not text or len(text) > 261 or not text.isprintable():
        raise BadParameter(f"{what} is not a host:port address of at most 261 printable characters")
    if text.startswith("["):
        host, _unused, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _unused, port = text.rpartition(":")
    try:
        if text.startswith("["):
            host_ok = ipaddress.ip_address(host).version == 6
        else:  # an IPv6 address must be in brackets, or its port would be ambiguous
            host_ok = ":" not in host and bool(_HOST_RE.fullmatch(host)) and ".." not in host
    except ValueError:
        host_ok = False
    if not host_ok or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        raise BadParameter(f'{what} "{text[:80]}" is not a host:port address with a port from 1 to 65535')
    return text


PASSWORD_MIN_LENGTH = 8


def is_trait_name(name: Any) -> bool:
    """Whether NAME can be a trait (no spaces, quotes, braces, commas or "="; 1-253 characters)."""
    return isinstance(name, str) and _TRAIT_NAME_RE.fullmatch(name) is not None


def validate_password(password: str) -> str:
    """A new password must be long enough (the CLI checks before it creates anything, auth again)."""
    if len(password) < PASSWORD_MIN_LENGTH:
        raise BadParameter(f"the password is too short; use at least {PASSWORD_MIN_LENGTH} characters")
    return password


def parse_labels_arg(text: Any) -> dict[str, str]:
    """``"env=demo,team=ops"`` (a CLI flag such as ``--set-labels``) → ``{"env": "demo", ...}``.

    An empty string gives no labels. A dict is checked and returned as a copy.
    """
    example = "use key=value pairs separated by commas, e.g. env=demo,team=ops"
    if isinstance(text, dict):
        return validate_labels(text, "labels")
    if text is None:
        return {}
    if not isinstance(text, str):
        raise BadParameter(f"labels must be text like env=demo,team=ops, not {describe(text)}")
    out: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            if text.strip():
                raise BadParameter(f'labels "{text}" contain an empty entry; {example}')
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise BadParameter(f'label "{item}" has no "="; {example}')
        if not key:
            raise BadParameter(f'label "{item}" has an empty key; {example}')
        if key in out:
            raise BadParameter(f'label "{key}" is given twice in "{text}"; give each key once')
        _check_label_key(key, "label")
        out[key] = value
    return out


def validate_labels(labels: Any, what: str = "labels") -> dict[str, str]:
    """A static label set ``{key: value}`` (both strings) → a checked copy."""
    return _static_labels(_Ctx(None, None, "", bare=True), labels, what)


def _check_label_key(key: str, what: str) -> None:
    if not _LABEL_KEY_RE.fullmatch(key):
        raise BadParameter(f'{what} key "{key}" is not valid; use letters, digits and . - _ / : characters')


# --------------------------------------------------------------------------- error context
class _Ctx:
    """Builds messages that start with the resource they are about."""

    def __init__(self, kind: str | None, name: str | None, where: str, *, bare: bool = False):
        self.kind, self.name, self.where, self.bare = kind, name, where, bare

    @property
    def prefix(self) -> str:
        if self.bare:
            return ""
        if self.kind and self.name:
            return f'{self.kind} "{self.name}"' + (f" ({self.where})" if self.where else "")
        return self.where or self.kind or "resource"

    def fail(self, message: str, cls: type = BadParameter) -> NoReturn:
        raise cls(f"{self.prefix}: {message}" if self.prefix else message)

    def wrap(self, exc: BadParameter, path: str, lead: str = "") -> NoReturn:
        """Re-raise a helper's error with this resource and field in front, keeping its class.

        A message that starts with ``lead`` (the helper's own name for the field, such as
        ``role_map``) has it replaced by ``path``; otherwise ``in PATH,`` is put in front.
        """
        message = exc.message
        if lead and message.startswith(lead):
            message = path + message[len(lead):]
        else:
            message = f"in {path}, {message}"
        message = f"{self.prefix}: {message}" if self.prefix else message
        new = copy.copy(exc)
        new.args, new.message = (message,), message
        raise new from None


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'{path}["{key}"]'


def _check_fields(ctx: _Ctx, mapping: dict, allowed, path: str, *, hints: dict | None = None,
                  tolerated: tuple = ()) -> None:
    """Refuse keys outside ``allowed`` (``tolerated`` keys pass but are never suggested)."""
    allowed = list(allowed)
    for key in mapping:
        skey = str(key)
        if (skey in allowed or skey in tolerated) and isinstance(key, str):
            continue
        full = f"{path}.{skey}" if path else skey
        if hints and skey in hints:
            ctx.fail(hints[skey].replace("{path}", full))
        if ctx.kind == "role" and skey in _UNSUPPORTED_ROLE_FIELDS:
            ctx.fail(f'field "{full}" is not supported by Gatehouse roles; remove it')
        renamed = _RENAMED_FIELDS.get(skey)
        close = [renamed] if renamed in allowed else difflib.get_close_matches(skey, allowed, n=1)
        if close:
            ctx.fail(f'unknown field "{full}"; did you mean "{close[0]}"?')
        where = f"in {path} " if path else "at the top level "
        ctx.fail(f'unknown field "{full}"; the fields allowed {where}are: {", ".join(allowed)}')


def _mapping(ctx: _Ctx, value: Any, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.fail(f"{path} must be a mapping, not {describe(value)}")
    return value


def _string(ctx: _Ctx, value: Any, path: str, *, default: str = "", strip: bool = True) -> str:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        ctx.fail(f"{path} must be a string, not {describe(value)}")
    text = str(value)
    return text.strip() if strip else text


def _required_string(ctx: _Ctx, value: Any, path: str, fix: str) -> str:
    text = _string(ctx, value, path)
    if not text:
        ctx.fail(f"{path} is {'missing' if value is None else 'empty'}; {fix}")
    return text


def _string_list(ctx: _Ctx, value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        ctx.fail(f"{path} must be a list of strings, not {describe(value)}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            ctx.fail(f"{path}[{i}] must be a string, not {describe(item)}; quote it in YAML")
        text = str(item).strip()
        if not text:
            ctx.fail(f"{path}[{i}] is an empty string; remove it")
        out.append(text)
    return out


def _bool(ctx: _Ctx, value: Any, path: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    ctx.fail(f"{path} must be true or false, not {describe(value)}")


def _word(ctx: _Ctx, value: Any, path: str, words: tuple) -> str:
    """One of WORDS (the first is the default); YAML's off/none spelled as false/null are accepted."""
    if value is None:
        return words[0]
    if value is False and "none" in words:
        return "none"
    if not isinstance(value, str) or value.strip().lower() not in words:
        ctx.fail(f"{path} must be {' or '.join(words)}, not {describe(value)}")
    return value.strip().lower()


def _timestamp(ctx: _Ctx, value: Any, path: str) -> str:
    """An RFC 3339 time (``2024-05-01T12:00:00Z``) kept as text; YAML datetimes converted."""
    if value is None or value == "":
        return ""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            ctx.fail(f"{path} has no time zone; write it in RFC 3339 form, e.g. 2024-05-01T12:00:00Z")
        value = value.astimezone(_dt.timezone.utc)
        text = value.strftime("%Y-%m-%dT%H:%M:%S")
        return text + (f".{value.microsecond:06d}Z" if value.microsecond else "Z")
    if not isinstance(value, str):
        ctx.fail(f"{path} must be an RFC 3339 time such as 2024-05-01T12:00:00Z, not {describe(value)}")
    text = value.strip()
    match = _RFC3339_RE.fullmatch(text)
    ok = bool(match)
    if match:
        frac = (match.group(3) or "")[:7]
        zone = "+00:00" if match.group(4).upper() == "Z" else match.group(4)
        try:
            _dt.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}{frac}{zone}")
        except ValueError:
            ok = False
    if not ok:
        ctx.fail(f'{path} "{text}" is not an RFC 3339 time; write it like 2024-05-01T12:00:00Z')
    return text


def _hostport(ctx: _Ctx, value: Any, path: str) -> str:
    text = _string(ctx, value, path)
    example = "e.g. root.example.com:3080"
    if "://" in text:
        ctx.fail(f'{path} "{text}" must be host:port without a scheme or path, {example}')
    if text.startswith("["):
        host, _unused, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    if not host or "/" in host or " " in host:
        ctx.fail(f'{path} "{text}" has no valid host; use host:port, {example}')
    if port is None:
        ctx.fail(f'{path} "{text}" has no port; use host:port, {example}')
    if not port.isdigit() or not 0 < int(port) < 65536:
        ctx.fail(f'{path} "{text}" has an invalid port; use a port from 1 to 65535, {example}')
    return text


def _name(ctx: _Ctx, value: Any, path: str, *, kind: str | None = None) -> str:
    try:
        return validate_name(value, path, kind=kind)
    except BadParameter as exc:
        ctx.fail(exc.message)


def _static_labels(ctx: _Ctx, value: Any, path: str) -> dict[str, str]:
    """``{key: value}`` with plain string values (metadata labels, token labels)."""
    fail = ctx.fail
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(f"{path} must be a mapping of label names to values, e.g. {{env: prod}}, not {describe(value)}")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str):
            fail(f"{path} has a label name {key!r} that is not a string; quote it in YAML")
        if not _LABEL_KEY_RE.fullmatch(key):
            fail(f'{path} has an invalid label name "{key}"; use letters, digits and . - _ / : characters')
        if isinstance(val, bool) or not isinstance(val, (str, int)):
            fail(f"{_child(path, key)} must be a string, not {describe(val)}; quote it in YAML")
        out[key] = str(val)
    return out


def _check_templates(ctx: _Ctx, values, path: str, *, indexed: bool = True) -> None:
    """Trait templates (``{{internal.logins}}``, and anything with ``{{`` or ``}}``) must parse;
    a missing trait is fine here."""
    from .. import traits  # lazily, so importing resources does not need re2

    for i, value in enumerate(values):
        if not traits.is_template(value):
            continue
        try:
            traits.validate_template(value)
        except ValueError as exc:
            if not isinstance(exc, BadParameter):
                exc = BadParameter(f'role template "{value}" is not valid ({exc}); fix the template')
            ctx.wrap(exc, f"{path}[{i}]" if indexed else path)


def _check_logins(ctx: _Ctx, values: list[str], path: str) -> None:
    """Literal logins become certificate principals, so they must be valid Unix logins."""
    from .. import traits

    for i, value in enumerate(values):
        if not traits.is_template(value) and not traits.is_valid_login(value):
            ctx.fail(f'{path}[{i}] "{value}" is not a valid Unix login; use letters, digits, "_", "." and "-", '
                     f'starting with a letter or "_", at most {traits.MAX_LOGIN_LENGTH} characters')


def _selector(ctx: _Ctx, value: Any, path: str) -> dict[str, list[str]]:
    """A label selector ``{key: value or [values]}`` → ``{key: [values]}``, patterns checked."""
    from .. import labels  # lazily, so importing resources does not need re2

    if not isinstance(value, dict):
        try:
            return labels.normalize_selector(value)  # None → {}; anything else is refused
        except BadParameter as exc:
            ctx.wrap(exc, path)
    selector: dict[str, list[str]] = {}
    for key, patterns in value.items():
        where = _child(path, key) if isinstance(key, str) else path
        try:
            selector.update(labels.normalize_selector({key: patterns}))
        except BadParameter as exc:
            ctx.wrap(exc, where)
        if isinstance(key, str):
            _check_templates(ctx, [key], f"a key of {path}", indexed=False)
        _check_templates(ctx, selector[key], where)
    return selector


def _role_map(ctx: _Ctx, value: Any, path: str) -> list[dict]:
    from .. import rolemap  # lazily: rolemap needs re2

    try:
        return rolemap.validate_role_map(copy.deepcopy(value), existing_local_roles=None)
    except BadParameter as exc:
        ctx.wrap(exc, path, lead="role_map")


# --------------------------------------------------------------------------- validate
def validate(resource: Any, *, where: str = "") -> dict:
    """Check one resource and return its normalised deep copy; BadParameter on any problem.

    ``where`` says where the resource came from (``resource 2 in trusted.yaml``) and is
    put into messages. Read-only kinds (node, cert_authority) are refused: they are
    never created from files.
    """
    ctx = _Ctx(None, None, where)
    if not isinstance(resource, dict):
        ctx.fail(f"a resource must be a mapping with kind, metadata and spec, not {describe(resource)}")
    if resource.get("kind") in (None, ""):
        ctx.fail('missing "kind"; add kind: role, user, token or trusted_cluster')
    if not isinstance(resource["kind"], str):
        ctx.fail(f'"kind" must be a string, not {describe(resource["kind"])}; use kind: role, user, token or '
                 f'trusted_cluster')
    try:
        kind = canonical_kind(resource["kind"])
    except BadParameter as exc:
        if where:
            ctx.fail(exc.message)
        raise
    ctx.kind = kind
    metadata = resource.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("name") in (None, ""):
        if metadata is not None and not isinstance(metadata, dict):
            ctx.fail(f"metadata must be a mapping, not {describe(metadata)}; write metadata: {{name: NAME}}")
        ctx.fail(f'missing "metadata.name"; give the {kind} a name, e.g. metadata: {{name: NAME}}')
    raw_name = metadata["name"]
    ctx.name = str(raw_name) if isinstance(raw_name, (str, int)) and not isinstance(raw_name, bool) else None
    if kind in READ_ONLY_KINDS:
        ctx.fail(_READ_ONLY_MESSAGES[kind])
    top = ["kind", "version", "metadata"] + (["status"] if kind == "remote_cluster" else [])
    if kind != "remote_cluster":
        top.insert(3, "spec")
    if kind == "user":
        _reject_password(ctx, resource)
    hints = None
    if kind == "remote_cluster":
        hints = {"spec": 'unknown field "{path}"; a remote_cluster has no spec and only its metadata.labels can be '
                         f"changed, e.g. 'gatectl update rc/{ctx.name or 'NAME'} --set-labels=env=demo'"}
    _check_fields(ctx, resource, top, "", hints=hints)
    version = resource.get("version")
    if version is None:
        version = DEFAULT_VERSIONS[kind]
    elif version not in VERSIONS[kind]:
        shown = f'"{version}"' if isinstance(version, str) else describe(version)
        ctx.fail(f"version {shown} is not supported for {kind}; use "
                 + (f"one of {', '.join(VERSIONS[kind])}" if len(VERSIONS[kind]) > 1 else VERSIONS[kind][0]))
    out = {"kind": kind, "version": version}
    out.update(_VALIDATORS[kind](ctx, resource, metadata))
    return out


_READ_ONLY_MESSAGES = {
    "node": "nodes register themselves; start gatehouse with ssh_service enabled and a node join token on "
            "that host instead of creating the node from a file",
    "cert_authority": "certificate authorities are created by the auth service and exchanged when clusters "
                      "establish trust; create a trusted_cluster resource instead of a cert_authority",
    "proxy": "proxies join with a proxy token; start gatehouse with proxy_service enabled and a proxy join token "
             "on that host instead of creating the proxy from a file",
}


def _metadata(ctx: _Ctx, metadata: dict, fields: tuple, *, kind: str | None = None) -> dict:
    # "id" appears in other tools' output (tctl get); it is accepted and dropped.
    _check_fields(ctx, metadata, ("name",) + fields, "metadata", tolerated=("id",))
    out = {"name": _name(ctx, metadata["name"], "metadata.name", kind=kind)}
    if "description" in fields:
        out["description"] = _string(ctx, metadata.get("description"), "metadata.description")
    if "labels" in fields:
        out["labels"] = _static_labels(ctx, metadata.get("labels"), "metadata.labels")
    if "expires" in fields and metadata.get("expires") not in (None, ""):
        out["expires"] = _timestamp(ctx, metadata.get("expires"), "metadata.expires")
    return out


def _validate_role(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    meta = _metadata(ctx, metadata, ("description", "labels"))
    spec = _mapping(ctx, res.get("spec"), "spec")
    _check_fields(ctx, spec, ("options", "allow", "deny"), "spec")
    options = _mapping(ctx, spec.get("options"), "spec.options")
    _check_fields(ctx, options, _ROLE_OPTION_KEYS, "spec.options")
    out_opts: dict[str, Any] = {}
    for key in _ROLE_OPTION_KEYS:
        path = f"spec.options.{key}"
        value = options.get(key)
        if key == "max_session_ttl":
            try:
                out_opts[key] = DEFAULT_MAX_SESSION_TTL if value is None else parse_ttl(value, path)
            except BadParameter as exc:
                ctx.fail(exc.message)
        elif key == "client_idle_timeout":
            try:
                seconds = 0 if value is None else parse_duration(value, path)
            except BadParameter as exc:
                ctx.fail(exc.message)
            if seconds < 0:
                ctx.fail(f"{path} must not be negative; use 0 to turn the idle timeout off, or e.g. 15m")
            out_opts[key] = seconds
        elif key in _ROLE_WORD_OPTIONS:
            out_opts[key] = _word(ctx, value, path, _ROLE_WORD_OPTIONS[key])
        else:
            out_opts[key] = _bool(ctx, value, path, _ROLE_BOOL_DEFAULTS[key])
    out_spec = {"options": out_opts}
    for side in ("allow", "deny"):
        cond = _mapping(ctx, spec.get(side), f"spec.{side}")
        _check_fields(ctx, cond, _CONDITION_KEYS, f"spec.{side}")
        out_cond: dict[str, Any] = {}
        for key in _CONDITION_KEYS:
            path = f"spec.{side}.{key}"
            if key in _CONDITION_SELECTORS:
                out_cond[key] = _selector(ctx, cond.get(key), path)
            else:
                out_cond[key] = _string_list(ctx, cond.get(key), path)
                _check_templates(ctx, out_cond[key], path)
                if key == "logins":
                    _check_logins(ctx, out_cond[key], path)
        out_spec[side] = out_cond
    return {"metadata": meta, "spec": out_spec}


def _reject_password(ctx: _Ctx, res: dict) -> None:
    user = ctx.name or "NAME"
    for path, holder in (("password", res), ("spec.password", res.get("spec")),
                         ("metadata.password", res.get("metadata"))):
        if isinstance(holder, dict) and "password" in holder:
            ctx.fail(f"{path} is not accepted in resource files; set the password with "
                     f"'gatectl users passwd {user}'")


def _validate_user(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    meta = _metadata(ctx, metadata, (), kind="user")
    spec = _mapping(ctx, res.get("spec"), "spec")
    _check_fields(ctx, spec, ("roles", "traits"), "spec")
    roles = _string_list(ctx, spec.get("roles"), "spec.roles")
    if not roles:
        ctx.fail(f"spec.roles is {'missing' if spec.get('roles') is None else 'empty'}; give the user at least "
                 f"one role, e.g. spec: {{roles: [access]}}")
    for i, role in enumerate(roles):
        _name(ctx, role, f"spec.roles[{i}]")
    traits_in = spec.get("traits")
    if traits_in is not None and not isinstance(traits_in, dict):
        ctx.fail(f"spec.traits must be a mapping of trait names to lists, e.g. {{logins: [ubuntu]}}, "
                 f"not {describe(traits_in)}")
    traits = {}
    for key, values in (traits_in or {}).items():
        if not is_trait_name(key):
            ctx.fail(f"spec.traits has an invalid trait name {key!r}; use a name without spaces, "
                     f"quotes or braces, e.g. logins")
        traits[key] = _string_list(ctx, values, _child("spec.traits", key))
        if key == "logins":
            _check_logins(ctx, traits[key], "spec.traits.logins")
    return {"metadata": meta, "spec": {"roles": roles, "traits": traits}}


def _validate_token(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    meta = _metadata(ctx, metadata, ("expires",))
    spec = _mapping(ctx, res.get("spec"), "spec")
    _check_fields(ctx, spec, ("roles", "labels", "token", "leaf_name"), "spec",
                  hints={"type": 'unknown field "{path}"; list token types under spec.roles, '
                                 'e.g. roles: [trusted_cluster]'})
    types = ", ".join(TOKEN_TYPES)
    roles = _string_list(ctx, spec.get("roles"), "spec.roles")
    if not roles:
        ctx.fail(f"spec.roles is {'missing' if spec.get('roles') is None else 'empty'}; "
                 f"say what the token is for, e.g. roles: [trusted_cluster] (one or more of {types})")
    for i, role in enumerate(roles):
        if role not in TOKEN_TYPES:
            ctx.fail(f'spec.roles[{i}] "{role}" is not a token type; use {types}')
    out_spec: dict[str, Any] = {"roles": list(dict.fromkeys(roles)),
                                "labels": _static_labels(ctx, spec.get("labels"), "spec.labels")}
    if spec.get("token") is not None:
        secret = _string(ctx, spec.get("token"), "spec.token", strip=False)
        if len(secret) < MIN_TOKEN_LENGTH:
            ctx.fail(f"spec.token must be at least {MIN_TOKEN_LENGTH} characters long; use a longer secret "
                     f"or leave spec.token out to get a random one")
        out_spec["token"] = secret
    if spec.get("leaf_name") not in (None, ""):
        if out_spec["roles"] != ["trusted_cluster"]:
            ctx.fail("spec.leaf_name applies to trusted_cluster tokens only; set roles: [trusted_cluster]")
        try:
            out_spec["leaf_name"] = validate_leaf_name(spec.get("leaf_name"), "spec.leaf_name")
        except BadParameter as exc:
            ctx.fail(exc.message)
    return {"metadata": meta, "spec": out_spec}


def _validate_trusted_cluster(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    meta = _metadata(ctx, metadata, ())
    spec = _mapping(ctx, res.get("spec"), "spec")
    fields = ("enabled", "token", "tunnel_addr", "web_proxy_addr", "role_map", "heartbeat_mode", "forward_audit")
    _check_fields(ctx, spec, fields, "spec")
    mode = _string(ctx, spec.get("heartbeat_mode"), "spec.heartbeat_mode", default="default") or "default"
    if mode not in HEARTBEAT_MODES:
        ctx.fail(f'spec.heartbeat_mode "{mode}" is not a heartbeat mode; use {" or ".join(HEARTBEAT_MODES)} '
                 f"(low_bandwidth for metered links: offline shown within 90 s instead of 15 s)")
    if spec.get("web_proxy_addr") in (None, ""):
        ctx.fail("spec.web_proxy_addr is missing; set it to the root cluster's proxy web address, "
                 "e.g. web_proxy_addr: root.example.com:3080")
    web = _hostport(ctx, spec.get("web_proxy_addr"), "spec.web_proxy_addr")
    tunnel = _hostport(ctx, spec["tunnel_addr"], "spec.tunnel_addr") if spec.get("tunnel_addr") else web
    out_spec = {
        "enabled": _bool(ctx, spec.get("enabled"), "spec.enabled", True),
        "token": _string(ctx, spec.get("token"), "spec.token"),
        "tunnel_addr": tunnel,
        "web_proxy_addr": web,
        "role_map": _role_map(ctx, spec.get("role_map"), "spec.role_map"),
        "heartbeat_mode": mode,
        # The leaf decides whether its audit events (and recordings of the root's users' sessions)
        # go to the root; off unless the leaf's administrator turns it on (docs/audit.md).
        "forward_audit": _bool(ctx, spec.get("forward_audit"), "spec.forward_audit", False),
    }
    return {"metadata": meta, "spec": out_spec}


def _validate_remote_cluster(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    meta = _metadata(ctx, metadata, ("labels",))
    status = _mapping(ctx, res.get("status"), "status")
    _check_fields(ctx, status, ("connection", "last_heartbeat", "heartbeat_mode"), "status")
    connection = _string(ctx, status.get("connection"), "status.connection", default="offline")
    if connection not in CONNECTION_STATES:
        ctx.fail(f'status.connection "{connection}" is not valid; use online or offline')
    return {"metadata": meta, "status": {
        "connection": connection,
        "last_heartbeat": _timestamp(ctx, status.get("last_heartbeat"), "status.last_heartbeat")}}


def _url(ctx: _Ctx, value: Any, path: str, example: str, *, loopback_http: bool) -> str:
    """An absolute https:// URL (http:// too on a loopback host when LOOPBACK_HTTP), without query or fragment."""
    text = _required_string(ctx, value, path, f"set it to a URL, {example}")
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        ctx.fail(f'{path} "{text}" is not a valid URL; write it like {example}')
    http_ok = loopback_http and url.hostname in _LOOPBACK_HOSTS
    if url.scheme != "https" and not (url.scheme == "http" and http_ok):
        ctx.fail(f'{path} "{text}" must use https:// (plain http only on a loopback address, for tests); '
                 f"write it like {example}")
    if not url.hostname or url.query or url.fragment or url.username or url.password:
        ctx.fail(f'{path} "{text}" must be a plain URL with a host and no query, fragment or user name; write it '
                 f"like {example}")
    return text


def _validate_oidc(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    meta = _metadata(ctx, metadata, ())
    spec = _mapping(ctx, res.get("spec"), "spec")
    fields = ("issuer_url", "client_id", "client_secret", "redirect_url", "scope", "claims_to_roles",
              "username_claim")
    _check_fields(ctx, spec, fields, "spec", hints={"redirect_urls": 'unknown field "{path}"; give the root '
                                                                     "proxy's callback as redirect_url"})
    issuer = _url(ctx, spec.get("issuer_url"), "spec.issuer_url", "https://idp.example.com/realms/corp",
                  loopback_http=True)
    example = f"https://root.example.com:3080{OIDC_CALLBACK_PATH}"
    if isinstance(spec.get("redirect_url"), list):
        ctx.fail(f"spec.redirect_url must be one URL, the root proxy's callback, e.g. {example}")
    redirect = _url(ctx, spec.get("redirect_url"), "spec.redirect_url", example, loopback_http=False)
    if urlsplit(redirect).path != OIDC_CALLBACK_PATH:
        ctx.fail(f'spec.redirect_url "{redirect}" must be the root proxy\'s callback, ending in '
                 f"{OIDC_CALLBACK_PATH}, e.g. {example}")
    scope = spec.get("scope")
    scope = _string_list(ctx, scope.split() if isinstance(scope, str) else scope, "spec.scope")
    scope = list(dict.fromkeys(["openid", *(scope or DEFAULT_OIDC_SCOPE)]))
    from .. import claims  # lazily: claims needs re2

    try:
        claims_to_roles = claims.validate_claims_to_roles(copy.deepcopy(spec.get("claims_to_roles")))
    except BadParameter as exc:
        ctx.wrap(exc, "spec.claims_to_roles", lead="claims_to_roles")
    return {"metadata": meta, "spec": {
        "issuer_url": issuer,
        "client_id": _required_string(ctx, spec.get("client_id"), "spec.client_id",
                                      "set it to the client ID the identity provider gave Gatehouse"),
        "client_secret": _required_string(ctx, spec.get("client_secret"), "spec.client_secret",
                                          "set it to the client secret from the identity provider (a file from "
                                          "'gatectl get' has it only with --with-secrets)"),
        "redirect_url": redirect,
        "scope": scope,
        "claims_to_roles": claims_to_roles,
        "username_claim": _string(ctx, spec.get("username_claim"), "spec.username_claim",
                                  default=claims.DEFAULT_USERNAME_CLAIM) or claims.DEFAULT_USERNAME_CLAIM,
    }}


_VALIDATORS = {"role": _validate_role, "user": _validate_user, "token": _validate_token,
               "trusted_cluster": _validate_trusted_cluster, "remote_cluster": _validate_remote_cluster,
               "oidc": _validate_oidc}


# --------------------------------------------------------------------------- trusted_cluster addresses
def tunnel_addr_is_discovered(tc: dict) -> bool:
    """spec.tunnel_addr was left at web_proxy_addr: the root says where its tunnel listener is."""
    spec = tc["spec"]
    return not spec["tunnel_addr"] or spec["tunnel_addr"] == spec["web_proxy_addr"]


def tunnel_dial_addr(tc: dict) -> str:
    """Where a leaf dials its root: spec.tunnel_addr, unless it was left at web_proxy_addr; then
    what the root advertised in the handshake (the stored record's ``discovered_tunnel_addr``),
    else web_proxy_addr."""
    spec = tc["spec"]
    if not tunnel_addr_is_discovered(tc):
        return spec["tunnel_addr"]
    return tc.get("discovered_tunnel_addr") or spec["web_proxy_addr"]
