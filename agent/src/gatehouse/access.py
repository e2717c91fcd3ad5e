"""The access decision: roles + traits → allow or deny, with the rule that decided.

Pure and explainable: no I/O, and every Decision carries the one sentence the
user sees, the audit log records and ``gatectl access check`` prints.

Rules for SSH (``check_ssh``):

1. deny first, and deny wins: a role whose ``deny.logins`` holds the login, or
   whose ``deny.node_labels`` matches the node, denies (naming role and rule);
2. then ONE role must both allow the login (``allow.logins``) and select the
   node (``allow.node_labels``); an empty ``allow.node_labels`` selects no node.

Rules for clusters (``check_cluster``, visibility and routing of leaf clusters):
``deny.cluster_labels`` matching denies; a cluster without labels is allowed
otherwise; a labelled cluster needs a role whose ``allow.cluster_labels``
matches. So with no role using cluster labels, unlabelled leaves stay visible
and labelled ones are hidden.

All trait templates and selectors are expanded and compiled once per checker;
a check is then set lookups plus memoised label matches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .durations import parse_duration, parse_ttl
from .errors import BadParameter
from .labels import WILDCARD, Selector, format_labels, normalize_selector
from .resources.schema import DEFAULT_MAX_SESSION_TTL
from .rolemap import InvalidRoleMap, map_roles, no_mapping_message
from .traits import apply_traits_to_labels, apply_traits_to_list, apply_traits_to_logins, expansion_problem

DEFAULT_OPTIONS = {
    "max_session_ttl": DEFAULT_MAX_SESSION_TTL,
    "permit_pty": True,
    "permit_port_forwarding": True,
    "permit_agent_forwarding": True,
    "permit_x11_forwarding": False,
    "client_idle_timeout": 0,
    "record_session": True,
    "recording_failure": "fail_open",
    "audit": "none",
}
_PERMITS = ("permit_pty", "permit_port_forwarding", "permit_agent_forwarding", "permit_x11_forwarding")


@dataclass
class Decision:
    allowed: bool
    reason: str
    rule: str = ""
    roles: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _options(name: str, options) -> dict:
    options = options or {}
    out = dict(DEFAULT_OPTIONS)
    if "max_session_ttl" in options:
        out["max_session_ttl"] = parse_ttl(options["max_session_ttl"], f'role "{name}" max_session_ttl')
    if options.get("client_idle_timeout"):
        out["client_idle_timeout"] = max(0, parse_duration(options["client_idle_timeout"],
                                                           f'role "{name}" client_idle_timeout'))
    if "permit_agent_forwarding" not in options and "forward_agent" in options:
        out["permit_agent_forwarding"] = bool(options["forward_agent"])  # older name of the option
    for key in _PERMITS + ("record_session",):
        if key in options:
            out[key] = bool(options[key])
    if options.get("recording_failure") in ("fail_open", "fail_closed"):
        out["recording_failure"] = options["recording_failure"]
    if options.get("audit") in ("none", "read"):
        out["audit"] = options["audit"]
    return out


def _selector(name: str, rule: str, value, traits: dict) -> Selector:
    try:
        normalised = normalize_selector(value)
    except BadParameter as err:
        raise BadParameter(f'role "{name}" has an invalid {rule}: {err.message}') from None
    return Selector(apply_traits_to_labels(normalised, traits))


#: What a deny rule that cannot be expanded selects: everything (deny fails closed).
_EVERYTHING = Selector({WILDCARD: [WILDCARD]})


def _deny_selector(name: str, rule: str, value, traits: dict) -> tuple[Selector, str]:
    """(selector, problem): a deny selector whose templates cannot be expanded for this user
    selects every label set, and PROBLEM says why; otherwise PROBLEM is ""."""
    selector = _selector(name, rule, value, traits)
    normalised = normalize_selector(value)
    problem = expansion_problem([*normalised, *(v for values in normalised.values() for v in values)], traits)
    return (_EVERYTHING, problem) if problem else (selector, "")


class _Role:
    """One role with its templates expanded for one user's traits."""

    __slots__ = ("name", "allow_logins", "deny_logins", "allow_nodes", "deny_nodes",
                 "allow_clusters", "deny_clusters", "options", "unexpanded")

    def __init__(self, role: dict, traits: dict):
        self.name = str(((role or {}).get("metadata") or {}).get("name") or "")
        spec = (role or {}).get("spec") or {}
        allow, deny = spec.get("allow") or {}, spec.get("deny") or {}
        self.allow_logins = apply_traits_to_logins(allow.get("logins"), traits)
        # Deny keeps anything it can expand: a denied string never needs to be a valid login.
        self.deny_logins = apply_traits_to_list(deny.get("logins"), traits)
        self.allow_nodes = _selector(self.name, "allow.node_labels", allow.get("node_labels"), traits)
        self.allow_clusters = _selector(self.name, "allow.cluster_labels", allow.get("cluster_labels"), traits)
        #: rule -> why it cannot be expanded for this user; such a deny rule denies everything.
        self.unexpanded: dict[str, str] = {}
        problem = expansion_problem(deny.get("logins"), traits)
        if problem:
            self.unexpanded["deny.logins"] = problem
        self.deny_nodes = self._deny("deny.node_labels", deny.get("node_labels"), traits)
        self.deny_clusters = self._deny("deny.cluster_labels", deny.get("cluster_labels"), traits)
        self.options = _options(self.name, spec.get("options"))

    def _deny(self, rule: str, value, traits: dict) -> Selector:
        selector, problem = _deny_selector(self.name, rule, value, traits)
        if problem:
            self.unexpanded[rule] = problem
        return selector


