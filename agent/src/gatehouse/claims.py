"""Identity-provider claims: which become a user's traits, which roles ``claims_to_roles`` gives,
and the user name.

Pure decision code (no I/O), used by the auth service after it has validated an ID token and
by the schema of ``kind: oidc`` connectors.

* **Traits.** Every claim whose value is a string or a list of strings becomes the trait of the
  same name (a string is a one-value list; empty strings are dropped). Claims of any other type
  (numbers, booleans, objects) and the token's own protocol claims (``iss``, ``aud``, ``exp``,
  ``nonce``, ``at_hash`` … see PROTOCOL_CLAIMS) are dropped, and so are claims whose names a
  role template could not read (spaces, quotes, braces). Sizes are bounded: a login whose
  claims are larger than the limits below is refused with ClaimsTooLarge, never truncated, so
  a long group list cannot silently lose the group a deny rule is about.
* **Roles.** ``claims_to_roles`` is a list of ``{claim, value, roles}``. ``value`` is matched
  against each value of the claim exactly as a role map's ``remote`` is matched against a role
  name (rolemap: a ``^regex$`` or text whose ``*`` are capture groups, always the whole
  value), and ``roles`` may use ``$1``/``${name}`` captures. Every entry applies; the roles
  come out entry by entry, de-duplicated, empty expansions dropped. No role means no login.
* **User name.** The value of the connector's ``username_claim`` (default ``email``); for
  ``email`` the address itself, also when it carries a display name (``Bob <bob@example.com>``).
"""

from __future__ import annotations

import json

from .errors import AccessDenied, BadParameter
from .labels import InvalidPattern
from .resources.schema import is_trait_name, validate_name
from .rolemap import NoMatch, pattern_regex, replace_regexp
from .traits import email_address

#: Claims about the token itself, not about the user: never traits.
PROTOCOL_CLAIMS = frozenset({"iss", "aud", "exp", "iat", "nbf", "jti", "nonce", "at_hash", "c_hash", "s_hash",
                             "azp", "auth_time", "sid"})
MAX_CLAIMS = 128            # traits taken from one login
MAX_VALUES = 512            # values of one claim
MAX_VALUE_LENGTH = 1024     # characters of one value
MAX_TOTAL = 64 * 1024       # bytes of all traits as JSON (they travel in every certificate)
DEFAULT_USERNAME_CLAIM = "email"
_ENTRY_KEYS = ("claim", "value", "roles")


class ClaimsTooLarge(AccessDenied):
    """The identity provider sent more than Gatehouse carries in a certificate."""


class NoRoles(AccessDenied):
    """No claims_to_roles entry matches the user's claims."""


def claims_to_traits(claims: dict) -> dict[str, list[str]]:
    """The traits a login's claims give (see the module docstring); ClaimsTooLarge past the limits."""
    traits: dict[str, list[str]] = {}
    for name, value in (claims or {}).items():
        if not isinstance(name, str) or name in PROTOCOL_CLAIMS or not is_trait_name(name):
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            continue
        values = list(dict.fromkeys(v for v in value if v))
        if not values:
            continue
        if len(values) > MAX_VALUES:
            raise ClaimsTooLarge(f'the identity provider\'s claim "{name}" has {len(values)} values, more than '
                                 f"the {MAX_VALUES} Gatehouse accepts; send fewer (e.g. filter the groups for "
                                 f"this client at the provider)")
        longest = max(len(v) for v in values)
        if longest > MAX_VALUE_LENGTH:
            raise ClaimsTooLarge(f'the identity provider\'s claim "{name}" has a value of {longest} characters, more '
                                 f"than the {MAX_VALUE_LENGTH} Gatehouse accepts; shorten it at the provider")
        traits[name] = values
    if len(traits) > MAX_CLAIMS:
        raise ClaimsTooLarge(f"the identity provider sent {len(traits)} claims, more than the {MAX_CLAIMS} "
                             f"Gatehouse accepts; release fewer claims to this client at the provider")
    size = len(json.dumps(traits, separators=(",", ":")).encode())
    if size > MAX_TOTAL:
        raise ClaimsTooLarge(f"the identity provider's claims take {size} bytes, more than the {MAX_TOTAL} "
                             f"Gatehouse carries in a certificate; release fewer claims or groups to this client")
    return traits


