"""`gatectl`: cluster administration (tokens, users, roles, resources, status).

On an auth host it uses the local admin identity the agent wrote to
`data_dir/admin/`; `-i DIR` points at another identity directory and
`--auth-server` at other addresses (several auth servers: the next is tried when
one cannot be reached).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..errors import BadParameter
from .common import labels_text, print_version, read_secret, run, table


def _client(args):
    from ..client import APIClient
    from ..identity import IdentityFiles
    if args.identity:
        ident_dir = args.identity
    else:
        data_dir = args.data_dir
        if not data_dir:
            from ..config import DEFAULT_DATA_DIR, load
            cfg_path = args.config or os.environ.get("GATEHOUSE_CONFIG") or "/etc/gatehouse.yaml"
            data_dir = load(cfg_path).data_dir if os.path.exists(cfg_path) or args.config else DEFAULT_DATA_DIR
        ident_dir = os.path.join(data_dir, "admin")
    ident = IdentityFiles(ident_dir)
    base = [f"https://{a.strip()}" for a in args.auth_server.split(",") if a.strip()] if args.auth_server else None
    return APIClient.for_identity(ident, base)


def _render(items: list[dict], fmt: str) -> str:
    from ..resources import render
    return render(items, fmt)


def _expiry_text(expires: str) -> str:
    if not expires:
        return "never"
    from ..clock import parse_iso
    left = max(0, int(parse_iso(expires) - time.time()))
    from ..durations import format_duration
    return f"{expires[:19].replace('T', ' ')} UTC ({format_duration(left) if left else 'expired'})"


# --------------------------------------------------------------------------- commands
def cmd_status(args) -> int:
    st = _client(args).get("/v1/status")
    rows = [("Cluster", st["cluster_name"]), ("Version", st["version"])]
    for ca in st["cas"]:
        label = f"{ca['type']} CA" + ("" if ca["cluster_name"] == st["cluster_name"] else f" ({ca['cluster_name']})")
        rows.append((label, ca["fingerprint"] + ("" if ca["active"] else " (inactive)")))
    rows.append(("Counts", ", ".join(f"{n} {k}s" for k, n in st["counts"].items())))
    width = max(len(label) for label, _unused in rows) + 2  # a long label never runs into its value
    for label, value in rows:
        print(f"{label:<{width}}{value}")
    return 0


def cmd_tokens_add(args) -> int:
    from ..resources import parse_labels_arg
    body = {"roles": args.type, "ttl": args.ttl, "labels": parse_labels_arg(args.labels or "")}
    if args.name:
        body["name"] = args.name
    if args.bind_name:
        body["bind_name"] = args.bind_name
    if args.single_use:
        body["single_use"] = True
    if args.principals:
        body["principals"] = [p for p in args.principals.split(",") if p.strip()]
    if args.value_stdin:
        body["token"] = sys.stdin.readline().strip()
    if args.leaf_name:
        body["leaf_name"] = args.leaf_name
    resp = _client(args).post("/v1/tokens", body)
    res = resp["resource"]
    if args.format == "json":
        print(json.dumps({"token": resp["token"], **res}, indent=2))
        return 0
    types = ",".join(res["spec"]["roles"])
    if "trusted_cluster" in res["spec"]["roles"]:
        print(f"The cluster invite token: {resp['token']}")
    else:
        print(f"The invite token: {resp['token']}")
    print(f"This token will expire at {_expiry_text(res['metadata']['expires'])}")
    print(f"Token name (for 'gatectl tokens rm'): {res['metadata']['name']}; type: {types}")
    spec = res["spec"]
    if spec.get("bind_name") or spec.get("single_use") or spec.get("principals"):
        admits = f'only the member named "{spec["bind_name"]}"' if spec.get("bind_name") else "any member name"
        print(f"It admits {admits}" + (", once (single-use)" if spec.get("single_use") else "")
              + (f"; approved principals: {', '.join(spec['principals'])}" if spec.get("principals") else ""))
    if res["spec"].get("leaf_name"):
        print(f"Only a leaf cluster named {res['spec']['leaf_name']} can join with it")
    return 0


def cmd_tokens_ls(args) -> int:
    items = _client(args).get("/v1/tokens")["items"]
    if args.format != "text":
        print(_render(items, args.format))
        return 0
    rows = [[t["metadata"]["name"], ",".join(t["spec"]["roles"]), labels_text(t["spec"]["labels"]),
             _expiry_text(t["metadata"].get("expires", ""))] for t in items]
    print(table(["Token", "Type", "Labels", "Expiry Time (UTC)"], rows))
    return 0


def cmd_tokens_rm(args) -> int:
    name = _client(args).delete(f"/v1/tokens/{args.token}")["name"]
    print(f"Token {name} has been deleted")
    return 0


def cmd_users_add(args) -> int:
    from ..resources import parse_labels_arg
    traits = {k: [x for x in v.split("|") if x] for k, v in parse_labels_arg(args.traits or "").items()}
    if args.logins:
        traits["logins"] = [x for x in args.logins.split(",") if x]
    user = {"kind": "user", "version": "v2", "metadata": {"name": args.name},
            "spec": {"roles": [r for r in args.roles.split(",") if r], "traits": traits}}
    # Read and check the password before creating anything: bad input leaves no half-made user.
    password = read_secret("", True) if args.password_stdin else None
    if password is not None:
        from ..resources import validate_password
        validate_password(password)
    client = _client(args)
    client.put("/v1/resources", {"resource": user, "force": False})
    print(f'User "{args.name}" has been created')
    if password is not None:
        client.put(f"/v1/users/{args.name}/password", {"password": password})
        print("Password set.")
    else:
        print(f"Set a password with: gatectl users passwd {args.name}")
    return 0


def cmd_users_passwd(args) -> int:
    password = read_secret(f"Password for {args.name}: ", args.password_stdin, confirm=True)
    _client(args).put(f"/v1/users/{args.name}/password", {"password": password})
    print(f'Password for user "{args.name}" has been set')
    return 0


def cmd_users_ls(args) -> int:
    items = _client(args).get("/v1/resources/user")["items"]
    if args.format != "text":
        print(_render(items, args.format))
        return 0
    rows = [[u["metadata"]["name"], ",".join(u["spec"]["roles"]), ",".join(u["spec"]["traits"].get("logins", []))]
            for u in items]
    print(table(["User", "Roles", "Logins"], rows))
    return 0


def cmd_users_update(args) -> int:
    """Change a user's roles (or logins) and keep the rest of the record."""
    if args.set_roles is None and args.set_logins is None:
        raise BadParameter(f"say what to change, e.g. gatectl users update {args.name} --set-roles=access,auditor")
    client = _client(args)
    user = client.get(f"/v1/resources/user/{args.name}")["items"][0]
    if args.set_roles is not None:
        user["spec"]["roles"] = [r.strip() for r in args.set_roles.split(",") if r.strip()]
    if args.set_logins is not None:
        user["spec"]["traits"]["logins"] = [x.strip() for x in args.set_logins.split(",") if x.strip()]
    client.put("/v1/resources", {"resource": user, "force": True})
    print(f'User "{args.name}" has been updated')
    return 0


