"""Role templates: ``{{internal.logins}}``, ``{{external.team}}`` and friends.

A role value may hold ONE template with literal text around it
(``dev-{{external.team}}-x``); whitespace inside the braces, before the value and
after it is ignored (``  {{ external.team }}`` is ``{{external.team}}``). Inside the
braces:

* ``internal.NAME`` / ``external.NAME`` / ``internal["NAME"]`` / ``external["NAME"]``
  read the user's trait NAME (the namespace does not change the lookup, but
  ``internal`` accepts only the names in INTERNAL_TRAITS so typos are caught);
* ``email.local(VAR)`` keeps the local part of each value that is one e-mail
  address, bare (``alice@example.com``) or with a display name
  (``Alice <alice@example.com>``); other values are dropped;
* ``regexp.replace(VAR, "RE", "REPLACEMENT")`` takes each value that the RE2
  regular expression RE matches (anywhere in the value, as a search), replaces
  every match with REPLACEMENT (``$1``/``${name}`` expand groups, rolemap's
  rules) and drops the values it does not match. Functions may be nested.

Strings are double-quoted (``\\"`` and ``\\\\`` are escapes, any other backslash is
kept, so ``"\\d+"`` is the regex ``\\d+``) or back-quoted (raw).

A value is a template when it holds ``{{`` or ``}}`` (is_template); a template that
does not parse (unmatched braces, two expressions, unknown names, a bad regular
expression) is an error, never literal text. A value without braces is returned
unchanged. interpolate() raises TraitMissing (a LookupError) when the trait is
unset or yields no value, and TemplateError (a ValueError) when the expression is
malformed. The apply_* helpers used on the access path never raise: they drop what
cannot be expanded (validate_template is for rejecting malformed roles when they
are created).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from email.utils import getaddresses

from .errors import BadParameter, NotFound
from .labels import InvalidPattern, compile_re2, literal_in_pattern
from .rolemap import NoMatch, replace_all_regexp

INTERNAL_TRAITS = frozenset({
    "logins", "windows_logins", "kubernetes_groups", "kubernetes_users", "db_users", "db_names",
    "db_roles", "aws_role_arns", "azure_identities", "gcp_service_accounts", "host_user_uid",
    "host_user_gid",
})
_NAMESPACES = ("internal", "external")
_FUNCTIONS = ("email.local", "regexp.replace")
_SYNTAX = ('write {{internal.NAME}}, {{external.NAME}}, {{email.local(VAR)}} or '
           '{{regexp.replace(VAR, "RE", "REPL")}}')

# Unix logins as shadow-utils useradd accepts them, plus upper case and dots
# (common for directory-backed accounts): letter or "_" first, then letters,
# digits, "_", ".", "-", an optional trailing "$" (Samba machine accounts), at
# most 32 characters. This keeps odd trait values out of certificate principals.
_LOGIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")
MAX_LOGIN_LENGTH = 32

_TOKEN = re.compile(r"""\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_-]*)"""
                    r"""|(?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<punct>[.()\[\],]))""")


class TemplateError(BadParameter):
    """A role template that cannot be parsed."""


class TraitMissing(NotFound):
    """The trait a template reads is unset, empty, or yields no value."""


@dataclass(frozen=True)
class _Var:
    name: str


@dataclass(frozen=True)
class _Call:
    function: str
    arg: object
    pattern: str = ""
    replacement: str = ""


@dataclass(frozen=True)
class _Template:
    expression: str
    prefix: str
    suffix: str
    node: object


def _error(expression: str, problem: str, fix: str) -> TemplateError:
    return TemplateError(f'role template "{expression}" {problem}; {fix}')


def _unquote(token: str) -> str:
    if token[0] == "`":
        return token[1:-1]
    body = token[1:-1]
    return re.sub(r'\\([\\"])', r"\1", body)  # other escapes stay for the regex


class _Parser:
    """Recursive descent over the text between the braces."""

    def __init__(self, expression: str, inner: str):
        self.expression = expression
        self.tokens = self._tokenize(inner)
        self.pos = 0

    def _tokenize(self, inner: str) -> list[tuple[str, str]]:
        tokens, i = [], 0
        while inner[i:].strip():
            m = _TOKEN.match(inner, i)
            if m is None:
                raise self._unexpected(inner[i:].strip()[0])
            tokens.append((m.lastgroup, m.group(m.lastgroup)))
            i = m.end()
        return tokens

    def _unexpected(self, what: str) -> TemplateError:
        shown = f'"{what}"' if what else "end of expression"
        return _error(self.expression, f"is not a valid expression (unexpected {shown})", _SYNTAX)

    def _peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def _take(self, kind: str, value: str | None = None) -> str:
        tok_kind, tok_value = self._peek()
        if tok_kind != kind or (value is not None and tok_value != value):
            raise self._unexpected(tok_value)
        self.pos += 1
        return tok_value

    def parse(self):
        node = self._expr()
        if self._peek()[0] != "end":
            raise self._unexpected(self._peek()[1])
        return node

    def _expr(self):
        first = self._take("ident")
        if self._peek() == ("punct", "["):
            self._take("punct", "[")
            name = _unquote(self._take("string"))
            self._take("punct", "]")
            return self._var(first, name)
        self._take("punct", ".")
        second = self._take("ident")
        if self._peek() == ("punct", "("):
            return self._call(f"{first}.{second}")
        return self._var(first, second)

    def _var(self, namespace: str, name: str) -> _Var:
        if namespace not in _NAMESPACES:
            raise _error(self.expression, f'uses unknown namespace "{namespace}"', "use internal or external")
        if namespace == "internal" and name not in INTERNAL_TRAITS:
            known = ", ".join(sorted(INTERNAL_TRAITS))
            raise _error(self.expression, f'refers to unknown internal trait "{name}"',
                         f"use one of [{known}] or read it as external.{name}")
        if not name:
            raise _error(self.expression, "reads a trait with an empty name", "name the trait")
        return _Var(name)

    def _args(self) -> list:
        self._take("punct", "(")
        args = []
        while self._peek() != ("punct", ")"):
            if args:
                self._take("punct", ",")
            kind, value = self._peek()
            if kind == "string":
                self.pos += 1
                args.append(_unquote(value))
            else:
                args.append(self._expr())
        self._take("punct", ")")
        return args

    def _call(self, function: str) -> _Call:
        if function not in _FUNCTIONS:
            raise _error(self.expression, f'calls unknown function "{function}"',
                         "use email.local or regexp.replace")
        args = self._args()
        if function == "email.local":
            return self._email_local(args)
        return self._regexp_replace(args)

    def _email_local(self, args: list) -> _Call:
        if len(args) != 1:
            raise _error(self.expression, f"calls email.local with {len(args)} arguments",
                         "it takes one variable, e.g. email.local(external.email)")
        if isinstance(args[0], str):
            raise _error(self.expression, "passes a string to email.local",
                         "pass a variable such as external.email")
        return _Call("email.local", args[0])

    def _regexp_replace(self, args: list) -> _Call:
        if len(args) != 3:
            raise _error(self.expression, f"calls regexp.replace with {len(args)} arguments",
                         'it takes a variable, a pattern and a replacement: regexp.replace(VAR, "RE", "REPL")')
        source, pattern, replacement = args
        if isinstance(source, str) or not isinstance(pattern, str) or not isinstance(replacement, str):
            raise _error(self.expression, "passes arguments of the wrong kind to regexp.replace",
                         'write regexp.replace(external.NAME, "RE", "REPL") with a variable first '
                         "and quoted strings after it")
        try:
            compile_re2(pattern)
        except InvalidPattern as err:
            raise _error(self.expression, f'has a regexp.replace pattern "{pattern}" that is not a valid '
                         f"RE2 regular expression ({err.reason})", "fix the pattern") from None
        return _Call("regexp.replace", source, pattern, replacement)


def is_template(value) -> bool:
    """Whether a role value is a template (holds ``{{`` or ``}}``), so it must parse as one."""
    return isinstance(value, str) and ("{{" in value or "}}" in value)


@lru_cache(maxsize=4096)
def _parse(expression: str) -> _Template:
    start = expression.find("{{")
    end = expression.find("}}", start + 2) if start >= 0 else -1
    if start < 0 or "}}" in expression[:start]:
        raise _error(expression, 'has "}}" without a matching "{{"', 'remove it or open the expression with "{{"')
    if end < 0:
        raise _error(expression, 'has "{{" without a matching "}}"', 'close the expression with "}}"')
    suffix = expression[end + 2:]
    if "{{" in suffix or "}}" in suffix or "{{" in expression[start + 2:end]:
        raise _error(expression, "contains more than one {{...}} expression",
                     "use one expression per value and list several values instead")
    prefix, inner = expression[:start], expression[start + 2:end]
    if any(brace in prefix + suffix for brace in "{}"):
        raise _error(expression, 'has a "{" or "}" outside its {{...}} expression',
                     "remove it or write the expression as {{...}}")
    if not inner.strip():
        raise _error(expression, "has an empty {{}} expression",
                     "write a variable such as {{internal.logins}} or {{external.NAME}}")
    node = _Parser(expression, inner).parse()
    # Whitespace before the value and after it is not part of it (as in the reference system).
    return _Template(expression, prefix.lstrip(), suffix.rstrip(), node)


def validate_template(expression: str) -> None:
    """Raise TemplateError if ``expression`` holds a malformed template (for role validation)."""
    if not isinstance(expression, str):
        raise TemplateError(f"role value {expression!r} must be a string, got "
                            f"{type(expression).__name__}; quote it in YAML")
    if is_template(expression):
        _parse(expression)


def _trait_values(template: _Template, name: str, traits: dict) -> list[str]:
    values = traits.get(name) if traits else None
    if values is None:
        raise TraitMissing(f'trait "{name}" is not set for this user; add it to the user\'s traits '
                           f'or remove "{template.expression}" from the role')
    if isinstance(values, str):
        values = [values]
    values = [v for v in values if isinstance(v, str) and v]
    if not values:
        raise TraitMissing(f'trait "{name}" has no values for this user; give it a value '
                           f'or remove "{template.expression}" from the role')
    return values


def email_address(value: str) -> str | None:
    """The address of a value holding exactly one e-mail address, bare or with a display name
    (``Bob <bob@example.com>`` → ``bob@example.com``); None for anything else."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        found = getaddresses([value])
    except (TypeError, ValueError, IndexError):
        return None
    if len(found) != 1:
        return None
    address = found[0][1]
    local, at, domain = address.partition("@")
    if not at or not local or not domain or "@" in domain or any(ch.isspace() for ch in address):
        return None
    return address


