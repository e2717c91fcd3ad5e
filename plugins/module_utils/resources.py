# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Build the resources modules send to the agent, and the helpers their options need.

The agent validates and normalises every resource, and answers a dry run
(``PUT /v1/resources?dry_run=true``) with the normalised resource, what is stored
and whether the write would change anything; the modules decide ``changed`` from
that, so nothing here re-implements the agent's normalisation. What remains is
module-side: building a request from module options, reading durations and times
the modules use themselves (join tokens), and shaping Ansible's diff.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import calendar
import copy
import re
import time

integer_types = (int,)
string_types = (str,)

TOKEN_TYPES = ("trusted_cluster", "node", "proxy")

_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")
_DURATION_UNITS = {"h": 3600, "m": 60, "s": 1}
_RFC3339_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.I)


class ResourceError(ValueError):
    """Bad module input; ``str(err)`` names the option and the fix."""


# --------------------------------------------------------------------------- scalars
def parse_duration(value, what):
    """``1h30m``, ``15m``, ``90s``, a whole number of seconds (int or digits) → int seconds."""
    if isinstance(value, bool) or not isinstance(value, integer_types + string_types + (float,)):
        raise ResourceError("%s must be a duration like 1h30m, 15m or 90s, not %r" % (what, value))
    if isinstance(value, float):
        if value != int(value):
            raise ResourceError("%s must be a whole number of seconds, not %r" % (what, value))
        return int(value)
    if isinstance(value, integer_types):
        return int(value)
    text = value.strip()
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text)
    if body.isdigit():
        return sign * int(body)
    pos, seconds = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART_RE.match(body, pos)
        if not match:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise ResourceError('%s "%s" is not a valid duration; write it like 1h30m, 15m or 90s' % (what, value))
    if abs(seconds - round(seconds)) > 1e-6:
        raise ResourceError('%s "%s" is not a whole number of seconds' % (what, value))
    return sign * int(round(seconds))


def parse_ttl(value, what):
    seconds = parse_duration(value, what)
    if seconds <= 0:
        raise ResourceError("%s must be positive, e.g. 15m or 12h" % what)
    return seconds


def parse_time(text):
    """RFC 3339 (``2024-05-01T12:00:00.123Z``) → unix time; None when empty or unparsable."""
    match = _RFC3339_RE.match(text or "")
    if not match:
        return None
    year, month, day, hour, minute, sec = (int(match.group(i)) for i in range(1, 7))
    frac = float(match.group(7)) if match.group(7) else 0.0
    epoch = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0)) + frac
    zone = match.group(8).upper()
    if zone != "Z":
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        epoch -= offset if zone[0] == "+" else -offset
    return epoch


def seconds_until(text, now=None):
    """Seconds from now until the RFC 3339 time ``text`` (negative once past); None if unknown."""
    when = parse_time(text)
    if when is None:
        return None
    return when - (time.time() if now is None else now)


def _scalar(value, what):
    if isinstance(value, bool) or value is None or not isinstance(value, integer_types + string_types + (float,)):
        raise ResourceError("%s must be a string, not %r" % (what, value))
    return str(value).strip()


def string_list(value, what):
    """None → []; a string → [it]; every entry a non-empty string (numbers become text)."""
    if value is None:
        return []
    if isinstance(value, string_types):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ResourceError("%s must be a list of strings, not %r" % (what, value))
    out = []
    for index, item in enumerate(value):
        text = _scalar(item, "%s[%d]" % (what, index))
        if not text:
            raise ResourceError("%s[%d] is an empty string; remove it" % (what, index))
        out.append(text)
    return out