def _names(roles) -> str:
    return "[" + ", ".join(r.name for r in roles) + "]"


def _labels_phrase(labels: dict[str, str]) -> str:
    return f"labels {format_labels(labels)}" if labels else "no labels"


def _unmet(roles, attr: str, rule: str, labels: dict[str, str]) -> str:
    """Unmet requirements grouped by wording: roles [a] require env in [demo], roles [b] have no ..."""
    groups: dict[str, list] = {}
    for role in roles:
        selector = getattr(role, attr)
        phrase = f"require {selector.requirement(labels)}" if selector else f"have no {rule}"
        groups.setdefault(phrase, []).append(role)
    return ", ".join(f"roles {_names(members)} {phrase}" for phrase, members in groups.items())


def _deny_phrase(role: "_Role", what: str, detail: str, rule: str) -> str:
    role_name = role.name
    if rule in role.unexpanded:
        return (f'access denied: role "{role_name}" denies all {what} because its {rule} cannot be expanded for '
                f"this user (a deny rule that cannot be expanded denies): {role.unexpanded[rule]}")
    if detail == "'*': '*'":
        return f'access denied: role "{role_name}" denies all {what} ({rule} \'*\': \'*\')'
    return f'access denied: role "{role_name}" denies {what} with {detail} ({rule})'


