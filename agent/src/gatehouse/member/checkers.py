"""Access checkers for the identities a member sees, built once per cache revision.

Local users: the certificate's roles and traits, checked against this cluster's
roles. Users from a trusted root cluster: their roles are mapped through the role
map stored with the root's user CA, their `logins` trait is the certificate's
principals, and the mapped local roles decide. Checkers are cached per identity and
cache revision, so a decision on the session path is a few dictionary lookups.
"""

from __future__ import annotations

import json

from ..access import AccessChecker, Decision, checker_for_identity
from ..traits import referenced_traits
from .cache import ClusterCache

_MAX_CACHED = 4096


class CheckerCache:
    def __init__(self, cache: ClusterCache):
        self.cache = cache
        self._checkers: dict[tuple, tuple] = {}
        self._revision = -1

    def checker(self, cluster: str, roles: list[str], traits: dict, principals: list[str],
                ca: dict) -> tuple[AccessChecker | None, list[str], Decision | None]:
        """(checker, local role names, denial) for an identity; the denial is set when nothing maps."""
        if self._revision != self.cache.revision or len(self._checkers) > _MAX_CACHED:
            self._checkers.clear()
            self._revision = self.cache.revision
        key = (cluster, tuple(roles), json.dumps(traits, sort_keys=True), tuple(principals))
        hit = self._checkers.get(key)
        if hit is None:
            hit = checker_for_identity(self.cache.cluster_name, cluster, roles, traits, principals, ca,
                                       self.cache.roles())
            self._checkers[key] = hit
        return hit

    def traits_used(self, cluster: str, roles: list[str], traits: dict, principals: list[str], ca: dict,
                    role_names: list[str]) -> dict[str, list[str]]:
        """The traits (name → values) that the templates of the local roles ROLE_NAMES read for this
        identity: what a decision made with those roles was made with (for the audit log)."""
        checker, _mapped, _denial = self.checker(cluster, roles, traits, principals, ca)
        if checker is None:
            return {}
        local = self.cache.roles()
        names = referenced_traits([local[r].get("spec") for r in role_names if r in local])
        return {name: checker.traits[name] for name in names if name in checker.traits}

    def check(self, cluster: str, roles: list[str], traits: dict, principals: list[str], ca: dict,
              login: str, node_name: str, node_labels: dict) -> Decision:
        checker, _mapped, denial = self.checker(cluster, roles, traits, principals, ca)
        if checker is None:
            return denial
        return checker.check_ssh(login, node_name, node_labels)