def cmd_users_rm(args) -> int:
    _client(args).delete(f"/v1/resources/user/{args.name}")
    print(f'User "{args.name}" has been deleted')
    return 0


def cmd_create(args) -> int:
    from ..resources import parse_documents
    if args.file == "-":
        text, source = sys.stdin.read(), "<stdin>"
    else:
        try:
            with open(args.file, encoding="utf-8") as fh:
                text, source = fh.read(), args.file
        except OSError as exc:
            raise BadParameter(f"cannot read {args.file}: {exc.strerror}") from None
    docs = parse_documents(text, source)
    client = _client(args)
    for doc in docs:
        resp = client.put("/v1/resources", {"resource": doc, "force": args.force})
        kind, name = doc["kind"], doc["metadata"]["name"]
        print(f'{kind} "{name}" has been {"created" if resp["created"] else "updated"}')
    return 0


def cmd_get(args) -> int:
    from ..resources import parse_ref, render
    kind, name = parse_ref(args.ref)
    path = f"/v1/resources/{kind}" + (f"/{name}" if name else "")
    client = _client(args)
    if kind == "remote_cluster" and not name:
        items = _remote_clusters(client, args.labels or "", args.search or "")
    elif args.labels or args.search:
        raise BadParameter("--labels and --search filter remote clusters only, e.g. gatectl get rc --labels=env=prod")
    else:
        items = client.get(path, params={"with_secrets": "true"} if args.with_secrets else None)["items"]
    print(render(items, args.format if args.format != "text" else "yaml", with_secrets=args.with_secrets))
    return 0


