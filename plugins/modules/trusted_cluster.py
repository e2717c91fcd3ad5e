#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: trusted_cluster
short_description: Manage a leaf cluster's trust in a root cluster
version_added: 1.0.0
description:
  - Runs on a leaf cluster's auth server (or against its auth API) and makes the leaf trust a
    root cluster, so users who log in at the root reach the leaf's nodes through a reverse
    tunnel the leaf keeps open to the root.
  - Creating the trust performs the handshake with the root's proxy, using a
    V(trusted_cluster) join token made on the root (see M(gatehouse.clusters.join_token)).
    The token is only used for that first handshake; afterwards the clusters trust each
    other's certificate authorities.
  - An existing trust is compared on O(enabled), O(role_map), O(forward_audit) and the addresses, never on the
    token. Changing the role map updates it in place; O(enabled=false) closes the tunnel and
    deactivates the root's certificate authorities on the leaf at once, and O(enabled=true)
    restores them without a new token.
  - Role-map entries, and the local roles of each entry, are compared as sets.
  - A failed handshake fails the task with the agent's reason (invalid or expired token,
    misconfigured TLS on the root proxy, a cluster name clash, ...).
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes
options:
  name:
    description: Name of the root cluster (its C(cluster_name)); the handshake checks it.
    type: str
    required: true
  state:
    description: V(present) establishes or updates the trust; V(absent) removes it from the leaf.
    type: str
    choices: [present, absent]
    default: present
  token:
    description:
      - A V(trusted_cluster) join token from the root; needed only to create the trust.
      - Never compared, returned or shown in a diff.
    type: str
  web_proxy_addr:
    description:
      - The root proxy's web address, C(host:port) (port 3080 by default). Needed to create the trust.
      - When not given for an existing trust, the current address is kept.
    type: str
  tunnel_addr:
    description:
      - The root's reverse-tunnel address, C(host:port). Defaults to O(web_proxy_addr), in which case
        the leaf uses the tunnel address the root announces.
      - When not given for an existing trust, the current address is kept.
    type: str
  role_map:
    description:
      - How roles of root users map to roles of this leaf. Without a mapping, root users are denied.
      - When not given for an existing trust, the current role map is kept; when creating, it defaults to empty.
    type: list
    elements: dict
    suboptions:
      remote:
        description:
          - A root role name. V(*) matches any role and captures it (use V($1) in O(role_map[].local));
            a value starting with C(^) and ending with C($) is a regular expression.
        type: str
        required: true
      local:
        description: Leaf roles that users holding the remote role get; may use V($1) captures.
        type: list
        elements: str
        required: true
  enabled:
    description: Whether the trust is active; V(false) closes the tunnel and stops root certificates working on the leaf.
    type: bool
    default: true
  forward_audit:
    description:
      - Whether this leaf forwards its audit events, and the recordings of the root's users' sessions, to the
        root over the tunnel (the leaf always keeps its own copy). The leaf decides; off unless turned on.
      - When not given for an existing trust, the current setting is kept; when creating, it defaults to V(false).
    type: bool
  wait:
    description:
      - Wait until the tunnel to the root is up (or, with O(enabled=false), down) before returning.
      - Needs the leaf's proxy service to be running.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait with O(wait=true) before failing.
    type: int
    default: 60
seealso:
  - module: gatehouse.clusters.join_token
  - module: gatehouse.clusters.remote_cluster_labels
  - module: gatehouse.clusters.remote_cluster_info
'''

EXAMPLES = r'''
- name: Create a join token on the root
  gatehouse.clusters.join_token:
    name: "invite-{{ inventory_hostname }}"
    type: [trusted_cluster]
    ttl: 15m
  delegate_to: root-auth
  register: invite
  no_log: true

- name: Trust the root cluster and wait for the tunnel
  gatehouse.clusters.trusted_cluster:
    name: root.example.com
    token: "{{ invite.token | default(omit) }}"
    web_proxy_addr: root.example.com:3080
    role_map:
      - remote: access
        local: [visitor]
      - remote: '^admin-(.*)$'
        local: ['ops-$1']
    wait: true
  # No task-level no_log: the token option is never logged, and the handshake's error stays readable.

- name: Suspend the trust (root certificates stop working on the leaf at once)
  gatehouse.clusters.trusted_cluster:
    name: root.example.com
    enabled: false

- name: Remove the trust from the leaf
  gatehouse.clusters.trusted_cluster:
    name: root.example.com
    state: absent
'''

RETURN = r'''
trusted_cluster:
  description:
    - The trust as the leaf stores it (never the token), with its tunnel status; empty when absent.
  returned: always
  type: dict
  sample:
    kind: trusted_cluster
    version: v2
    metadata: {name: root.example.com}
    spec:
      enabled: true
      web_proxy_addr: root.example.com:3080
      tunnel_addr: root.example.com:3080
      role_map: [{remote: access, local: [visitor]}]
      forward_audit: false
    status: {connection: online, tunnels: 1, tunnel_addr: root.example.com:3024}