class AccessChecker:
    """Access decisions for one user (roles + traits); build once, check many times."""

    def __init__(self, roles: list[dict], traits: dict[str, list[str]], missing_roles=()):
        self.traits = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in (traits or {}).items()}
        self._roles = [_Role(r, self.traits) for r in roles or ()]
        self.role_names = [r.name for r in self._roles]
        self.missing_roles = list(missing_roles)
        self._index()

    def _index(self) -> None:
        """Per-login and per-rule indexes so a check touches only the roles that matter."""
        self._denied_by: dict[str, _Role] = {}
        self._allowed_by: dict[str, list[_Role]] = {}
        for role in self._roles:
            for login in role.deny_logins:
                self._denied_by.setdefault(login, role)
            for login in role.allow_logins:
                self._allowed_by.setdefault(login, []).append(role)
        #: A role whose deny.logins cannot be expanded for this user denies every login.
        self._deny_all_logins = next((r for r in self._roles if "deny.logins" in r.unexpanded), None)
        self._logins = [] if self._deny_all_logins else [lg for lg in self._allowed_by if lg not in self._denied_by]
        self._deny_nodes = [r for r in self._roles if r.deny_nodes]
        self._deny_clusters = [r for r in self._roles if r.deny_clusters]
        self._allow_clusters = [r for r in self._roles if r.allow_clusters]

    # ------------------------------------------------------------------ logins and options
    def logins(self) -> list[str]:
        """Logins allowed by any role and denied by none: the certificate principals."""
        return list(self._logins)

    def cert_options(self) -> dict:
        """Shortest max_session_ttl; each permit is granted if any role grants it."""
        opts = [r.options for r in self._roles]
        return {
            "ttl": min((o["max_session_ttl"] for o in opts), default=DEFAULT_MAX_SESSION_TTL),
            **{key: any(o[key] for o in opts) for key in _PERMITS},
        }

    def session_options(self) -> dict:
        """What a node applies to a session besides the certificate: cert_options() of the roles it
        decides with (for a root user, the mapped ones) plus their shortest client_idle_timeout
        (0 when no role sets one)."""
        idle = [r.options["client_idle_timeout"] for r in self._roles if r.options["client_idle_timeout"] > 0]
        opts = [r.options for r in self._roles]
        # Recording: the strictest role wins. A session is recorded when any deciding role records
        # it (all do unless they say record_session: false), and fails closed when any says so.
        return {**self.cert_options(), "client_idle_timeout": min(idle, default=0),
                "record_session": any(o["record_session"] for o in opts) or not opts,
                "recording_failure": ("fail_closed" if any(o["recording_failure"] == "fail_closed" for o in opts)
                                      else "fail_open")}

    def can_read_audit(self) -> bool:
        """Whether a role gives audit: read (the whole audit log and every recording of this cluster)."""
        return any(r.options["audit"] == "read" for r in self._roles)

    def traits_view(self) -> dict[str, list[str]]:
        """The traits this checker expanded templates with (sorted copy, for status output)."""
        return {k: list(v) for k, v in sorted(self.traits.items())}

    # ------------------------------------------------------------------ nodes
    def _node_denial(self, labels: dict[str, str]) -> tuple[_Role, str] | None:
        for role in self._deny_nodes:
            ok, detail = role.deny_nodes.match(labels)
            if ok:
                return role, detail
        return None

    def can_see_node(self, node_name: str, node_labels: dict[str, str]) -> bool:
        """Whether the node is listed for the user: some role selects it and no role denies it."""
        labels = node_labels or {}
        if self._node_denial(labels):
            return False
        return any(r.allow_nodes.match(labels)[0] for r in self._roles)

    def check_ssh(self, login: str, node_name: str, node_labels: dict[str, str]) -> Decision:
        """Allow or deny ``login`` on the node, naming the role and rule that decided."""
        labels = node_labels or {}
        denial = self._ssh_denial(login, labels)
        if denial:
            return denial
        allowing = self._allowed_by.get(login)
        if not allowing:
            return self._login_not_allowed(login)
        for role in allowing:
            ok, detail = role.allow_nodes.match(labels)
            if ok:
                return Decision(True, f'access granted: role "{role.name}" allows login "{login}" on node '
                                      f'"{node_name}" (allow.logins, allow.node_labels {detail})',
                                "allow.logins, allow.node_labels", [role.name], self.logins())
        reason = (f'access denied: no role allows access to node "{node_name}" with {_labels_phrase(labels)}; '
                  f'{_unmet(allowing, "allow_nodes", "allow.node_labels", labels)}{self._missing_note()}')
        return Decision(False, reason, "", [r.name for r in allowing], self.logins())

    def _ssh_denial(self, login: str, labels: dict[str, str]) -> Decision | None:
        if self._deny_all_logins is not None:
            role = self._deny_all_logins
            return Decision(False, _deny_phrase(role, "logins", "", "deny.logins"), "deny.logins", [role.name], [])
        role = self._denied_by.get(login)
        if role is not None:
            return Decision(False, f'access denied: role "{role.name}" denies login "{login}" (deny.logins)',
                            "deny.logins", [role.name], self.logins())
        hit = self._node_denial(labels)
        if hit is not None:
            role, detail = hit
            return Decision(False, _deny_phrase(role, "nodes", detail, "deny.node_labels"),
                            "deny.node_labels", [role.name], self.logins())
        return None

    def _login_not_allowed(self, login: str) -> Decision:
        if not self._roles:
            reason = (f'access denied: login "{login}" is not allowed because the user has no roles on this '
                      f"cluster; assign a role that allows it{self._missing_note()}")
        else:
            allowed = f"[{', '.join(self._logins)}]" if self._logins else "none (check the user's logins trait)"
            reason = (f'access denied: login "{login}" is not allowed by roles {_names(self._roles)}; '
                      f"allowed logins are {allowed}{self._missing_note()}")
        return Decision(False, reason, "", list(self.role_names), self.logins())

    def _missing_note(self) -> str:
        if not self.missing_roles:
            return ""
        return f"; mapped roles [{', '.join(self.missing_roles)}] do not exist on this cluster and were ignored"

    # ------------------------------------------------------------------ clusters
    def check_cluster(self, cluster_name: str, cluster_labels: dict[str, str]) -> Decision:
        """Whether the user may see and route to a (leaf) cluster with these labels."""
        labels = cluster_labels or {}
        for role in self._deny_clusters:
            ok, detail = role.deny_clusters.match(labels)
            if ok:
                return Decision(False, _deny_phrase(role, "clusters", detail, "deny.cluster_labels"),
                                "deny.cluster_labels", [role.name])
        if not labels:
            return Decision(True, f'access granted: cluster "{cluster_name}" has no labels and no role denies it',
                            "", list(self.role_names))
        for role in self._allow_clusters:
            ok, detail = role.allow_clusters.match(labels)
            if ok:
                return Decision(True, f'access granted: role "{role.name}" allows cluster "{cluster_name}" '
                                      f"with {detail} (allow.cluster_labels)", "allow.cluster_labels", [role.name])
        return Decision(False, self._cluster_denial_reason(cluster_name, labels), "", list(self.role_names))

    def _cluster_denial_reason(self, cluster_name: str, labels: dict[str, str]) -> str:
        if not self._allow_clusters:
            return (f'access denied: cluster "{cluster_name}" has {_labels_phrase(labels)} and none of the roles '
                    f"{_names(self._roles)} sets allow.cluster_labels; add a role whose cluster_labels match them")
        return (f'access denied: no role allows cluster "{cluster_name}" with {_labels_phrase(labels)}; '
                f'{_unmet(self._allow_clusters, "allow_clusters", "allow.cluster_labels", labels)}')