def static_labels(value, what):
    """``{key: value}`` with text values (metadata and token labels)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ResourceError("%s must be a mapping of label names to values, e.g. {env: prod}" % what)
    out = {}
    for key, val in value.items():
        if not isinstance(key, string_types) or not key:
            raise ResourceError("%s has a label name %r that is not a non-empty string" % (what, key))
        out[key] = _scalar(val, "%s.%s" % (what, key))
    return out


# --------------------------------------------------------------------------- kinds
def _given(mapping):
    """The options of a module suboption dict that were set (Ansible fills the rest with None)."""
    return dict((k, v) for k, v in (mapping or {}).items() if v is not None)


def role_request(name, description=None, labels=None, allow=None, deny=None, options=None):
    """The role to send for these module options; the agent fills in every default."""
    metadata = {"name": name}
    if description is not None:
        metadata["description"] = description
    if labels is not None:
        metadata["labels"] = labels
    spec = dict((key, _given(value)) for key, value in (("options", options), ("allow", allow), ("deny", deny))
                if _given(value))
    return {"kind": "role", "metadata": metadata, "spec": spec}


def user_request(name, roles, traits=None, logins=None):
    """The user to send (``logins`` is the ``logins`` trait)."""
    if traits is not None and not isinstance(traits, dict):
        raise ResourceError("traits must be a mapping of trait names to lists, e.g. {logins: [ubuntu]}")
    out_traits = dict(traits or {})
    if logins is not None:
        if "logins" in out_traits:
            raise ResourceError("set the logins either with logins or with traits.logins, not both")
        out_traits["logins"] = logins
    return {"kind": "user", "metadata": {"name": name}, "spec": {"roles": roles or [], "traits": out_traits}}


def oidc_request(name, params):
    """The oidc connector to send for the oidc_connector module's options (the agent checks the rest)."""
    spec = {}
    for key in ("issuer_url", "client_id", "client_secret", "redirect_url", "scope", "username_claim"):
        if params.get(key) is not None:
            spec[key] = params[key]
    entries = []
    for index, entry in enumerate(params.get("claims_to_roles") or []):
        roles = string_list(entry.get("roles"), "claims_to_roles[%d].roles" % index)
        if not roles:
            raise ResourceError("claims_to_roles[%d].roles is empty; list the roles that claim %s=%s gives"
                                % (index, entry.get("claim"), entry.get("value")))
        entries.append({"claim": entry.get("claim"), "value": entry.get("value"), "roles": roles})
    spec["claims_to_roles"] = entries
    return {"kind": "oidc", "metadata": {"name": name}, "spec": spec}


def role_map(value, what="role_map"):
    """``[{remote, local}]`` with ``local`` always a list."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ResourceError("%s must be a list of {remote, local} entries" % what)
    out = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ResourceError("%s[%d] must be a mapping with remote and local" % (what, index))
        unknown = sorted(k for k in entry if k not in ("remote", "local"))
        if unknown:
            raise ResourceError('%s[%d] has unknown key "%s"; use only remote and local' % (what, index, unknown[0]))
        remote = _scalar(entry.get("remote"), "%s[%d].remote" % (what, index)) if entry.get("remote") is not None \
            else ""
        if not remote:
            raise ResourceError("%s[%d].remote is missing; name the root role to map, e.g. remote: access"
                                % (what, index))
        local = string_list(entry.get("local"), "%s[%d].local" % (what, index))
        if not local:
            raise ResourceError("%s[%d].local is empty; list the leaf roles that %s maps to"
                                % (what, index, remote))
        out.append({"remote": remote, "local": local})
    return out


def token_types(value):
    types = string_list(value, "type")
    parts = []
    for item in types:
        for part in item.split(","):
            part = part.strip()
            if part and part not in parts:
                parts.append(part)
    bad = [t for t in parts if t not in TOKEN_TYPES]
    if bad or not parts:
        raise ResourceError("type %s is not a token type; use one or more of %s"
                            % (", ".join(bad) or "(none)", ", ".join(TOKEN_TYPES)))
    return parts


# --------------------------------------------------------------------------- diff
def without_secrets(resource):
    """A deep copy without token values or client secrets (for diff and results)."""
    res = copy.deepcopy(resource)
    if isinstance(res, dict) and isinstance(res.get("spec"), dict):
        res["spec"].pop("token", None)
        res["spec"].pop("client_secret", None)
    return res


def diff(before, after, name):
    """Ansible's diff dict: before/after as mappings ({} when absent), secrets removed."""
    return {"before": without_secrets(before) if before else {},
            "after": without_secrets(after) if after else {},
            "before_header": name, "after_header": name}
