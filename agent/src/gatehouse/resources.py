"""Resource kinds: parse, validate, normalise and render.

Operators write resources as YAML (``gatectl create FILE``) or Ansible passes them as
dicts; both go through :func:`validate`, which returns a normalised deep copy in which
every key the kind defines is present, lists are lists, label values are lists and
durations are whole seconds. Normalising twice gives the same result, so two normalised
resources can be compared key by key (the Ansible modules' diff relies on this).

Every problem raises :class:`~gatehouse.errors.BadParameter` with one sentence that
names the resource, the field path and the fix, for example::

    role "dev": unknown field "spec.allow.login"; did you mean "logins"?

Validation runs to completion before anything is returned, so a caller holding the
result of :func:`parse_documents` knows that every resource in the file is good.

Kinds and their normalised shapes:

* ``role`` (v1..v7, default v5) — ``metadata {name, description, labels}``,
  ``spec {options, allow, deny}``; ``allow``/``deny`` each hold ``logins``,
  ``node_labels``, ``cluster_labels``, ``kubernetes_groups``, ``kubernetes_users``,
  ``db_users`` and ``db_names``.
* ``user`` (v2) — ``spec {roles, traits}``; never a password.
* ``token`` (v2) — ``metadata {name, expires?}``, ``spec {roles, labels, token?}``.
* ``trusted_cluster`` (v1, v2; default v2) — ``spec {enabled, token, tunnel_addr,
  web_proxy_addr, role_map}``.
* ``remote_cluster`` (v3) — ``metadata {name, labels}``, ``status {connection,
  last_heartbeat}``; only its labels can be changed from a file.
* ``node`` (v2), ``cert_authority`` (v2) — read-only: shown by ``gatectl get``, never
  created from a file.
"""

from __future__ import annotations

import copy
import datetime as _dt
import difflib
import json
import re
from typing import Any, NoReturn

from .errors import BadParameter

__all__ = [
    "KINDS", "CREATABLE_KINDS", "READ_ONLY_KINDS", "KIND_ALIASES", "VERSIONS", "DEFAULT_VERSIONS",
    "TOKEN_TYPES", "DEFAULT_MAX_SESSION_TTL", "canonical_kind", "parse_ref", "validate_name",
    "parse_documents", "validate", "render", "redact", "parse_duration", "parse_ttl",
    "format_duration", "parse_labels_arg", "validate_labels",
]

# --------------------------------------------------------------------------- kinds
KINDS = ("role", "user", "token", "trusted_cluster", "remote_cluster", "node", "cert_authority")
CREATABLE_KINDS = ("role", "user", "token", "trusted_cluster")
READ_ONLY_KINDS = ("node", "cert_authority")  # remote_cluster: read-only except its labels

KIND_ALIASES = {
    "roles": "role",
    "users": "user",
    "tokens": "token",
    "tc": "trusted_cluster", "trusted_clusters": "trusted_cluster",
    "rc": "remote_cluster", "remote_clusters": "remote_cluster",
    "nodes": "node",
    "ca": "cert_authority", "cas": "cert_authority", "cert_authorities": "cert_authority",
}

VERSIONS = {
    "role": ("v1", "v2", "v3", "v4", "v5", "v6", "v7"),
    "user": ("v2",),
    "token": ("v2",),
    "trusted_cluster": ("v1", "v2"),
    "remote_cluster": ("v3",),
    "node": ("v2",),
    "cert_authority": ("v2",),
}
DEFAULT_VERSIONS = {"role": "v5", "user": "v2", "token": "v2", "trusted_cluster": "v2",
                    "remote_cluster": "v3", "node": "v2", "cert_authority": "v2"}

TOKEN_TYPES = ("trusted_cluster", "node", "proxy")
CA_TYPES = ("user", "host", "tls")
CONNECTION_STATES = ("online", "offline")
DEFAULT_MAX_SESSION_TTL = 12 * 3600
MIN_TOKEN_LENGTH = 16

# Fields that hold secrets, per kind: left out of rendered output unless asked for.
SECRET_FIELDS = {"trusted_cluster": ("token",), "token": ("token",),
                 "cert_authority": ("private", "private_key", "private_keys")}

_ROLE_OPTION_KEYS = ("max_session_ttl", "permit_pty", "permit_port_forwarding",
                     "permit_agent_forwarding", "permit_x11_forwarding", "client_idle_timeout")
