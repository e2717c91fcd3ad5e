"""Label selectors: which nodes (node_labels) and clusters (cluster_labels) a role selects.

A selector maps a key pattern to a list of value patterns. A pattern is one of:

* ``*``            matches any non-empty string;
* ``^...$``        an RE2 regular expression, matched against the whole string;
* text with ``*`` or ``?``  a glob (``*`` any run of characters, ``?`` one character);
* anything else    the exact string.

Trait values that role templates put into a pattern are always literal text
(``literal_in_pattern``): a user whose trait is ``*`` gets no wildcard.

An empty pattern or an empty value never matches: a role template that expanded
to nothing must select nothing, and a label with an empty value counts as unset.
A selector matches when every key matches one of its values. The entry
``'*': '*'`` matches every label set, even no labels at all. A key that is a
glob or regex matches when some label whose key matches has a matching value.
An empty selector matches nothing (an allow rule without labels grants no node,
a deny rule without labels denies none).

Matching runs on the SSH session path, so compiled regexes and match results
are memoised per (pattern, value).
"""

from __future__ import annotations

import json
from functools import lru_cache

import re2

from .errors import BadParameter

WILDCARD = "*"

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are reported as exceptions, not on stderr


class InvalidPattern(BadParameter):
    """A ``^regex$`` pattern that RE2 cannot parse; ``reason`` is RE2's own words."""

    def __init__(self, message: str, pattern: str = "", reason: str = ""):
        super().__init__(message)
        self.pattern = pattern
        self.reason = reason


def is_regex(pattern: str) -> bool:
    """RE2 syntax is switched on only by a leading ``^`` and a trailing ``$``."""
    return len(pattern) >= 2 and pattern[0] == "^" and pattern[-1] == "$"


def is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


@lru_cache(maxsize=4096)
def compile_re2(regex: str):
    """Compile once per distinct regex; raise InvalidPattern with RE2's reason."""
    try:
        return re2.compile(regex, options=_RE2_OPTIONS)
    except re2.error as err:
        reason = err.args[0] if err.args else "unknown error"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise InvalidPattern(f'"{regex}" is not a valid RE2 regular expression ({reason}); '
                             f'fix the expression', regex, reason) from None


@lru_cache(maxsize=4096)
def glob_to_regex(glob: str) -> str:
    """Translate ``*``/``?`` to RE2 and quote everything else literally."""
    out, literal = [], []
    for char in glob:
        if char in "*?":
            if literal:
                out.append(re2.escape("".join(literal)))
                literal = []
            out.append("(?s:.*)" if char == "*" else "(?s:.)")
        else:
            literal.append(char)
    if literal:
        out.append(re2.escape("".join(literal)))
    return "".join(out)


@lru_cache(maxsize=65536)
def _regex_fullmatch(regex: str, value: str) -> bool:
    # Memoised because the same node labels are checked on every session.
    try:
        return compile_re2(regex).fullmatch(value) is not None
    except InvalidPattern:
        return False  # fail closed; roles are validated when they are created


def _pattern_regex(pattern: str) -> str | None:
    """The RE2 source for a regex or glob pattern, None for ``*`` and exact text."""
    if is_regex(pattern):
        return pattern
    if pattern != WILDCARD and is_glob(pattern):
        return glob_to_regex(pattern)
    return None


def literal_in_pattern(prefix: str, literal: str, suffix: str) -> str:
    """The pattern PREFIX + LITERAL + SUFFIX in which LITERAL (a user's trait value) is plain text.

    The role author's PREFIX and SUFFIX keep their meaning (a ``^...$`` template stays a
    regex, ``*``/``?`` around the value stay globs), but a trait value of ``*``,
    ``^.*$`` or ``prod-?`` matches only labels that say exactly that.
    """
    if prefix.startswith("^") and suffix.endswith("$"):
        return prefix + re2.escape(literal) + suffix
    whole = prefix + literal + suffix
    if not is_glob(literal) and not is_regex(whole):
        return whole
    return "^" + glob_to_regex(prefix) + re2.escape(literal) + glob_to_regex(suffix) + "$"


def value_matches(pattern: str, value: str) -> bool:
    """Whether one selector pattern matches one label key or value."""
    if not pattern or not value:
        return False
    if pattern == WILDCARD:
        return True
    regex = _pattern_regex(pattern)
    if regex is None:
        return pattern == value
    return _regex_fullmatch(regex, value)


def validate_pattern(pattern) -> None:
    """Raise BadParameter for a pattern that is not a string or an unparsable ``^regex$``."""
    if not isinstance(pattern, str):
        raise BadParameter(f"label pattern {pattern!r} must be a string, got "
                           f"{type(pattern).__name__}; quote it in YAML")
    if is_regex(pattern):
        try:
            compile_re2(pattern)
        except InvalidPattern as err:
            raise InvalidPattern(f"label pattern {err.message} or drop the leading ^ and trailing $ "
                                 f"to match it as text", err.pattern, err.reason) from None


