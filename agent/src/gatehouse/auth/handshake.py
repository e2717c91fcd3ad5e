"""The trust handshake's rules: the version rule and the root's checks of a leaf's request.

The leaf's auth service POSTs `{token, cluster_name, expected_root, version, host_cas}`
to the root's `https://web_proxy_addr/webapi/trustedclusters/validate` (through
`gatehouse.rootclient`); the root answers with its own host and user CA public parts.
Only public keys cross; the token is used for this one request and never stored on
the leaf. These checks are pure, so they are unit-tested without a network.
"""

from __future__ import annotations

import re

from .. import __version__
from ..errors import BadParameter, TrustError
from ..resources import is_name_suffix, validate_leaf_name


#: MAJOR.MINOR.PATCH, each a number without leading zeros, optionally after one "v"; nothing else.
_VERSION_RE = re.compile(r"v?(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")


def major(version: str) -> int:
    """The major number of a strict MAJOR.MINOR.PATCH version (``1.2.3``, ``v1.2.3``)."""
    match = _VERSION_RE.fullmatch(str(version)) if isinstance(version, str) else None
    if match is None:
        shown = str(version)[:40]
        raise BadParameter(f'version "{shown}" is not a valid version like 1.2.3 (three numbers without leading '
                           f"zeros or suffixes)")
    return int(match.group(1))


def check_version(root_version: str, leaf_version: str) -> None:
    """The leaf may be at most one major version behind the root, and never ahead of it."""
    root, leaf = major(root_version), major(leaf_version)
    if leaf > root:
        raise TrustError(f"the leaf runs version {leaf_version}, newer than the root's {root_version}; "
                         f"upgrade the root cluster first")
    if leaf < root - 1:
        raise TrustError(f"the leaf runs version {leaf_version}, more than one major version behind the root's "
                         f"{root_version}; upgrade the leaf to at least {root - 1}.0.0")


def check_request(body: dict, root_name: str) -> tuple[str, str]:
    """Validate a handshake request at the root; returns (leaf name, leaf host CA line)."""
    leaf = str(body.get("cluster_name") or "")
    if not leaf:
        raise BadParameter("the trust request names no leaf cluster; send cluster_name")
    cas = body.get("host_cas")
    if not isinstance(cas, list) or len(cas) != 1 or not isinstance(cas[0], str) or not cas[0].strip():
        raise TrustError(f"the leaf must send exactly one host certificate authority, got "
                         f"{len(cas) if isinstance(cas, list) else 'none'}; check the leaf's auth service")
    if leaf == root_name:
        raise TrustError(f'the leaf cluster has the same name as the root ("{leaf}"); cluster names must differ — '
                         f"rename the leaf's auth_service.cluster_name")
    expected = str(body.get("expected_root") or "")
    if expected and expected != root_name:
        raise TrustError(f'the trusted_cluster is named "{expected}" but the root cluster is called '
                         f'"{root_name}"; set metadata.name: {root_name}')
    check_version(__version__, str(body.get("version") or "0"))
    return leaf, cas[0].strip()


#: At most this many host names of its own proxies a root checks a leaf name against.
MAX_ROOT_HOSTS = 32


def check_leaf_name(leaf: str, root_name: str, root_hosts=(), other_clusters=()) -> None:
    """A leaf's name must not reach into another's namespace on users' machines.

    `gate login` trusts a leaf's host CA for "*.LEAF" and `gate config` routes
    "Host *.LEAF" through the root, so the name must be a DNS-style name of two labels
    or more (validate_leaf_name), must not cover the root's name or one of its proxy
    host names, and must neither cover nor fall under another cluster this root knows
    (its leaves, and the root it trusts itself). TrustError otherwise.
    """
    try:
        validate_leaf_name(leaf)
    except BadParameter as exc:
        raise TrustError(exc.message) from None  # it says how to rename the leaf
    if is_name_suffix(leaf, root_name) or is_name_suffix(root_name, leaf):
        raise TrustError(f'the leaf cluster name "{leaf}" overlaps the root cluster\'s name "{root_name}", so users\' '
                         f"machines could trust the leaf's host CA for the root's hosts (or the root's for the "
                         f"leaf's); rename the leaf's auth_service.cluster_name")
    for host in list(root_hosts)[:MAX_ROOT_HOSTS]:
        if is_name_suffix(leaf, host):
            raise TrustError(f'the leaf cluster name "{leaf}" is a suffix of the root proxy address "{host}", so '
                             f'users\' machines would trust the leaf\'s host CA for it ("*.{leaf}"); rename the '
                             f"leaf's auth_service.cluster_name")
    for other in other_clusters:
        if other != leaf and (is_name_suffix(leaf, other) or is_name_suffix(other, leaf)):
            raise TrustError(f'the leaf cluster name "{leaf}" overlaps the name of another cluster the root '
                             f'knows ("*.{leaf}" and "*.NAME" would cover each other\'s hosts); rename the '
                             f"leaf's auth_service.cluster_name")