_ROLE_BOOL_DEFAULTS = {"permit_pty": True, "permit_port_forwarding": True,
                       "permit_agent_forwarding": True, "permit_x11_forwarding": False}
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
    "cert_format", "record_session", "enhanced_recording", "disconnect_expired_cert",
    "ssh_file_copy", "create_host_user", "require_session_mfa", "max_sessions", "pin_source_ip",
    "desktop_clipboard", "desktop_directory_sharing", "lock", "max_connections",
})

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,252}")
_NAME_RULE = "use 1-253 letters, digits, '.', '-' or '_', starting with a letter or digit"
_USER_NAME_RULE = "use 1-253 letters, digits, '.', '-', '_' or '@', starting with a letter or digit"
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9/._:*-]{1,253}")
_TRAIT_NAME_RE = re.compile(r"[^\s{}\"',=]{1,253}")
_RFC3339_RE = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.I)
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")
_DURATION_UNITS = {"h": 3600, "m": 60, "s": 1}
_DURATION_HINT = "write it like 1h30m, 15m or 90s"


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
        cluster, _, ca_type = name.partition("/")
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
        raise BadParameter(f"{what} must be a string, not {_describe(name)}; {rule}")
    if not name:
        raise BadParameter(f"{what} is empty; {rule}")
    if len(name) > 253:
        raise BadParameter(f"{what} is {len(name)} characters long; {rule}")
    if not pattern.fullmatch(name):
        raise BadParameter(f'{what} "{name}" is not valid; {rule}')
    return name


# --------------------------------------------------------------------------- durations and labels
def parse_duration(value: Any, what: str = "") -> int:
    """``"1h30m"``, ``"15m"``, ``"90s"``, ``"2h"`` or an int of seconds → whole seconds.

    Units are Go's ``h``, ``m`` and ``s``, in any combination (``30h0m0s``); a leading
    ``-`` makes the duration negative; ``0`` is zero. ``what`` names the setting in
    error messages (``spec.options.max_session_ttl``, ``--ttl``).
    """
    subject = f"{what} " if what else ""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadParameter(f"{what or 'the duration'} must be like 1h30m, 15m or 90s (or a whole number of "
                           f"seconds), not {_describe(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise BadParameter(f"{subject}{value!r} is not a whole number of seconds; {_DURATION_HINT}")
    text = value.strip()
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text[1:] if text[:1] == "+" else text)
    if body == "0":
        return 0
    if body.isdigit():
        raise BadParameter(f'{subject}"{value}" has no unit; write it like {body}s, 15m or 1h30m')
    pos, seconds = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART_RE.match(body, pos)
        if not match:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        if re.fullmatch(r"\d+d", body):
            raise BadParameter(f'{subject}"{value}" uses days, which is not a unit here; '
                               f'write {int(body[:-1]) * 24}h instead')
        raise BadParameter(f'{subject}"{value}" is not a valid duration; {_DURATION_HINT}')
    if abs(seconds - round(seconds)) > 1e-6:
        raise BadParameter(f'{subject}"{value}" is not a whole number of seconds; {_DURATION_HINT}')
    return sign * int(round(seconds))


def parse_ttl(value: Any, what: str = "TTL") -> int:
    """Like :func:`parse_duration`, but a TTL must be positive."""
    seconds = parse_duration(value, what)
    if seconds <= 0:
        raise BadParameter(f"{what} must be positive, not {format_duration(seconds)}; e.g. 15m or 12h")
    return seconds


def format_duration(seconds: int) -> str:
    """Whole seconds → compact Go-style text (``5400`` → ``1h30m``, ``0`` → ``0s``)."""
    seconds = int(seconds)
    if seconds == 0:
        return "0s"
    sign, rest = ("-", -seconds) if seconds < 0 else ("", seconds)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return sign + "".join(parts)


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
        raise BadParameter(f"labels must be text like env=demo,team=ops, not {_describe(text)}")
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


