"""Trusted-cluster role mapping: which local roles a user from the root cluster gets.

A role map is a list of ``{remote: PATTERN, local: [TEMPLATE, ...]}`` entries.

``remote`` is an RE2 regular expression only when it starts with ``^`` and ends
with ``$``; otherwise it is literal text in which each ``*`` is a capture group
``(.*)`` (every other character, ``?`` and ``.`` included, is literal). Either
way the whole remote role name must match.

In ``local``, ``$1`` / ``${1}`` / ``$name`` / ``${name}`` expand captures (group 0
is the whole match) and ``$$`` is a literal ``$``. As in Go's regexp templates the
bare form takes the longest run of letters, digits and underscores (``$1x`` is
the group named ``1x``; write ``${1}x``), a ``$`` that starts no reference stays
as is, and a group that does not exist or did not take part expands to "".
An expansion that ends up empty is dropped.

Every entry applies (no first-match-wins). Results come out entry by entry,
then per remote role in the given order, then per local template, with
duplicates removed (first occurrence kept). An identity with no remote roles
maps to nothing, whatever the entries: ``remote: "*"`` admits every root user
holding some role, never a role-less certificate such as a root proxy's tunnel
certificate.
"""

from __future__ import annotations

import re
from functools import lru_cache

import re2

from .errors import BadParameter, NotFound
from .labels import InvalidPattern, compile_re2, is_regex

WILDCARD = "*"
_ENTRY_KEYS = ("remote", "local")
# A reference after "$": ${name} or the longest bare run of [A-Za-z0-9_].
_REFERENCE = re.compile(r"\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+)")


class InvalidRoleMap(BadParameter):
    """The role map (or one entry of it) cannot be used."""


class NoMatch(NotFound):
    """A value does not match the pattern given to replace_regexp."""


@lru_cache(maxsize=4096)
def pattern_regex(pattern: str) -> str:
    """RE2 source for a remote pattern: ``^...$`` as is, otherwise literal with ``*`` → ``(.*)``."""
    if is_regex(pattern):
        regex = pattern
    else:
        parts = [re2.escape(part) for part in pattern.split(WILDCARD)]
        regex = "(?s)" + "(.*)".join(parts)
    compile_re2(regex)  # raises InvalidPattern
    return regex


@lru_cache(maxsize=65536)
def _captures(regex: str, value: str):
    """(groups by number, group numbers by name) of a full match, or None."""
    compiled = compile_re2(regex)
    match = compiled.fullmatch(value)
    if match is None:
        return None
    groups = tuple(match.group(i) or "" for i in range(compiled.groups + 1))
    return groups, compiled.groupindex


def _reference(name: str):
    """Group number for purely numeric names without a leading zero, else the name."""
    if name.isdigit() and (name == "0" or name[0] != "0") and len(name) < 9:
        return int(name)
    return name


@lru_cache(maxsize=4096)
def _parse_template(template: str) -> tuple:
    """Split a local template into literal strings and group references."""
    pieces: list = []
    literal: list[str] = []
    i = 0
    while i < len(template):
        dollar = template.find("$", i)
        if dollar < 0:
            literal.append(template[i:])
            break
        literal.append(template[i:dollar])
        if template.startswith("$$", dollar):
            literal.append("$")
            i = dollar + 2
            continue
        ref = _REFERENCE.match(template, dollar + 1)
        if ref is None:
            literal.append("$")  # not a reference: keep the dollar sign
            i = dollar + 1
            continue
        pieces.append("".join(literal))
        literal = []
        pieces.append((_reference(ref.group(1) or ref.group(2)),))
        i = ref.end()
    pieces.append("".join(literal))
    return tuple(p for p in pieces if p != "")


def _expand(pieces: tuple, captures) -> str:
    groups, names = captures
    out = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        ref = piece[0]
        index = ref if isinstance(ref, int) else names.get(ref, -1)
        if 0 <= index < len(groups):
            out.append(groups[index])
    return "".join(out)