'''

import time

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import exit_absent, record_change, run_module
from ansible_collections.gatehouse.clusters.plugins.module_utils.resources import (
    ResourceError, role_map)

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    token=dict(type="str", no_log=True),
    web_proxy_addr=dict(type="str"),
    tunnel_addr=dict(type="str"),
    role_map=dict(type="list", elements="dict", options=dict(
        remote=dict(type="str", required=True),
        local=dict(type="list", elements="str", required=True),
    )),
    enabled=dict(type="bool", default=True),
    forward_audit=dict(type="bool"),
    wait=dict(type="bool", default=False),
    wait_timeout=dict(type="int", default=60),
)
POLL_INTERVAL = 0.5


def desired_spec(params, current):
    """The spec to store: given options, else the current values (or the defaults when creating)."""
    cur = (current or {}).get("spec") or {}
    web = params.get("web_proxy_addr") or cur.get("web_proxy_addr") or ""
    tunnel = params.get("tunnel_addr")
    if not tunnel:
        # Left unset: keep an explicit tunnel address, or follow web_proxy_addr as the agent does.
        if cur.get("tunnel_addr") and cur.get("tunnel_addr") != cur.get("web_proxy_addr"):
            tunnel = cur["tunnel_addr"]
        else:
            tunnel = web
    rmap = role_map(params["role_map"]) if params.get("role_map") is not None else cur.get("role_map") or []
    spec = {"enabled": params["enabled"], "web_proxy_addr": web, "tunnel_addr": tunnel, "role_map": rmap}
    # forward_audit: sent when given, kept when the trust has it, left out otherwise (the agent's default: off).
    if params.get("forward_audit") is not None:
        spec["forward_audit"] = params["forward_audit"]
    elif "forward_audit" in cur:
        spec["forward_audit"] = bool(cur["forward_audit"])
    return spec


def resource(name, spec, token=None):
    res = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": name}, "spec": dict(spec)}
    if token:
        res["spec"]["token"] = token
    return res


def wait_for(module, client, name, want, timeout, changed):
    """Wait until the tunnel is WANT; a timeout fails the task but still reports CHANGED (the write happened)."""
    deadline = time.time() + max(timeout, 0)
    current = None
    while True:
        current = client.get_resource("trusted_cluster", name)
        state = ((current or {}).get("status") or {}).get("connection", "unknown")
        if state == want:
            return current
        if time.time() >= deadline:
            if want == "online":
                module.fail_json(
                    msg="the trust with %s is in place but its tunnel did not come up within %s seconds (status: "
                        "%s); check that this cluster's proxy service runs and can reach the root's tunnel "
                        "address %s" % (name, timeout, state, ((current or {}).get("status") or {}).get(
                            "tunnel_addr") or ((current or {}).get("spec") or {}).get("tunnel_addr")),
                    trusted_cluster=current or {}, changed=changed)
            module.fail_json(msg="the tunnel to %s was still %s after %s seconds" % (name, state, timeout),
                             trusted_cluster=current or {}, changed=changed)
        time.sleep(POLL_INTERVAL)


def run(module, client):
    params = module.params
    name = params["name"]
    header = "trusted_cluster/%s" % name
    result = dict(changed=False, trusted_cluster={})
    if params["state"] == "present" and params.get("role_map") is not None:
        try:
            role_map(params["role_map"])
        except ResourceError as exc:
            module.fail_json(msg="trusted_cluster %s: %s" % (name, exc))
    current = client.get_resource("trusted_cluster", name)

    if params["state"] == "absent":
        exit_absent(module, client, "trusted_cluster", name, current, result)

    spec = desired_spec(params, current)
    desired = resource(name, spec)

    if current is None:
        missing = [opt for opt in ("token", "web_proxy_addr") if not params.get(opt)]
        if missing:
            module.fail_json(msg="trusted_cluster %s does not exist yet, so %s %s needed to create it: the token "
                                 "from 'gatectl tokens add --type=trusted_cluster' on the root (or the "
                                 "gatehouse.clusters.join_token module) and the root proxy's web address"
                                 % (name, " and ".join(missing), "is" if len(missing) == 1 else "are"))
        request = resource(name, spec, params["token"])
        plan = client.plan_resource(request, force=False)  # every check but the handshake itself
        record_change(module, result, None, plan["resource"], header, trusted_cluster=plan["resource"])
        if module.check_mode:
            module.exit_json(**result)
        client.put_resource(request, force=False)
    else:
        plan = client.plan_resource(desired, force=True)
        if not plan.get("changed"):
            result["trusted_cluster"] = current
        else:
            record_change(module, result, plan.get("current"), plan["resource"], header,
                          trusted_cluster=plan["resource"])
            if module.check_mode:
                module.exit_json(**result)
            client.put_resource(desired, force=True)

    if result["changed"] or params["wait"]:
        if params["wait"] and not module.check_mode:
            result["trusted_cluster"] = wait_for(module, client, name, "online" if spec["enabled"] else "offline",
                                                 params["wait_timeout"], result["changed"])
        else:
            result["trusted_cluster"] = client.get_resource("trusted_cluster", name) or desired
    module.exit_json(**result)


def main():
    run_module(run, ARGUMENT_SPEC, supports_check_mode=True)


if __name__ == "__main__":
    main()
