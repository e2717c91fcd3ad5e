#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: join_token
short_description: Manage Gatehouse join tokens
version_added: 1.0.0
description:
  - Create or revoke a dynamic join token on a Gatehouse auth server. On a root cluster a
    V(trusted_cluster) token lets a leaf cluster establish trust (see M(gatehouse.clusters.trusted_cluster));
    V(node) and V(proxy) tokens let a host join a cluster.
  - Tokens are reusable until they expire and are used only for the first handshake or join.
  - The agent never returns a token's value after creating it, so the module tracks a token by
    its O(name). A token with that name that has not expired and has the same O(type) and
    O(labels) is left alone (C(changed=false)); a missing or expired token is created; a token
    whose type or labels differ is replaced under the same name, which gives it a new value unless
    O(token) sets one.
  - The value of a token the module creates is returned in RV(token). Set C(no_log=true) on the
    task so it is not printed, and pass it on with a variable (for example to the leaf's
    M(gatehouse.clusters.trusted_cluster) task). A later run that finds the token unchanged cannot
    return its value; give the value yourself with O(token) when a playbook needs it on every run.
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes
options:
  name:
    description:
      - Name of the token, the key the module uses to find it again.
      - Defaults to the name the agent derives from O(token) (the first 16 hex digits of its SHA-256),
        so one of O(name) and O(token) is required.
    type: str
  token:
    description:
      - The token value to use instead of a random one, at least 16 characters.
      - Only used when the token is created; the agent stores its hash, so a changed value for an
        existing O(name) is not detected. To rotate it, remove the token first or use a new name.
    type: str
  type:
    description: What the token admits; several types make one token valid for each.
    type: list
    elements: str
    choices: [trusted_cluster, node, proxy]
    default: [trusted_cluster]
  ttl:
    description: How long a new token is valid, like V(15m), V(1h30m) or V(24h).
    type: str
    default: 30m
  renew_before:
    description:
      - Replace an existing token when it expires sooner than this, like V(5m), so that a token handed
        out by the play stays valid long enough to be used.
      - By default only an expired (or missing) token is created again.
    type: str
  labels:
    description:
      - Labels given to what joins with the token; for a V(trusted_cluster) token, the leaf's
        initial labels in its C(remote_cluster) on the root.
    type: dict
    default: {}
  principals:
    description:
      - For V(node) and V(proxy) tokens, host names or IP addresses approved for the certificates of
        what joins with it, besides its name and the address it joins from; a proxy behind a load
        balancer needs the balancer's name, which users and leaves dial.
      - A token whose approved principals differ is replaced.
    type: list
    elements: str
    default: []
  state:
    description: V(present) ensures the token exists; V(absent) revokes it.
    type: str
    choices: [present, absent]
    default: present
seealso:
  - module: gatehouse.clusters.trusted_cluster
  - module: gatehouse.clusters.remote_cluster_labels
'''

EXAMPLES = r'''
- name: On the root, a token for the leaf clusters to join with
  gatehouse.clusters.join_token:
    name: leaf-invite
    type: [trusted_cluster]
    ttl: 15m
    renew_before: 5m
    labels:
      env: prod
  register: invite
  no_log: true  # the new token's value is in the result (invite.token): keep it out of the output

- name: On the leaf, trust the root with it
  gatehouse.clusters.trusted_cluster:
    name: root.example.com
    token: "{{ hostvars['root-auth']['invite']['token'] }}"
    web_proxy_addr: root.example.com:3080
    role_map:
      - remote: access
        local: [visitor]
  delegate_to: leaf-auth
  # The token option is never logged; no task-level no_log, so a refused handshake says why.

- name: A node token whose value comes from the vault, the same on every run (token is never logged)
  gatehouse.clusters.join_token:
    type: [node]
    token: "{{ vault_node_join_token }}"
    ttl: 1h

- name: Revoke a token
  gatehouse.clusters.join_token:
    name: leaf-invite
    state: absent
'''

RETURN = r'''
token:
  description:
    - The token value, when the module created the token with a random value.
    - Not returned when the token already existed, or when O(token) was given.
  returned: when a random token was created
  type: str
  sample: 9e1f6f3c0a2b4d5e8f7a6b5c4d3e2f1a
name:
  description: Name of the token.
  returned: always
  type: str
  sample: leaf-invite
expires:
  description: When the token expires (RFC 3339, UTC); empty when absent or in check mode before creation.
  returned: always
  type: str
  sample: '2024-05-01T12:15:00.000000Z'