def remote_user_traits(cert_principals: list[str], cert_traits: dict) -> dict[str, list[str]]:
    """Traits of a user arriving from the root: the certificate's traits, ``logins`` = its principals."""
    out: dict[str, list[str]] = {}
    for name, values in (cert_traits or {}).items():
        if isinstance(values, str):
            values = [values]
        if isinstance(name, str) and isinstance(values, (list, tuple)):
            out[name] = [v for v in values if isinstance(v, str)]
    out["logins"] = list(dict.fromkeys(p for p in cert_principals or () if isinstance(p, str) and p))
    return out


def checker_for_remote_user(role_map, remote_roles: list[str], local_roles_by_name: dict[str, dict],
                            traits: dict[str, list[str]], cluster_name: str = ""
                            ) -> tuple[AccessChecker | None, list[str], Decision | None]:
    """Map a root user's roles to local roles: (checker, local role names used, None) or (None, names, denial).

    Mapped roles that do not exist here are skipped and named in later denials; an
    invalid role map denies with its own message instead of raising on the session path.
    """
    where = f'trusted cluster "{cluster_name}"' if cluster_name else "the trusted cluster"
    try:
        mapped = map_roles(role_map, remote_roles)
    except InvalidRoleMap as err:
        return None, [], Decision(False, f"access denied: the role map of {where} is invalid: {err.message}",
                                  "role_map")
    if not mapped:
        return None, [], Decision(False, no_mapping_message(cluster_name, list(remote_roles or [])), "role_map")
    found = [name for name in mapped if name in local_roles_by_name]
    missing = [name for name in mapped if name not in local_roles_by_name]
    if not found:
        reason = (f"access denied: the role map of {where} maps remote roles [{', '.join(remote_roles or [])}] "
                  f"to [{', '.join(missing)}], none of which exists on this cluster; create those roles "
                  f"or fix the role_map")
        return None, [], Decision(False, reason, "role_map")
    checker = AccessChecker([local_roles_by_name[n] for n in found], traits, missing_roles=missing)
    return checker, found, None


