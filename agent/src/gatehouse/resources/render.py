"""Resources for people: display order, secrets removed, YAML, JSON or text tables."""

from __future__ import annotations

import copy
import json
from typing import Any

from ..durations import format_duration
from ..errors import BadParameter
from .schema import SECRET_FIELDS

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
    "oidc": (("NAME", lambda r: _g(r, "metadata", "name")),
             ("ISSUER", lambda r: _g(r, "spec", "issuer_url")),
             ("CLIENT ID", lambda r: _g(r, "spec", "client_id")),
             ("CLAIMS TO ROLES", lambda r: "; ".join(
                 f"{e.get('claim')}={e.get('value')} -> {_fmt_list(e.get('roles', []))}"
                 for e in _g(r, "spec", "claims_to_roles", default=[]) if isinstance(e, dict)))),
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
        rows = [[str(get(r)) if isinstance(r, dict) else str(r) for _unused, get in columns] for r in group]
        headers = [h for h, _unused in columns]
        widths = [max(len(row[i]) for row in [headers] + rows) for i in range(len(headers))]
        lines = [headers, ["-" * w for w in widths]] + rows
        tables.append("\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                                for line in lines) + "\n")
    return "\n".join(tables)