# --------------------------------------------------------------------------- claims_to_roles
def _entry(index: int, entry) -> dict:
    where = f"claims_to_roles entry {index}"
    if not isinstance(entry, dict):
        raise BadParameter(f"{where} must be a mapping with claim, value and roles; write it as "
                           f"{{claim: groups, value: admins, roles: [access]}}")
    unknown = [str(k) for k in entry if k not in _ENTRY_KEYS]
    if unknown:
        hint = ' (the claim is named by "claim")' if unknown[0] == "name" else ""
        raise BadParameter(f'{where} has unknown key "{unknown[0]}"{hint}; use only claim, value and roles')
    claim, value = entry.get("claim"), entry.get("value")
    if not isinstance(claim, str) or not claim.strip():
        raise BadParameter(f'{where} needs "claim", the name of a claim such as groups, as a non-empty string')
    if not isinstance(value, str) or not value:
        raise BadParameter(f'{where} (claim "{claim}") needs "value", a claim value, a pattern with "*" or a '
                           f"^regex$, as a non-empty string")
    try:
        pattern_regex(value)
    except InvalidPattern as err:
        raise BadParameter(f'{where} (claim "{claim}") value {err.message} or drop the leading ^ and trailing $ '
                           f"to match it as text") from None
    roles = entry.get("roles")
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list) or not roles:
        raise BadParameter(f'{where} (claim "{claim}") needs "roles", a non-empty list of role names')
    for role in roles:
        if not isinstance(role, str) or not role:
            raise BadParameter(f'{where} (claim "{claim}") has a role {role!r} that is not a role name; write each '
                               f"role as a non-empty string")
        if "$" not in role:  # a "$1" template is a name only once expanded at login
            try:
                validate_name(role, f'{where} (claim "{claim}") role')
            except BadParameter as err:
                raise BadParameter(err.message) from None
    return {"claim": claim.strip(), "value": value, "roles": list(dict.fromkeys(roles))}


def validate_claims_to_roles(entries) -> list[dict]:
    """The normalised list (``roles`` always a list) or BadParameter naming the entry; at least one entry."""
    if not isinstance(entries, (list, tuple)) or not entries:
        raise BadParameter("claims_to_roles must list at least one {claim, value, roles} entry, e.g. "
                           "[{claim: groups, value: admins, roles: [access]}]; without it nobody gets a role")
    return [_entry(index, entry) for index, entry in enumerate(entries, 1)]


def map_claims(entries: list[dict], traits: dict[str, list[str]]) -> list[str]:
    """Role names that the (validated) claims_to_roles entries give a user with these traits."""
    out: dict[str, None] = {}
    for entry in entries:
        for value in traits.get(entry["claim"], ()):
            for role in entry["roles"]:
                try:
                    name = replace_regexp(entry["value"], role, value)
                except NoMatch:
                    continue
                if name:
                    out[name] = None
    return list(out)


def no_roles_message(connector: str, user: str, entries: list[dict], traits: dict[str, list[str]]) -> str:
    """The refusal when claims_to_roles gives no role, naming the claims it looked at."""
    looked = list(dict.fromkeys(e["claim"] for e in entries))
    seen = "; ".join(f"{c}: [{', '.join(traits[c])}]" if c in traits else f"{c}: (not sent)" for c in looked)
    return (f'no claims_to_roles entry of oidc connector "{connector}" matches the claims of "{user}" ({seen}); '
            f"add an entry for one of those values or give the user a matching claim at the identity provider")


def username(claims: dict, claim: str, connector: str) -> str:
    """The Gatehouse user name from the ``claim`` claim (an e-mail address for ``email``)."""
    value = claims.get(claim)
    subject = claims.get("sub", "?")
    if not isinstance(value, str) or not value.strip():
        raise AccessDenied(f'the identity provider sent no "{claim}" claim for subject "{subject}", which oidc '
                           f'connector "{connector}" takes the user name from (username_claim); ask for its scope '
                           f"or set username_claim to a claim every user has, e.g. preferred_username")
    name = email_address(value) if claim == "email" else value.strip()
    if name is None:
        raise AccessDenied(f'the "email" claim "{value}" of subject "{subject}" is not one e-mail address, so it '
                           f'cannot be a user name; fix it at the provider or set username_claim of oidc connector '
                           f'"{connector}" to another claim')
    try:
        return validate_name(name, f'the user name "{name}" from claim "{claim}"', kind="user")
    except BadParameter as err:
        raise AccessDenied(f'{err.message}; set username_claim of oidc connector "{connector}" to a claim with '
                           f"such values") from None