def _email_local(value: str) -> str:
    address = email_address(value)
    return address.partition("@")[0] if address else ""  # not one address: dropped


def _replace(pattern: str, replacement: str, value: str) -> str:
    try:
        return replace_all_regexp(pattern, replacement, value)
    except NoMatch:
        return ""  # values that do not match are dropped


def _evaluate(template: _Template, node, traits: dict) -> list[str]:
    if isinstance(node, _Var):
        return _trait_values(template, node.name, traits)
    values = _evaluate(template, node.arg, traits)
    if node.function == "email.local":
        return [r for r in map(_email_local, values) if r]
    return [r for r in (_replace(node.pattern, node.replacement, v) for v in values) if r]


def _trait_name(node) -> str:
    return node.name if isinstance(node, _Var) else _trait_name(node.arg)


def interpolate(expression: str, traits: dict[str, list[str]], *, pattern: bool = False) -> list[str]:
    """Expand one role value with the user's traits (see the module docstring for the rules).

    With ``pattern`` the value is a label pattern, and each trait value goes into it as
    literal text (labels.literal_in_pattern), never as a wildcard, glob or regex.
    """
    if not is_template(expression):
        return [expression]
    template = _parse(expression)
    values = _evaluate(template, template.node, traits)
    if pattern:
        out = list(dict.fromkeys(literal_in_pattern(template.prefix, v, template.suffix) for v in values))
    else:
        out = list(dict.fromkeys(f"{template.prefix}{v}{template.suffix}" for v in values))
    if not out:
        name = _trait_name(template.node)
        raise TraitMissing(f'role template "{expression}" expands to no value because no value of trait '
                           f'"{name}" is accepted by its function; check the user\'s "{name}" trait')
    return out