#: Remote clusters fetched per request: a fleet of thousands comes in a few pages (auth/listing.py).
RC_PAGE = 1000


def _remote_clusters(client, labels: str, search: str) -> list[dict]:
    items: list[dict] = []
    after = ""
    while True:
        params = {"limit": str(RC_PAGE), **({"start_after": after} if after else {}),
                  **({"labels": labels} if labels else {}), **({"search": search} if search else {})}
        answer = client.get("/v1/resources/remote_cluster", params=params)
        items += answer["items"]
        after = answer.get("next") or ""
        if not after:
            return items


def cmd_rm(args) -> int:
    from ..resources import parse_ref
    kind, name = parse_ref(args.ref)
    if not name:
        raise BadParameter(f"name the {kind} to remove, e.g. gatectl rm {kind}/NAME")
    answer = _client(args).delete(f"/v1/resources/{kind}/{name}")
    print(answer.get("message") or f'{kind} "{name}" has been deleted')
    return 0


def cmd_update(args) -> int:
    from ..resources import parse_labels_arg, parse_ref
    kind, name = parse_ref(args.ref)
    if kind != "remote_cluster" or not name:
        raise BadParameter("only remote clusters can be updated this way: gatectl update rc/NAME --set-labels=k=v")
    if args.set_labels is None:
        raise BadParameter("say what to change, e.g. gatectl update rc/NAME --set-labels=env=prod")
    labels = parse_labels_arg(args.set_labels)
    rc = _client(args).put(f"/v1/remote_clusters/{name}/labels", {"labels": labels})["resource"]
    if args.format != "text":
        print(_render([rc], args.format))
        return 0
    print(f'remote_cluster "{name}" has been updated (labels: {labels_text(rc["metadata"]["labels"]) or "none"})')
    return 0


def _traits_arg(text: str | None, logins: str | None) -> dict:
    from ..resources import parse_labels_arg
    traits = {k: [x for x in v.split("|") if x] for k, v in parse_labels_arg(text or "").items()}
    if logins:
        traits["logins"] = [x for x in logins.split(",") if x]
    return traits


def cmd_access_check(args) -> int:
    body = {"user": args.user, "login": args.login, "node": args.node,
            "traits": _traits_arg(args.traits, args.logins)}
    if getattr(args, "from_cluster", None):
        body["from_cluster"] = args.from_cluster
        body["roles"] = [r for r in (args.roles or "").split(",") if r]
    if args.cluster:
        body["cluster"] = args.cluster  # on the root, a leaf: the root checks its labels, then asks the leaf
    res = _client(args).post("/v1/access/check", body)
    if args.format == "json":
        print(json.dumps(res, indent=2))
        return 0 if res["allowed"] else 1
    who = res["user"] + (f' (from {res["from_cluster"]}, roles {",".join(res["remote_roles"]) or "none"})'
                         if res.get("from_cluster") else "")
    cluster = res["cluster"]
    seen = res.get("cluster_access")  # asked on the root: its cluster-label decision comes first
    if seen:
        cluster += (f" (visible at the root: {seen['reason'].removeprefix('access granted: ')})" if seen["allowed"]
                    else f' (hidden at the root: the user is told cluster "{res["cluster"]}" is not found)')
    if res["node_labels"] is None:
        node_labels = "labels unknown: the leaf was not asked"
    else:
        node_labels = labels_text(res["node_labels"]) or "no labels"
    print(f"User          {who}")
    print(f"Cluster       {cluster}")
    print(f"Mapped roles  {', '.join(res['mapped_roles']) or '(none)'}")
    print(f"Logins        {', '.join(res['logins']) or '(none)'}")
    print(f"Node          {res['node']} ({node_labels})")
    print(f"Login         {res['login']}")
    print(f"Decision      {'ALLOWED' if res['allowed'] else 'DENIED'}" + (f" by {res['rule']}" if res["rule"] else ""))
    print(f"Reason        {res['reason']}")
    return 0 if res["allowed"] else 1