def _describe(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


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
        ctx.fail(f"{path} must be a mapping, not {_describe(value)}")
    return value


def _string(ctx: _Ctx, value: Any, path: str, *, default: str = "", strip: bool = True) -> str:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        ctx.fail(f"{path} must be a string, not {_describe(value)}")
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
        ctx.fail(f"{path} must be a list of strings, not {_describe(value)}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            ctx.fail(f"{path}[{i}] must be a string, not {_describe(item)}; quote it in YAML")
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
    ctx.fail(f"{path} must be true or false, not {_describe(value)}")


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
        ctx.fail(f"{path} must be an RFC 3339 time such as 2024-05-01T12:00:00Z, not {_describe(value)}")
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
        host, _, rest = text[1:].partition("]")
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
        fail(f"{path} must be a mapping of label names to values, e.g. {{env: prod}}, not {_describe(value)}")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str):
            fail(f"{path} has a label name {key!r} that is not a string; quote it in YAML")
        if not _LABEL_KEY_RE.fullmatch(key):
            fail(f'{path} has an invalid label name "{key}"; use letters, digits and . - _ / : characters')
        if isinstance(val, bool) or not isinstance(val, (str, int)):
            fail(f"{_child(path, key)} must be a string, not {_describe(val)}; quote it in YAML")
        out[key] = str(val)
    return out


def _check_templates(ctx: _Ctx, values, path: str, *, indexed: bool = True) -> None:
    """Trait templates (``{{internal.logins}}``) must parse; a missing trait is fine here."""
    for i, value in enumerate(values):
        if not isinstance(value, str) or "{{" not in value:
            continue
        from . import traits  # lazily: traits is only needed when a template is used

        try:
            traits.interpolate(value, {})
        except LookupError:
            pass  # the trait is missing from an empty trait set, as expected
        except ValueError as exc:
            if not isinstance(exc, BadParameter):
                exc = BadParameter(f'role template "{value}" is not valid ({exc}); fix the template')
            ctx.wrap(exc, f"{path}[{i}]" if indexed else path)


def _check_logins(ctx: _Ctx, values: list[str], path: str) -> None:
    """Literal logins become certificate principals, so they must be valid Unix logins."""
    from . import traits

    for i, value in enumerate(values):
        if "{{" not in value and not traits.is_valid_login(value):
            ctx.fail(f'{path}[{i}] "{value}" is not a valid Unix login; use letters, digits, "_", "." and "-", '
                     f'starting with a letter or "_", at most {traits.MAX_LOGIN_LENGTH} characters')


def _selector(ctx: _Ctx, value: Any, path: str) -> dict[str, list[str]]:
    """A label selector ``{key: value or [values]}`` → ``{key: [values]}``, patterns checked."""
    from . import labels  # lazily, so importing resources does not need re2

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
        if "{{" in key:
            _check_templates(ctx, [key], f"a key of {path}", indexed=False)
        _check_templates(ctx, selector[key], where)
    return selector


def _role_map(ctx: _Ctx, value: Any, path: str) -> list[dict]:
    from . import rolemap  # lazily: rolemap needs re2

    try:
        return rolemap.validate_role_map(copy.deepcopy(value), existing_local_roles=None)
    except BadParameter as exc:
        ctx.wrap(exc, path, lead="role_map")


# --------------------------------------------------------------------------- validate
def validate(resource: Any, *, where: str = "", allow_read_only: bool = False) -> dict:
    """Check one resource and return its normalised deep copy; BadParameter on any problem.

    ``where`` says where the resource came from (``resource 2 in trusted.yaml``) and is
    put into messages. Read-only kinds (node, cert_authority) are refused — they are
    not created from files — unless ``allow_read_only`` is set (to normalise what the
    server returned).
    """
    ctx = _Ctx(None, None, where)
    if not isinstance(resource, dict):
        ctx.fail(f"a resource must be a mapping with kind, metadata and spec, not {_describe(resource)}")
    if resource.get("kind") in (None, ""):
        ctx.fail('missing "kind"; add kind: role, user, token or trusted_cluster')
    if not isinstance(resource["kind"], str):
        ctx.fail(f'"kind" must be a string, not {_describe(resource["kind"])}; use kind: role, user, token or '
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
            ctx.fail(f"metadata must be a mapping, not {_describe(metadata)}; write metadata: {{name: NAME}}")
        ctx.fail(f'missing "metadata.name"; give the {kind} a name, e.g. metadata: {{name: NAME}}')
    raw_name = metadata["name"]
    ctx.name = str(raw_name) if isinstance(raw_name, (str, int)) and not isinstance(raw_name, bool) else None
    if kind in READ_ONLY_KINDS and not allow_read_only:
        ctx.fail(_READ_ONLY_MESSAGES[kind])
    top = ["kind", "version", "metadata"] + (["status"] if kind in ("remote_cluster", "node") else [])
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
        shown = f'"{version}"' if isinstance(version, str) else _describe(version)
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
                 f"not {_describe(traits_in)}")
    traits = {}
    for key, values in (traits_in or {}).items():
        if not isinstance(key, str) or not _TRAIT_NAME_RE.fullmatch(key):
            ctx.fail(f"spec.traits has an invalid trait name {key!r}; use a name without spaces, "
                     f"quotes or braces, e.g. logins")
        traits[key] = _string_list(ctx, values, _child("spec.traits", key))
        if key == "logins":
            _check_logins(ctx, traits[key], "spec.traits.logins")
    return {"metadata": meta, "spec": {"roles": roles, "traits": traits}}


def _validate_token(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    meta = _metadata(ctx, metadata, ("expires",))
    spec = _mapping(ctx, res.get("spec"), "spec")
    _check_fields(ctx, spec, ("roles", "labels", "token"), "spec",
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
    return {"metadata": meta, "spec": out_spec}


def _validate_trusted_cluster(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    meta = _metadata(ctx, metadata, ())
    spec = _mapping(ctx, res.get("spec"), "spec")
    fields = ("enabled", "token", "tunnel_addr", "web_proxy_addr", "role_map")
    _check_fields(ctx, spec, fields, "spec")
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
    }
    return {"metadata": meta, "spec": out_spec}


def _validate_remote_cluster(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    meta = _metadata(ctx, metadata, ("labels",))
    status = _mapping(ctx, res.get("status"), "status")
    _check_fields(ctx, status, ("connection", "last_heartbeat"), "status")
    connection = _string(ctx, status.get("connection"), "status.connection", default="offline")
    if connection not in CONNECTION_STATES:
        ctx.fail(f'status.connection "{connection}" is not valid; use online or offline')
    return {"metadata": meta, "status": {
        "connection": connection,
        "last_heartbeat": _timestamp(ctx, status.get("last_heartbeat"), "status.last_heartbeat")}}


def _validate_node(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    meta = _metadata(ctx, metadata, ("labels",))
    spec = _mapping(ctx, res.get("spec"), "spec")
    _check_fields(ctx, spec, ("addr", "hostname", "cluster_name"), "spec")
    status = _mapping(ctx, res.get("status"), "status")
    _check_fields(ctx, status, ("last_heartbeat",), "status")
    cluster = _string(ctx, spec.get("cluster_name"), "spec.cluster_name")
    if cluster:
        _name(ctx, cluster, "spec.cluster_name")
    return {"metadata": meta,
            "spec": {"addr": _string(ctx, spec.get("addr"), "spec.addr"),
                     "hostname": _string(ctx, spec.get("hostname"), "spec.hostname"),
                     "cluster_name": cluster},
            "status": {"last_heartbeat": _timestamp(ctx, status.get("last_heartbeat"), "status.last_heartbeat")}}


def _validate_cert_authority(ctx: _Ctx, res: dict, metadata: dict) -> dict:
    _check_fields(ctx, metadata, ("name",), "metadata", tolerated=("id",))
    name = _string(ctx, metadata["name"], "metadata.name")
    cluster_part, _, type_part = name.partition("/")
    _name(ctx, cluster_part, "metadata.name")
    if type_part and type_part not in CA_TYPES:
        ctx.fail(f'metadata.name "{name}" must be CLUSTER or CLUSTER/TYPE with TYPE one of {", ".join(CA_TYPES)}')
    spec = _mapping(ctx, res.get("spec"), "spec")
    _check_fields(ctx, spec, ("type", "cluster_name", "active_keys", "role_map", "active", "fingerprint"), "spec")
    ca_type = _string(ctx, spec.get("type"), "spec.type")
    if ca_type not in CA_TYPES:
        ctx.fail(f'spec.type "{ca_type}" is not a CA type; use one of {", ".join(CA_TYPES)}')
    cluster = _required_string(ctx, spec.get("cluster_name"), "spec.cluster_name",
                               "name the cluster this authority belongs to")
    _name(ctx, cluster, "spec.cluster_name")
    return {"metadata": {"name": name},
            "spec": {"type": ca_type, "cluster_name": cluster,
                     "active_keys": _string_list(ctx, spec.get("active_keys"), "spec.active_keys"),
                     "role_map": _role_map(ctx, spec.get("role_map"), "spec.role_map"),
                     "active": _bool(ctx, spec.get("active"), "spec.active", True),
                     "fingerprint": _string(ctx, spec.get("fingerprint"), "spec.fingerprint")}}


_VALIDATORS = {"role": _validate_role, "user": _validate_user, "token": _validate_token,
               "trusted_cluster": _validate_trusted_cluster, "remote_cluster": _validate_remote_cluster,
               "node": _validate_node, "cert_authority": _validate_cert_authority}


# --------------------------------------------------------------------------- parse
def _make_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """Safe YAML that keeps timestamps as text and refuses duplicate keys."""

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(loader, node):
        loader.flatten_mapping(node)
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value, not a list or mapping",
                    key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key "{key}"; give each key once', key_node.start_mark)
        return loader.construct_mapping(node, deep=True)

    Loader.add_constructor("tag:yaml.org,2002:map", construct_mapping)
    return Loader


_LOADER = None


def _load_yaml(text: str, source: str) -> list:
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _make_loader()
    loader = _LOADER(text)
    docs = []
    try:
        while loader.check_data():
            docs.append(loader.get_data())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None and mark is not None and start.line != mark.line:
            problem += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
        raise BadParameter(f"invalid YAML in {source}{at}: {problem}") from None
    finally:
        loader.dispose()
    return docs


def parse_documents(text: Any, source: str = "<stdin>", *, allow_read_only: bool = False) -> list[dict]:
    """Every resource in ``text`` (multi-document YAML, a JSON object or a JSON list), validated.

    Empty documents are skipped. Nothing is returned unless every resource is valid, so
    the caller never applies half a file.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadParameter(f"{source} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if not isinstance(text, str):
        raise BadParameter(f"{source} must be YAML or JSON text, not {_describe(text)}")
    stripped = text.lstrip("\ufeff \t\r\n")
    docs: list = []
    if stripped[:1] in ("{", "["):
        try:
            docs = [json.loads(stripped)]
        except ValueError as exc:
            json_error = exc
            try:
                docs = _load_yaml(stripped, source)
            except BadParameter:
                raise BadParameter(f"invalid JSON in {source} at line {json_error.lineno}, column "
                                   f"{json_error.colno}: {json_error.msg}") from None
    else:
        docs = _load_yaml(text, source)
    items = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, list):
            items.extend(item for item in doc if item is not None)
        else:
            items.append(doc)
    if not items:
        raise BadParameter(f"{source} contains no resources; write at least one resource with kind, "
                           f"metadata and spec")
    out, seen = [], {}
    for index, item in enumerate(items, start=1):
        where = f"resource {index} in {source}"
        res = validate(item, where=where, allow_read_only=allow_read_only)
        key = (res["kind"], res["metadata"]["name"])
        if key in seen:
            raise BadParameter(f'{where}: {key[0]} "{key[1]}" is already defined by resource {seen[key]}; '
                               f"keep only one of them")
        seen[key] = index
        out.append(res)
    return out


# --------------------------------------------------------------------------- render
_TOP_ORDER = ("kind", "version", "metadata", "spec", "status")
_META_ORDER = ("name", "description", "labels", "expires")


def redact(resource: dict, *, with_secrets: bool = False) -> dict:
    """A deep copy in display order, secrets (``spec.token``) removed unless asked for."""
    res = copy.deepcopy(resource)
    if not isinstance(res, dict):
        return res
    ordered = {k: res[k] for k in _TOP_ORDER if k in res}
    ordered.update((k, v) for k, v in res.items() if k not in ordered)
    meta = ordered.get("metadata")
    if isinstance(meta, dict):
        ordered["metadata"] = {k: meta[k] for k in _META_ORDER if k in meta}
        ordered["metadata"].update((k, v) for k, v in meta.items() if k not in ordered["metadata"])
    spec = ordered.get("spec")
    if not with_secrets and isinstance(spec, dict):
        for field in SECRET_FIELDS.get(str(ordered.get("kind")), ()):
            spec.pop(field, None)
    return ordered


def render(resources, fmt: str = "yaml", *, with_secrets: bool = False) -> str:
    """Resources as YAML documents (``---`` between), a JSON list, or text tables."""
    if isinstance(resources, dict):
        resources = [resources]
    items = [redact(r, with_secrets=with_secrets) for r in resources or []]
    if fmt == "json":
        return json.dumps(items, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return "---\n".join(_dump_yaml(item) for item in items)
    if fmt == "text":
        return _render_text(items)
    raise BadParameter(f'unknown output format "{fmt}"; use yaml, json or text')


def _dump_yaml(data) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    def str_presenter(dumper, value):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, str_presenter)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=4096)


def _fmt_labels(labels) -> str:
    if not isinstance(labels, dict) or not labels:
        return ""
    parts = []
    for key, value in labels.items():
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else "[" + ",".join(map(str, value)) + "]"
        parts.append(f"{key}={value}")
    return ",".join(parts)


def _fmt_list(values) -> str:
    return ",".join(map(str, values)) if isinstance(values, (list, tuple)) else str(values or "")


def _fmt_role_map(role_map) -> str:
    parts = []
    for entry in role_map or []:
        if isinstance(entry, dict):
            parts.append(f"{entry.get('remote', '')} -> {_fmt_list(entry.get('local', []))}")
    return "; ".join(parts)


def _g(res: dict, *path, default=""):
    cur: Any = res
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return default
        cur = cur[key]
    return cur


def _ttl_text(value) -> str:
    return format_duration(value) if isinstance(value, int) and not isinstance(value, bool) else str(value or "")


_TEXT_COLUMNS = {
    "role": (("NAME", lambda r: _g(r, "metadata", "name")),
             ("LOGINS", lambda r: _fmt_list(_g(r, "spec", "allow", "logins", default=[]))),
             ("NODE LABELS", lambda r: _fmt_labels(_g(r, "spec", "allow", "node_labels", default={}))),
             ("CLUSTER LABELS", lambda r: _fmt_labels(_g(r, "spec", "allow", "cluster_labels", default={}))),
             ("MAX TTL", lambda r: _ttl_text(_g(r, "spec", "options", "max_session_ttl")))),
    "user": (("NAME", lambda r: _g(r, "metadata", "name")),
             ("ROLES", lambda r: _fmt_list(_g(r, "spec", "roles", default=[]))),
             ("LOGINS", lambda r: _fmt_list(_g(r, "spec", "traits", "logins", default=[])))),
    "token": (("NAME", lambda r: _g(r, "metadata", "name")),
              ("TYPE", lambda r: _fmt_list(_g(r, "spec", "roles", default=[]))),
              ("LABELS", lambda r: _fmt_labels(_g(r, "spec", "labels", default={}))),
              ("EXPIRES", lambda r: _g(r, "metadata", "expires") or "never")),
    "trusted_cluster": (("NAME", lambda r: _g(r, "metadata", "name")),
                        ("ENABLED", lambda r: str(_g(r, "spec", "enabled", default=True)).lower()),
                        ("WEB PROXY", lambda r: _g(r, "spec", "web_proxy_addr")),
                        ("TUNNEL", lambda r: _g(r, "spec", "tunnel_addr")),
                        ("ROLE MAP", lambda r: _fmt_role_map(_g(r, "spec", "role_map", default=[])))),
    "remote_cluster": (("NAME", lambda r: _g(r, "metadata", "name")),
                       ("STATUS", lambda r: _g(r, "status", "connection")),
                       ("LAST HEARTBEAT", lambda r: _g(r, "status", "last_heartbeat")),
                       ("LABELS", lambda r: _fmt_labels(_g(r, "metadata", "labels", default={})))),
    "node": (("NAME", lambda r: _g(r, "metadata", "name")),
             ("ADDRESS", lambda r: _g(r, "spec", "addr")),
             ("LABELS", lambda r: _fmt_labels(_g(r, "metadata", "labels", default={})))),
    "cert_authority": (("CLUSTER", lambda r: _g(r, "spec", "cluster_name")),
                       ("TYPE", lambda r: _g(r, "spec", "type")),
                       ("ACTIVE", lambda r: str(_g(r, "spec", "active", default=True)).lower()),
                       ("FINGERPRINT", lambda r: _g(r, "spec", "fingerprint"))),
}
_GENERIC_COLUMNS = (("KIND", lambda r: str(r.get("kind", ""))), ("NAME", lambda r: _g(r, "metadata", "name")))


def _render_text(items: list) -> str:
    """One aligned table per kind, in the order the kinds first appear."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(str(item.get("kind", "")) if isinstance(item, dict) else "", []).append(item)
    tables = []
    for kind, group in groups.items():
        columns = _TEXT_COLUMNS.get(kind, _GENERIC_COLUMNS)
        rows = [[str(get(r)) if isinstance(r, dict) else str(r) for _, get in columns] for r in group]
        headers = [h for h, _ in columns]
        widths = [max(len(row[i]) for row in [headers] + rows) for i in range(len(headers))]
        lines = [headers, ["-" * w for w in widths]] + rows
        tables.append("\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                                for line in lines) + "\n")
    return "\n".join(tables)