def _expand_or_none(expression, traits: dict, pattern: bool = False) -> list[str] | None:
    """Expansion, or None when it cannot be expanded (missing trait, malformed, not a string)."""
    if not isinstance(expression, str):
        return None
    try:
        return interpolate(expression, traits, pattern=pattern)
    except (NotFound, BadParameter):
        return None


def expansion_problem(values, traits: dict[str, list[str]]) -> str:
    """Why the first of VALUES cannot be expanded for these traits (one sentence), or "" when all can.

    Deny rules use it to fail closed: a deny rule that cannot be expanded denies.
    """
    for value in values or ():
        if not isinstance(value, str):
            return f"role value {value!r} is not a string"
        try:
            interpolate(value, traits)
        except (NotFound, BadParameter) as err:
            return err.message
    return ""


def apply_traits_to_list(values, traits: dict[str, list[str]]) -> list[str]:
    """Expand each value; values that cannot be expanded are dropped; order kept, duplicates removed."""
    out: dict[str, None] = {}
    for value in values or ():
        out.update(dict.fromkeys(_expand_or_none(value, traits) or ()))
    return list(out)


def is_valid_login(login: str) -> bool:
    return len(login) <= MAX_LOGIN_LENGTH and _LOGIN.fullmatch(login) is not None


def apply_traits_to_logins(values, traits: dict[str, list[str]]) -> list[str]:
    """apply_traits_to_list, keeping only strings that are valid Unix logins."""
    return [v for v in apply_traits_to_list(values, traits) if is_valid_login(v)]


def apply_traits_to_labels(selector: dict[str, list[str]], traits: dict[str, list[str]]) -> dict[str, list[str]]:
    """Expand keys and values of a normalised selector.

    Trait values become literal text in the patterns (``*`` from a trait is no
    wildcard). A key must expand to exactly one string; a key or value that cannot
    be expanded becomes "" which matches nothing, so an allow rule built on a missing
    trait grants nothing. Deny rules must not rely on that: they check
    ``expansion_problem`` first and deny when a trait is missing (access.py).
    """
    out: dict[str, list[str]] = {}
    for key, values in (selector or {}).items():
        keys = _expand_or_none(key, traits, pattern=True)
        new_key = keys[0] if keys and len(keys) == 1 else ""
        expanded = out.setdefault(new_key, [])
        for value in values:
            for item in _expand_or_none(value, traits, pattern=True) or [""]:
                if item not in expanded:
                    expanded.append(item)
    return out


def referenced_traits(values) -> list[str]:
    """Names of the traits that the templates among VALUES read (strings, and the keys and values of
    nested lists and mappings, such as a whole role spec); malformed templates are skipped.
    The audit log uses it to record the traits a decision was made with."""
    out: dict[str, None] = {}
    stack = [values]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif is_template(item):
            try:
                out[_trait_name(_parse(item).node)] = None
            except BadParameter:
                continue
    return sorted(out)