def normalize_selector(selector) -> dict[str, list[str]]:
    """YAML selector (values as a string or a list) → {key: [values]}; BadParameter on bad input."""
    if selector is None:
        return {}
    if not isinstance(selector, dict):
        raise BadParameter(f"a label selector must be a mapping of label name to values, got "
                           f"{type(selector).__name__}; write it as {{env: [prod]}}")
    out: dict[str, list[str]] = {}
    for key, values in selector.items():
        if not isinstance(key, str):
            raise BadParameter(f"label selector key {key!r} must be a string, got "
                               f"{type(key).__name__}; quote it in YAML")
        out[key] = _normalize_values(key, values)
        for pattern in (key, *out[key]):
            if "{{" not in pattern:  # templates are checked after expansion
                validate_pattern(pattern)
    return out


def _normalize_values(key: str, values) -> list[str]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise BadParameter(f'label selector values for "{key}" must be a string or a list of strings, '
                           f"got {type(values).__name__}; write them as [a, b]")
    for value in values:
        if not isinstance(value, str):
            raise BadParameter(f'label selector value {value!r} for "{key}" must be a string, got '
                               f'{type(value).__name__}; quote it in YAML ("{value}")')
    return list(dict.fromkeys(values))


def quote_list(values) -> str:
    """["a", "b"] rendering used in explanations."""
    return json.dumps(list(values), ensure_ascii=False)


def format_labels(labels: dict[str, str]) -> str:
    """env=prod, team=db (sorted) for messages."""
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


class _Term:
    """One selector entry: a key pattern and the value patterns it accepts.

    Values are split once into exact strings and regexes so a match is a set
    lookup plus memoised regex calls.
    """

    __slots__ = ("key", "values", "match_all", "literal_key", "_any", "_exact", "_regexes", "_key_regex")

    def __init__(self, key: str, values: list[str]):
        self.key = key
        self.values = tuple(values)
        self.match_all = key == WILDCARD and WILDCARD in self.values
        self._key_regex = _pattern_regex(key) if key else None
        self.literal_key = self._key_regex is None and key != WILDCARD
        self._any = WILDCARD in self.values
        self._exact = frozenset(v for v in self.values if v and _pattern_regex(v) is None)
        self._regexes = tuple(r for r in map(_pattern_regex, self.values) if r)

    def any_value(self, value: str) -> bool:
        if not value:
            return False
        if self._any or value in self._exact:
            return True
        for regex in self._regexes:
            if _regex_fullmatch(regex, value):
                return True
        return False

    def _key_matches(self, key: str) -> bool:
        if not key:
            return False
        return self._key_regex is None or _regex_fullmatch(self._key_regex, key)

    def match(self, labels: dict[str, str]) -> str | None:
        """The matched ``key=value`` or None; ``''`` for the '*': '*' entry."""
        if self.match_all:
            return ""
        if self.literal_key:
            value = labels.get(self.key) if self.key else None
            if value is not None and self.any_value(value):
                return f"{self.key}={value}"
            return None
        for key, value in labels.items():
            if self._key_matches(key) and self.any_value(value):
                return f"{key}={value}"
        return None

    def explain(self, labels: dict[str, str]) -> str:
        """Why this entry failed, for people reading a denial."""
        wanted = quote_list(self.values)
        if not self.key:
            return "a label key in the role expanded to nothing (missing trait), so it matches no label"
        if not self.literal_key:
            return f'no label with a key matching "{self.key}" has a value in {wanted}'
        if self.key not in labels:
            return f'label "{self.key}" is not set, role requires one of {wanted}'
        return f'label "{self.key}" is "{labels[self.key]}", role requires one of {wanted}'

    def requirement(self) -> str:
        """Short form ``env in [demo]`` for summaries across several roles."""
        shown = ", ".join(v or "<missing trait>" for v in self.values)
        return f"{self.key or '<missing trait>'} in [{shown}]"


class Selector:
    """A normalised selector compiled for repeated matching."""

    __slots__ = ("source", "_terms")

    def __init__(self, selector: dict[str, list[str]]):
        self.source = selector
        self._terms = tuple(_Term(k, v) for k, v in selector.items())

    def __bool__(self) -> bool:
        return bool(self._terms)

    def match(self, labels: dict[str, str]) -> tuple[bool, str]:
        """(True, matched labels) or (False, explanation of the first failing key)."""
        if not self._terms:
            return False, "the selector is empty, so it matches nothing"
        matched = []
        for term in self._terms:
            hit = term.match(labels)
            if hit is None:
                return False, term.explain(labels)
            if hit:
                matched.append(hit)
        return True, ", ".join(matched) if matched else "'*': '*'"

    def requirement(self, labels: dict[str, str]) -> str:
        """Short form of the first unmet requirement (``env in [demo]``); "" when there is none."""
        if not self._terms:
            return ""
        for term in self._terms:
            if term.match(labels) is None:
                return term.requirement()
        return ""


def compile_selector(selector) -> Selector:
    return Selector(normalize_selector(selector))


def selector_matches(selector, labels: dict[str, str]) -> tuple[bool, str]:
    """Whether ``labels`` satisfy ``selector``, with a short explanation."""
    return compile_selector(selector).match(labels or {})
