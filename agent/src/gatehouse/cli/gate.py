"""`gate`: the user's client — login, status, ls, clusters, ssh, config, play.

Imports are lazy so `gate` starts fast: asyncssh is loaded only by `gate ssh`,
requests only by commands that talk to the web API.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import BadParameter, GatehouseError, TLSProblem
from ..wire import NODE_PORT, PING_PATH, WEB_PORT
from .common import labels_text, print_version, read_secret, run, table

CERT_EXTENSIONS_SHOWN = ("permit-agent-forwarding", "permit-port-forwarding", "permit-pty",
                         "permit-X11-forwarding", "permit-user-rc")


def cmd_login(args) -> int:
    from .. import pki
    from ..client import APIClient, server_cert_sha256
    from ..config import split_hostport
    from ..durations import parse_ttl
    from ..profile import save_profile
    if not args.proxy:
        return _select_cluster(args.cluster)
    host, port = split_hostport(args.proxy, WEB_PORT)
    web = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    # Unverified on first use only: the certificate seen now is pinned for this login and every later call.
    pin = server_cert_sha256(host, port) if args.insecure else ""
    api = APIClient(f"https://{web}", insecure=args.insecure, pin_sha256=pin)
    try:
        api.get(PING_PATH)
    except TLSProblem:
        raise TLSProblem(f"the proxy at {web} presented a certificate that cannot be verified (is it "
                         f"self-signed?); configure a trusted certificate, or pass --insecure in test "
                         f"setups") from None
    ttl = parse_ttl(args.ttl) if args.ttl else 0
    if args.auth:
        ssh_key = pki.new_ssh_key(comment=f"gate:sso:{args.auth}")
        tls_key, tls_pub = pki.new_tls_key()
        result = _sso_login(api, args, ssh_key.public_line, tls_pub, ttl)
    else:
        if args.device:
            raise BadParameter("--device is for single sign-on; add --auth=NAME with the connector to log in with")
        user = args.user or os.environ.get("USER") or "root"
        password = read_secret(f"Enter password for Gatehouse user {user}: ", args.password_stdin)
        ssh_key = pki.new_ssh_key(comment=f"gate:{user}")
        tls_key, tls_pub = pki.new_tls_key()
        result = api.post("/webapi/login", {"user": user, "password": password,
                                            "ssh_public_key": ssh_key.public_line, "tls_public_key": tls_pub,
                                            "ttl": ttl})
    profile = save_profile(web, result, ssh_key.private_openssh, tls_key, args.insecure, pin)
    if args.cluster:
        _check_cluster(profile, args.cluster)
        profile.select_cluster(args.cluster)
    _print_status(profile)
    return 0


def _sso_login(api, args, ssh_public: str, tls_public: str, ttl: int) -> dict:
    """Certificates from a single sign-on login through the proxy (ssologin.py)."""
    from .. import ssologin
    if args.device:
        return ssologin.device_login(api, args.auth, ssh_public, tls_public, ttl)
    return ssologin.browser_login(api, args.auth, ssh_public, tls_public, ttl, browser=args.browser)


def _check_cluster(profile, name: str) -> None:
    """NAME is the root or a leaf the user can reach (what 'gate clusters' lists)."""
    names = [c["name"] for c in _clusters(profile)]
    if name not in names:
        raise BadParameter(f'cluster "{name}" is not one you can reach from "{profile.cluster}" (you can reach '
                           f"{', '.join(names)}); pick one that 'gate clusters' lists")


def _select_cluster(name: str | None) -> int:
    """`gate login LEAF` with a valid login: make LEAF the cluster later commands use."""
    from ..profile import load_profile
    if not name:
        raise BadParameter("name the proxy to log in to, e.g. gate login --proxy=root.example.com:3080 --user=NAME")
    profile = load_profile()
    profile.require_valid()
    _check_cluster(profile, name)
    profile.select_cluster(name)
    _print_status(profile)
    return 0


def cmd_logout(args) -> int:
    from ..profile import remove_profiles
    names = remove_profiles()
    print(f"Logged out of {', '.join(names)}." if names else "You are not logged in.")
    return 0


def _status(profile) -> dict:
    """What the certificate says, in the shape `tsh status -f json` gives under "active"."""
    info = profile.cert_info()
    return {"profile_url": f"https://{profile.web_addr}", "username": info.key_id,
            "cluster": profile.selected_cluster, "root_cluster": profile.cluster, "roles": list(info.roles),
            "logins": [p for p in info.principals if not p.startswith("-")], "traits": dict(info.traits),
            "connector": info.connector,
            "valid_until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.valid_before)),
            "extensions": [e for e in sorted(info.extensions) if e in CERT_EXTENSIONS_SHOWN]}


def _print_status(profile) -> None:
    from ..durations import format_duration
    status = _status(profile)
    valid_before = profile.cert_info().valid_before
    left = int(valid_before - time.time())
    valid = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(valid_before))
    valid += f" [valid for {format_duration(left)}]" if left > 0 else " [EXPIRED]"
    rows = [("Profile URL:", status["profile_url"]), ("Logged in as:", status["username"]),
            ("Cluster:", status["cluster"])]
    if status["cluster"] != status["root_cluster"]:
        rows.append(("Root cluster:", status["root_cluster"]))
    if status["connector"]:
        rows.append(("Connector:", status["connector"]))
    rows += [("Roles:", ", ".join(status["roles"])), ("Logins:", ", ".join(status["logins"]) or "(none)"),
             ("Valid until:", valid), ("Extensions:", ", ".join(status["extensions"]))]
    traits = {k: v for k, v in status["traits"].items() if k != "logins"}
    if traits:
        rows.append(("Traits:", "; ".join(f"{k}={','.join(v)}" for k, v in sorted(traits.items()))))
    print("> " + "\n  ".join(f"{k:<14}{v}" for k, v in rows))


def _leaf_mappings(profile) -> list[dict]:
    try:
        return profile.api().get("/webapi/mappings")["items"] if profile.cert_info().valid_before > time.time() else []
    except GatehouseError:
        return []  # offline or an older proxy: the certificate part is still right


def cmd_status(args) -> int:
    from ..profile import load_profile
    profile = load_profile()
    if args.format == "json":
        import json
        active = {**_status(profile), "leaf_roles": _leaf_mappings(profile)}
        print(json.dumps({"active": active, "profiles": []}, indent=2))
        return 0
    _print_status(profile)
    leaves = _leaf_mappings(profile)
    for i, leaf in enumerate(leaves):
        if leaf.get("mapped_roles"):
            text = ", ".join(leaf["mapped_roles"])
        else:
            text = f"(none) {leaf.get('denied') or leaf.get('error') or ''}".strip()
        print(f"  {'Leaf roles:' if i == 0 else '':<14}{leaf['cluster']}: {text}")
    return 0


def cmd_ls(args) -> int:
    from ..profile import load_profile
    profile = load_profile()
    profile.require_valid()
    if args.all:
        return _ls_all(profile, args)
    if args.search:
        raise BadParameter("--search looks through every cluster you can reach; add --all (-R)")
    items = _nodes_of(profile, args.cluster or profile.selected_cluster)
    if args.format == "json":
        import json
        print(json.dumps(items, indent=2))
        return 0
    rows = [[n["metadata"]["name"], n["spec"]["addr"], labels_text(n["metadata"]["labels"])]
            for n in sorted(items, key=lambda n: n["metadata"]["name"])]
    print(table(["Node Name", "Address", "Labels"], rows))
    return 0


def _nodes_of(profile, cluster: str) -> list[dict]:
    """The nodes of CLUSTER the user may see (a leaf's through its tunnel, decided by the leaf)."""
    params = {"cluster": cluster} if cluster != profile.cluster else None
    return profile.api().get("/webapi/nodes", params=params)["items"]


def _search_nodes(profile, name: str = "", search: str = "", timeout: float | None = None) -> dict:
    """Nodes in every cluster the user can reach, through the proxy (proxy/fleet_search.py)."""
    params = {k: v for k, v in (("name", name), ("search", search)) if v}
    if timeout is not None:
        params["timeout"] = f"{timeout:g}"
    return profile.api().get("/webapi/nodes/all", params=params, timeout=(timeout or 5) + 60)


def _ls_all(profile, args) -> int:
    if args.cluster:
        raise BadParameter("--all lists every cluster you can reach; leave out --cluster, or leave out --all")
    answer = _search_nodes(profile, search=args.search or "", timeout=args.timeout)
    if args.format == "json":
        import json
        print(json.dumps(answer, indent=2))
        return 0
    rows = [[n["cluster"], n["metadata"]["name"], (n.get("spec") or {}).get("addr", ""),
             labels_text(n["metadata"].get("labels") or {})] for n in answer["items"]]
    print(table(["Cluster", "Node Name", "Address", "Labels"], rows))
    for miss in answer["unreachable"]:
        print(f"{miss['cluster']}: not searched: {miss['error']}", file=sys.stderr)
    return 0


def cmd_clusters(args) -> int:
    from ..profile import load_profile
    profile = load_profile()
    profile.require_valid()
    items = _clusters(profile, labels=args.labels or "", search=args.search or "")
    selected = args.cluster or profile.selected_cluster
    if args.format == "json":
        import json
        print(json.dumps([{"cluster_name": c["name"], "status": c["status"], "cluster_type": c["type"],
                           "labels": c.get("labels") or {}, "selected": c["name"] == selected} for c in items],
                         indent=2))
        return 0
    rows = [[c["name"], c["status"], c["type"], labels_text(c.get("labels", {})),
             "*" if c["name"] == selected else ""] for c in items]
    print(table(["Cluster Name", "Status", "Cluster Type", "Labels", "Selected"], rows))
    return 0


#: Clusters fetched per request: a fleet of thousands of leaves comes in a few pages.
CLUSTER_PAGE = 1000


def _clusters(profile, labels: str = "", search: str = "") -> list[dict]:
    """Every cluster the user can reach that matches the filters, page by page (auth/listing.py)."""
    items: list[dict] = []
    after = ""
    while True:
        params = {"limit": str(CLUSTER_PAGE), **({"start_after": after} if after else {}),
                  **({"labels": labels} if labels else {}), **({"search": search} if search else {})}
        answer = profile.api().get("/webapi/clusters", params=params)
        items += answer["items"]
        after = answer.get("next") or ""
        if not after:
            return items


def cmd_config(args) -> int:
    from ..profile import load_profile, ssh_config
    profile = load_profile()
    clusters = [profile.cluster]
    try:
        clusters = [c["name"] for c in _clusters(profile)] or clusters
    except GatehouseError:
        pass  # offline: the root cluster block is still useful
    print(ssh_config(profile, clusters))
    return 0


def cmd_ssh(args) -> int:
    from ..profile import load_profile
    profile = load_profile()
    profile.require_valid()
    target = args.target
    if "@" in target:
        login, node = target.rsplit("@", 1)
    else:
        login, node = args.login or (profile.data.get("logins") or [os.environ.get("USER", "root")])[0], target
    if not login or not node:
        raise BadParameter("name the target as login@node, e.g. gate ssh root@node1")
    from ..sshclient import run_ssh
    command = " ".join(args.command) if args.command else None
    cluster = args.cluster or _cluster_of(profile, node)
    return run_ssh(profile, login, node, cluster, command, args.port, force_tty=args.tty, no_tty=args.no_tty)


def _cluster_of(profile, node: str) -> str:
    """The selected cluster when it has a node named NODE (one listing, no fleet search: the common
    case stays as fast as before); otherwise the one cluster the user can reach that has it; the
    selected cluster when none does (an address, say) or the listing fails; BadParameter naming them when several do."""
    cluster = profile.selected_cluster
    try:
        if any(n["metadata"]["name"] == node for n in _nodes_of(profile, cluster)):
            return cluster
        found = sorted({n["cluster"] for n in _search_nodes(profile, name=node)["items"]})
    except GatehouseError:
        # The lookup is a convenience: with the auth servers' database down, the proxy still routes
        # and the node still decides from their caches, so an unanswered listing must not stop a login.
        return cluster
    if len(found) > 1:
        raise BadParameter(f'node "{node}" exists in {len(found)} clusters you can reach ({", ".join(found)}); '
                           f"pick one with --cluster, e.g. gate ssh --cluster={found[0]} {node}")
    return found[0] if found else profile.selected_cluster


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gate", description="Gatehouse client: one login, SSH to every cluster.")
    sub = p.add_subparsers(dest="command_name", required=True)
    login = sub.add_parser("login", help="log in to a cluster through its proxy")
    login.add_argument("cluster", nargs="?", help="a leaf cluster to select for later commands (default: the root); "
                                                  "without --proxy, switch to it using the current login")
    login.add_argument("--proxy", help=f"proxy web address HOST:PORT (default port {WEB_PORT})")
    login.add_argument("--user", help="Gatehouse user name for a password login (default: $USER)")
    login.add_argument("--auth", help="single sign-on: the name of the oidc connector to log in with")
    login.add_argument("--browser", choices=["default", "none"], default="default",
                       help="with --auth: 'none' only prints the URL to open instead of opening a browser")
    login.add_argument("--device", action="store_true",
                       help="with --auth: the device flow, for machines without a browser (approve on another device)")
    login.add_argument("--insecure", action="store_true",
                       help="accept a self-signed proxy certificate, pinned for later calls (tests only)")
    login.add_argument("--ttl", help="certificate lifetime, e.g. 8h (bounded by your roles)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.set_defaults(func=cmd_login)
    sub.add_parser("logout", help="remove all local credentials").set_defaults(func=cmd_logout)
    status = sub.add_parser("status", help="show the current login")
    status.add_argument("-f", "--format", choices=["text", "json"], default="text")
    status.set_defaults(func=cmd_status)
    version = sub.add_parser("version", help="print the version of gate")
    version.add_argument("-f", "--format", choices=["text", "json"], default="text")
    version.set_defaults(func=lambda args: print_version(args.format))
    ls = sub.add_parser("ls", help="list nodes")
    ls.add_argument("--cluster", help="cluster to list (default: the one you logged in to)")
    ls.add_argument("-R", "--all", action="store_true",
                    help="list nodes in every cluster you can reach, leaves searched in parallel")
    ls.add_argument("--search", help="with --all: only nodes whose name, address or labels contain this text")
    ls.add_argument("--timeout", type=float,
                    help="with --all: seconds to wait for each leaf (default 5); a leaf slower than this is "
                         "reported, not waited for")
    ls.add_argument("--format", choices=["text", "json"], default="text")
    ls.set_defaults(func=cmd_ls)
    clusters = sub.add_parser("clusters", help="list the root and leaf clusters you can reach")
    clusters.add_argument("--cluster", help=argparse.SUPPRESS)
    clusters.add_argument("--labels", help="only clusters with all these labels, k=v,k2=v2")
    clusters.add_argument("--search", help="only clusters whose name or labels contain this text")
    clusters.add_argument("-f", "--format", choices=["text", "json"], default="text")
    clusters.set_defaults(func=cmd_clusters)
    sub.add_parser("config", help="print an OpenSSH client config for stock ssh and Ansible").set_defaults(
        func=cmd_config)
    ssh = sub.add_parser("ssh", help="run a command or a shell on a node")
    ssh.add_argument("--cluster", help="cluster of the node (default: the one cluster you can reach that has a node "
                                       "of that name, else the one you logged in to)")
    ssh.add_argument("-l", "--login", help="Unix login (or use login@node)")
    ssh.add_argument("-p", "--port", type=int, default=NODE_PORT, help=f"node SSH port (default {NODE_PORT})")
    ssh.add_argument("-t", "--tty", action="store_true", help="force a terminal even with a command")
    ssh.add_argument("-T", "--no-tty", action="store_true", help="never request a terminal")
    ssh.add_argument("target", help="login@node")
    ssh.add_argument("command", nargs=argparse.REMAINDER, help="command to run (default: a login shell)")
    ssh.set_defaults(func=cmd_ssh)
    from . import play
    play.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