def cmd_rolemap_test(args) -> int:
    from ..resources import parse_documents
    from ..rolemap import explain_mapping, map_roles, no_mapping_message, validate_role_map
    with open(args.file, encoding="utf-8") as fh:
        docs = [d for d in parse_documents(fh.read(), args.file) if d["kind"] == "trusted_cluster"]
    if not docs:
        raise BadParameter(f"{args.file} holds no trusted_cluster resource")
    tc = docs[0]
    role_map = validate_role_map(tc["spec"]["role_map"])
    remote = [r for r in args.roles.split(",") if r]
    mapped = map_roles(role_map, remote)
    if args.format == "json":
        print(json.dumps({"remote_roles": remote, "local_roles": mapped}, indent=2))
        return 0 if mapped else 1
    for entry, role, produced in explain_mapping(role_map, remote):
        print(f"  {role!r} matches remote {entry['remote']!r} -> {', '.join(produced) or '(nothing)'}")
    if mapped:
        print(f"Remote roles [{', '.join(remote)}] map to local roles: {', '.join(mapped)}")
        return 0
    print(no_mapping_message(tc["metadata"]["name"], remote))
    return 1


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatectl", description="Administer a Gatehouse cluster.")
    p.add_argument("-c", "--config", help="agent config (to find the data dir and admin identity)")
    p.add_argument("-d", "--data-dir", help="agent data dir holding admin/ (overrides -c)")
    p.add_argument("-i", "--identity", help="identity directory (identity.crt, identity.key, ca.crt, auth_addr)")
    p.add_argument("--auth-server", help="auth API address host:port, or several separated by commas (tried in "
                                         "order when one is unreachable; default: from the identity)")
    sub = p.add_subparsers(dest="command", required=True)

    def add(parent, name, func, help_text, fmt="text"):
        sp = parent.add_parser(name, help=help_text)
        sp.set_defaults(func=func)
        sp.add_argument("--format", choices=["text", "yaml", "json"], default=fmt)
        return sp

    add(sub, "status", cmd_status, "cluster status: name, version, CA fingerprints")
    version = sub.add_parser("version", help="print the version of gatectl")
    version.add_argument("-f", "--format", choices=["text", "json"], default="text")
    version.set_defaults(func=lambda args: print_version(args.format))
    tokens = sub.add_parser("tokens", help="join tokens").add_subparsers(dest="sub", required=True)
    t_add = add(tokens, "add", cmd_tokens_add, "create a join token")
    t_add.add_argument("--type", required=True, help="trusted_cluster, node or proxy (comma-separated)")
    t_add.add_argument("--ttl", default="30m", help="time to live, e.g. 5m, 15m, 1h (default 30m)")
    t_add.add_argument("--labels", help="labels applied on join, k=v,k2=v2")
    t_add.add_argument("--name", help="a stable name for the token (default: derived from its hash)")
    t_add.add_argument("--leaf-name", help="trusted_cluster tokens: the only leaf cluster name that may join with it")
    t_add.add_argument("--value-stdin", action="store_true", help="read the token value from stdin")
    t_add.add_argument("--bind-name", help="node/proxy tokens: admit only the member with this name")
    t_add.add_argument("--single-use", action="store_true",
                       help="node/proxy tokens: admit one process only (its proxy and node identities, once each)")
    t_add.add_argument("--principals", help="node/proxy tokens: extra host names or addresses approved for the "
                                            "certificates of the members it admits, comma-separated")
    add(tokens, "ls", cmd_tokens_ls, "list tokens")
    t_rm = add(tokens, "rm", cmd_tokens_rm, "delete a token (by name or value)")
    t_rm.add_argument("token")

    users = sub.add_parser("users", help="local users").add_subparsers(dest="sub", required=True)
    u_add = add(users, "add", cmd_users_add, "create a user")
    u_add.add_argument("name")
    u_add.add_argument("--roles", required=True, help="comma-separated roles")
    u_add.add_argument("--logins", help="comma-separated Unix logins (the logins trait)")
    u_add.add_argument("--traits", help="other traits, name=v1|v2,name2=v")
    u_add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    u_pw = add(users, "passwd", cmd_users_passwd, "set a user's password (prompt, or --password-stdin)")
    u_pw.add_argument("name")
    u_pw.add_argument("--password-stdin", action="store_true")
    add(users, "ls", cmd_users_ls, "list users")
    u_up = add(users, "update", cmd_users_update, "change a user's roles or logins")
    u_up.add_argument("name")
    u_up.add_argument("--set-roles", help="replace the user's roles, comma-separated")
    u_up.add_argument("--set-logins", help="replace the user's logins trait, comma-separated")
    u_rm = add(users, "rm", cmd_users_rm, "delete a user")
    u_rm.add_argument("name")

    create = add(sub, "create", cmd_create, "create resources from a YAML file (- for stdin)")
    create.add_argument("file")
    create.add_argument("-f", "--force", action="store_true", help="overwrite existing resources")
    get = add(sub, "get", cmd_get, "print resources as YAML (or --format json)", fmt="yaml")
    get.add_argument("ref", help="KIND or KIND/NAME, e.g. users, role/access, rc, oidc/corp")
    get.add_argument("--labels", help="remote clusters only: those with all these labels, k=v,k2=v2")
    get.add_argument("--search", help="remote clusters only: those whose name or labels contain this text")
    get.add_argument("--with-secrets", action="store_true",
                     help="include secrets such as an oidc connector's client_secret (keep the output safe)")
    access = sub.add_parser("access", help="explain access decisions").add_subparsers(dest="sub", required=True)
    check = add(access, "check", cmd_access_check, "explain whether a user may log in to a node, and why")
    check.add_argument("--user", required=True)
    check.add_argument("--login", required=True, help="the Unix login to check")
    check.add_argument("--node", required=True, help="a node registered in that cluster")
    check.add_argument("--cluster", help="the cluster the node is in: this one (default) or, on a root, one of "
                                         "its leaf clusters (asked through its reverse tunnel)")
    check.add_argument("--from", dest="from_cluster", help="on a leaf: the trusted root cluster the user comes from")
    check.add_argument("--roles", help="with --from: the user's roles at the root, comma-separated")
    check.add_argument("--logins", help="with --from: the principals of the root certificate")
    check.add_argument("--traits", help="with --from: other traits, name=v1|v2,name2=v")
    rolemap = sub.add_parser("rolemap", help="role maps").add_subparsers(dest="sub", required=True)
    rm_test = add(rolemap, "test", cmd_rolemap_test, "show what a trusted_cluster's role map yields")
    rm_test.add_argument("-f", "--file", required=True, help="trusted_cluster YAML")
    rm_test.add_argument("--roles", required=True, help="remote (root) roles, comma-separated")
    update = add(sub, "update", cmd_update, "update a remote cluster's labels (root only)")
    update.add_argument("ref", help="rc/NAME")
    update.add_argument("--set-labels", help="replace the labels with k=v,k2=v2 (empty string clears them)")
    rm = add(sub, "rm", cmd_rm, "delete a resource")
    rm.add_argument("ref", help="KIND/NAME")
    from . import audit_cmds
    audit_cmds.add_parser(sub, add, _client)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