def replace_regexp(expression: str, replacement: str, value: str) -> str:
    """Match ``value`` in full against ``expression`` (parsed like ``remote``) and expand ``replacement``.

    Raises NoMatch (a LookupError) when the value does not match and
    InvalidPattern (a ValueError) when the expression cannot be parsed.
    """
    for name, arg in (("expression", expression), ("replacement", replacement), ("value", value)):
        if not isinstance(arg, str):
            raise BadParameter(f"the {name} given to replace_regexp must be a string, got "
                               f"{type(arg).__name__}; pass text")
    try:
        regex = pattern_regex(expression)
    except InvalidPattern as err:
        raise InvalidPattern(f"pattern {err.message}", err.pattern, err.reason) from None
    captures = _captures(regex, value)
    if captures is None:
        raise NoMatch(f'"{value}" does not match the pattern "{expression}"; '
                      f'check the value or widen the pattern')
    return _expand(_parse_template(replacement), captures)


def replace_all_regexp(regex: str, replacement: str, value: str) -> str:
    """Replace every match of the RE2 ``regex`` (a search, not a full match) in ``value`` with
    ``replacement``, expanded per match with the same ``$1``/``${name}`` rules as role maps.

    Raises NoMatch when the regex matches nowhere in the value and InvalidPattern when it
    cannot be compiled (role templates' ``regexp.replace``)."""
    compiled = compile_re2(regex)
    pieces = _parse_template(replacement)
    out, last, matched = [], 0, False
    for match in compiled.finditer(value):
        if matched and match.start() == match.end() == last:
            continue  # as in Go: an empty match right after a match is not a match
        matched = True
        groups = tuple(match.group(i) or "" for i in range(compiled.groups + 1))
        out.append(value[last:match.start()])
        out.append(_expand(pieces, (groups, compiled.groupindex)))
        last = match.end()
    if not matched:
        raise NoMatch(f'"{value}" does not match the regular expression "{regex}"; check the value or widen it')
    out.append(value[last:])
    return "".join(out)


def _type(value) -> str:
    return type(value).__name__


def _check_remote(index: int, entry: dict) -> str:
    remote = entry.get("remote")
    if remote is None or remote == "":
        raise InvalidRoleMap(f'role_map entry {index} has no "remote" role; set remote to a role name, '
                             f'a pattern with "*" or a ^regex$')
    if not isinstance(remote, str):
        raise InvalidRoleMap(f'role_map entry {index} has a "remote" of type {_type(remote)}; '
                             f'set it to a single role name, pattern or ^regex$ as a string')
    try:
        pattern_regex(remote)
    except InvalidPattern as err:
        raise InvalidRoleMap(f"role_map entry {index} remote {err.message} or drop the leading ^ "
                             f"and trailing $ to match it as text") from None
    return remote


def _check_local(index: int, entry: dict, remote: str, existing: set[str] | None) -> list[str]:
    local = entry.get("local")
    if isinstance(local, str) and local:
        local = [local]
    if local is None or local == "" or (isinstance(local, (list, tuple)) and not local):
        raise InvalidRoleMap(f'role_map entry {index} (remote "{remote}") has no "local" roles; '
                             f"list at least one local role, e.g. local: [visitor]")
    if not isinstance(local, (list, tuple)):
        raise InvalidRoleMap(f'role_map entry {index} has a "local" of type {_type(local)}; '
                             f"write it as a list of role names, e.g. local: [visitor]")
    for role in local:
        _check_local_role(index, remote, role, existing)
    return list(dict.fromkeys(local))