def checker_for_identity(cluster_name: str, user_cluster: str, roles: list[str], traits: dict,
                         principals: list[str], ca: dict, local_roles_by_name: dict[str, dict]
                         ) -> tuple[AccessChecker | None, list[str], Decision | None]:
    """The checker this cluster decides with for one certificate: (checker, local role names, denial).

    A user of this cluster keeps their roles and traits; a user of a trusted root
    cluster goes through the role map stored with that root's user CA, with the
    certificate's principals as their ``logins`` trait. Nodes, the proxies and
    ``gatectl access check`` all build checkers here, so they decide alike.
    """
    if user_cluster == cluster_name:
        found = [r for r in roles if r in local_roles_by_name]
        return AccessChecker([local_roles_by_name[r] for r in found], traits), found, None
    if not ca.get("active", True):
        return None, [], Decision(False, f'access denied: trust with "{user_cluster}" is disabled on this cluster',
                                  "trusted_cluster.enabled")
    return checker_for_remote_user(ca.get("role_map") or [], list(roles), local_roles_by_name,
                                   remote_user_traits(principals, traits), user_cluster)


def explain_ssh(cluster_name: str, local_roles_by_name: dict[str, dict], node: dict, login: str, *, user: str,
                roles: list[str], traits: dict, principals: list[str] = (), from_cluster: str = "",
                ca: dict | None = None) -> dict:
    """What ``gatectl access check`` reports: may USER log in as LOGIN on NODE of this cluster, and why.

    ``from_cluster`` names the trusted root a user comes from; then ``roles``,
    ``traits`` and ``principals`` are what their root certificate carries and ``ca``
    is that root's user CA here (with its role map). The decision is the one a node
    makes (``checker_for_identity`` + ``check_ssh``), so the reason is the sentence a
    denied session prints and the audit log records. The leaf computes this both for
    its own ``gatectl`` and for its root, which asks over the reverse tunnel.
    """
    name, labels = node["metadata"]["name"], dict(node["metadata"].get("labels") or {})
    remote = bool(from_cluster) and from_cluster != cluster_name
    checker, mapped, denial = checker_for_identity(cluster_name, from_cluster if remote else cluster_name,
                                                   list(roles), traits or {}, list(principals), ca or {},
                                                   local_roles_by_name)
    result = {"user": user, "cluster": cluster_name, "node": name, "node_labels": labels, "login": login}
    if remote:
        result.update(from_cluster=from_cluster, remote_roles=list(roles))
    decision = denial if checker is None else checker.check_ssh(login, name, labels)
    result.update(mapped_roles=mapped, logins=checker.logins() if checker else [], allowed=decision.allowed,
                  reason=decision.reason, rule=decision.rule)
    return result


def node_not_registered(cluster_name: str, node: str) -> str:
    return (f'node "{node}" is not registered in cluster "{cluster_name}"; list its nodes with \'gatectl get nodes\' '
            f"there (from its root: 'gate ls --cluster={cluster_name}')")