join_token:
  description: The token as the agent lists it (never its value); empty when absent.
  returned: always
  type: dict
  sample:
    kind: token
    version: v2
    metadata: {name: leaf-invite, expires: '2024-05-01T12:15:00.000000Z'}
    spec: {roles: [trusted_cluster], labels: {env: prod}}
'''

import hashlib
import time

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import record_change, run_module
from ansible_collections.gatehouse.clusters.plugins.module_utils.resources import (
    ResourceError, parse_duration, parse_ttl, seconds_until, static_labels, token_types)

MIN_TOKEN_LENGTH = 16

ARGUMENT_SPEC = dict(
    name=dict(type="str"),
    token=dict(type="str", no_log=True),
    type=dict(type="list", elements="str", default=["trusted_cluster"],
              choices=["trusted_cluster", "node", "proxy"]),
    ttl=dict(type="str", default="30m"),
    renew_before=dict(type="str"),
    labels=dict(type="dict", default={}),
    principals=dict(type="list", elements="str", default=[]),
    state=dict(type="str", default="present", choices=["present", "absent"]),
)


def token_name(params):
    """The token's name: given, or derived from its value as the agent does."""
    if params.get("name"):
        return params["name"]
    return hashlib.sha256(params["token"].encode("utf-8")).hexdigest()[:16]


def rfc3339(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + ".%06dZ" % int((epoch % 1) * 1e6)


def needs_replacing(current, types, labels, renew_before=0, now=None, principals=()):
    """Why an existing token must be created again, or None when it can stay."""
    if current is None:
        return "missing"
    spec = current.get("spec") or {}
    if set(spec.get("roles") or []) != set(types):
        return "type"
    if (spec.get("labels") or {}) != labels:
        return "labels"
    if set(spec.get("principals") or []) != set(principals):
        return "principals"
    left = seconds_until((current.get("metadata") or {}).get("expires", ""), now)
    if left is not None and left <= max(renew_before, 0):
        return "expiring"
    return None


def checked_input(module, name):
    """Types, TTL, renewal margin and labels, checked before the agent is asked anything."""
    params = module.params
    try:
        types = token_types(params["type"])
        ttl = parse_ttl(params["ttl"], "ttl")
        renew = parse_duration(params["renew_before"], "renew_before") if params.get("renew_before") else 0
        labels = static_labels(params["labels"], "labels")
    except ResourceError as exc:
        module.fail_json(msg="join token %s: %s" % (name, exc))
    if params.get("token") is not None and len(params["token"]) < MIN_TOKEN_LENGTH:
        module.fail_json(msg="join token %s: token must be at least %d characters long; use a longer secret or "
                             "leave token out to get a random one" % (name, MIN_TOKEN_LENGTH))
    if renew >= ttl:
        module.fail_json(msg="join token %s: renew_before (%ss) must be shorter than ttl (%ss), or every run "
                             "would replace the token" % (name, renew, ttl))
    return types, ttl, renew, labels


def run(module, client):
    params = module.params
    name = token_name(params)
    result = dict(changed=False, name=name, expires="", join_token={})
    header = "token/%s" % name

    if params["state"] == "absent":
        current = client.get_resource("token", name)
        if current is not None:
            record_change(module, result, current, None, header)
            if not module.check_mode:
                client.delete_token(name)
        module.exit_json(**result)

    types, ttl, renew, labels = checked_input(module, name)
    current = client.get_resource("token", name)
    principals = params["principals"]
    if needs_replacing(current, types, labels, renew, principals=principals) is None:
        result.update(join_token=current, expires=current["metadata"].get("expires", ""))
        module.exit_json(**result)

    desired = {"kind": "token", "version": "v2",
               "metadata": {"name": name, "expires": rfc3339(time.time() + ttl)},
               "spec": dict({"roles": types, "labels": labels}, **({"principals": principals} if principals else {}))}
    record_change(module, result, current, desired, header, join_token=desired)
    if module.check_mode:
        module.exit_json(**result)
    resp = client.add_token(types, ttl, labels, name=name, value=params.get("token"), principals=principals)
    stored = resp.get("resource") or {}
    result.update(join_token=stored, expires=(stored.get("metadata") or {}).get("expires", ""))
    if "diff" in result:
        result["diff"]["after"] = stored
    if not params.get("token"):
        result["token"] = resp.get("token")
    module.exit_json(**result)


def main():
    run_module(run, ARGUMENT_SPEC, supports_check_mode=True, required_one_of=[("name", "token")])


if __name__ == "__main__":
    main()