def _check_local_role(index: int, remote: str, role, existing: set[str] | None) -> None:
    if not isinstance(role, str) or not role:
        raise InvalidRoleMap(f'role_map entry {index} (remote "{remote}") has a local role {role!r} '
                             f"that is not a role name; write each local role as a non-empty string")
    if role == WILDCARD:
        raise InvalidRoleMap(f'role_map entry {index} (remote "{remote}") maps to the wildcard "*" '
                             f"as a local role, which is not allowed; name the local roles explicitly")
    if existing is not None and "$" not in role and role not in existing:
        raise InvalidRoleMap(f'role_map entry {index} maps remote "{remote}" to local role "{role}", '
                             f"which does not exist on this cluster; create the role first or fix the name")


def _check_entry(index: int, entry, existing: set[str] | None) -> dict:
    if not isinstance(entry, dict):
        raise InvalidRoleMap(f'role_map entry {index} must be a mapping with "remote" and "local", '
                             f"got {_type(entry)}; write it as {{remote: ROLE, local: [ROLE]}}")
    unknown = [k for k in entry if k not in _ENTRY_KEYS]
    if unknown:
        raise InvalidRoleMap(f'role_map entry {index} has unknown key "{unknown[0]}"; '
                             f'use only "remote" and "local"')
    remote = _check_remote(index, entry)
    return {"remote": remote, "local": _check_local(index, entry, remote, existing)}


def validate_role_map(role_map, existing_local_roles: set[str] | None = None) -> list[dict]:
    """Return the normalised map (``local`` always a list) or raise InvalidRoleMap naming the entry.

    Local roles are checked against ``existing_local_roles`` only when it is given,
    and only for templates without ``$`` (an expansion is known only at login).
    """
    if role_map is None:
        return []
    if not isinstance(role_map, (list, tuple)):
        raise InvalidRoleMap(f"role_map must be a list of {{remote, local}} entries, got "
                             f'{_type(role_map)}; write it as a YAML list ("- remote: ROLE")')
    out: list[dict] = []
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(role_map, 1):
        checked = _check_entry(index, entry, existing_local_roles)
        remote = checked["remote"]
        if remote in first_seen:
            raise InvalidRoleMap(f'role_map entries {first_seen[remote]} and {index} both map remote '
                                 f'"{remote}"; merge their local roles into one entry')
        first_seen[remote] = index
        out.append(checked)
    return out


def _candidates(remote_roles) -> list[str]:
    # No remote roles: nothing to match, so nothing maps (not even "*").
    return [r for r in (remote_roles or []) if isinstance(r, str) and r]


def _entry_results(entry: dict, remote_roles: list[str]):
    """Yield (remote role, local roles it produced) for each remote role the entry matches."""
    regex = pattern_regex(entry["remote"])
    templates = [_parse_template(t) for t in entry["local"]]
    for role in remote_roles:
        captures = _captures(regex, role)
        if captures is not None:
            yield role, [r for r in (_expand(t, captures) for t in templates) if r]


def map_roles(role_map, remote_roles: list[str]) -> list[str]:
    """Local role names for a user holding ``remote_roles`` at the root; [] means deny."""
    out: dict[str, None] = {}
    candidates = _candidates(remote_roles)
    for entry in validate_role_map(role_map):
        for _role, produced in _entry_results(entry, candidates):
            out.update(dict.fromkeys(produced))
    return list(out)


def explain_mapping(role_map, remote_roles: list[str]) -> list[tuple[dict, str, list[str]]]:
    """(entry, remote role, local roles produced) for every entry/role pair that matched."""
    candidates = _candidates(remote_roles)
    return [(entry, role, produced)
            for entry in validate_role_map(role_map)
            for role, produced in _entry_results(entry, candidates)]


def no_mapping_message(cluster_name: str, remote_roles: list[str]) -> str:
    """The denial sentence when the role map yields no local role."""
    where = f'trusted cluster "{cluster_name}"' if cluster_name else "the trusted cluster"
    if not remote_roles:
        return (f"access denied: the user holds no roles at {where}, and a user without roles maps to no "
                f"local role; give the user a role at the root cluster")
    return (f"access denied: no role in the role map of {where} matches the remote roles "
            f"[{', '.join(remote_roles)}]; add a role_map entry for one of them")
