#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: role
short_description: Manage Gatehouse roles
version_added: 1.0.0
description:
  - Create, update or remove a role in a Gatehouse cluster (root or leaf).
  - A role says which Unix logins its users get on which nodes (by node labels), which
    leaf clusters they may see and route to (by cluster labels, on a root), and the
    options of the certificates issued to them.
  - The module manages the whole role; a condition or option that is not given takes the
    agent's default (empty conditions, the default options), as with C(gatectl create -f).
  - Lists whose order does not matter (logins, label values, groups) are compared as sets,
    so reordering them does not report a change.
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes
options:
  name:
    description: Name of the role.
    type: str
    required: true
  state:
    description:
      - V(present) creates the role or updates it to match; V(absent) removes it.
      - A role that is still assigned to users cannot be removed; the agent names those users.
    type: str
    choices: [present, absent]
    default: present
  description:
    description: Free-text description of the role.
    type: str
  labels:
    description: Labels of the role itself (metadata), as a mapping of names to values.
    type: dict
  allow:
    description:
      - What the role allows.
      - Values may use trait templates such as C({{internal.logins}}) or
        C({{external.groups}}); quote them in YAML and protect them from Ansible's own
        templating with C({% raw %}...{% endraw %}) or C(!unsafe).
    type: dict
    suboptions: &conditions
      logins:
        description: Unix logins (SSH principals) users may use; trait templates allowed.
        type: list
        elements: str
      node_labels:
        description:
          - 'Label selector for the nodes the logins apply to, for example C({env: [dev, staging]}).'
          - A value may be a string or a list; C('*') matches anything; C(^...$) is a regular expression.
        type: dict
      cluster_labels:
        description:
          - On a root cluster, label selector for the leaf clusters users may see and route to.
        type: dict
      kubernetes_groups:
        description: Kubernetes groups (kept for compatibility with role files of this kind).
        type: list
        elements: str
      kubernetes_users:
        description: Kubernetes users (kept for compatibility with role files of this kind).
        type: list
        elements: str
      db_users:
        description: Database users (kept for compatibility with role files of this kind).
        type: list
        elements: str
      db_names:
        description: Database names (kept for compatibility with role files of this kind).
        type: list
        elements: str
  deny:
    description: What the role denies; a deny rule wins over any allow rule.
    type: dict
    suboptions: *conditions
  options:
    description: Options of the certificates and sessions of users holding the role.
    type: dict
    suboptions:
      max_session_ttl:
        description:
          - Longest validity of a user certificate, like V(8h) or V(30m), or a number of seconds.
          - The agent's default is V(12h).
        type: raw
      client_idle_timeout:
        description: Close idle sessions after this long (V(0) turns it off, the default).
        type: raw
      permit_pty:
        description: Allow interactive terminals (default V(true)).
        type: bool
      permit_port_forwarding:
        description:
          - Allow port forwarding (default V(true)).
          - Reaching a node through the proxy uses port forwarding, so turning it off also blocks
            the proxy hop for OpenSSH and C(gate ssh).
        type: bool
      permit_agent_forwarding:
        description: Allow SSH agent forwarding (default V(true)).
        type: bool
      permit_x11_forwarding:
        description: Allow X11 forwarding (default V(false)).
        type: bool
      record_session:
        description:
          - Record the sessions of users holding the role on every node (default V(true)); a session is
            recorded when any role the node decides with records it.
        type: bool
      recording_failure:
        description:
          - What a node does when a session it must record cannot be written (a full disk) - V(fail_closed)
            refuses the session or ends it with a message, V(fail_open) (the default) lets it go on and
            audits the failure. V(fail_closed) wins when any deciding role says so.
        type: str
        choices: [fail_open, fail_closed]
      audit:
        description:
          - V(read) lets users holding the role search and verify the audit log and replay every recording;
            V(none) (the default) lets them replay their own sessions only.
        type: str
        choices: [none, read]
seealso:
  - module: gatehouse.clusters.user
  - module: gatehouse.clusters.trusted_cluster
'''

EXAMPLES = r'''
- name: Operators may log in as root and ubuntu on production nodes, for 8 hours
  gatehouse.clusters.role:
    name: operator
    description: Production operators
    allow:
      logins: [root, ubuntu]
      node_labels:
        env: prod
      cluster_labels:
        env: [prod, staging]
    options:
      max_session_ttl: 8h
      permit_x11_forwarding: false

- name: A role that gives users their own logins (a trait template) everywhere but on databases
  gatehouse.clusters.role:
    name: access
    allow:
      logins: ['{% raw %}{{internal.logins}}{% endraw %}']
      node_labels:
        '*': '*'
      cluster_labels:
        '*': '*'
    deny:
      node_labels:
        role: database

- name: On a leaf, the local role that root users are mapped to
  gatehouse.clusters.role:
    name: visitor
    allow:
      logins: [visitor]
      node_labels:
        '*': '*'

- name: Remove a role from a cluster managed from the controller
  gatehouse.clusters.role:
    name: legacy
    state: absent
    api_url: https://auth.example.com:3025
    client_cert: files/admin/identity.crt
    client_key: files/admin/identity.key
    ca_cert: files/admin/ca.crt
'''

RETURN = r'''
role:
  description:
    - The role as the agent stores it (normalised, all keys present), after the change.
    - In check mode, the role as it would be stored. Empty when O(state=absent).
  returned: always
  type: dict
  sample:
    kind: role
    version: v5
    metadata: {name: operator, description: Production operators, labels: {}}
    spec:
      allow:
        logins: [root, ubuntu]
        node_labels: {env: [prod]}
        cluster_labels: {env: [prod, staging]}
        kubernetes_groups: []
        kubernetes_users: []
        db_users: []
        db_names: []
      deny: {logins: [], node_labels: {}, cluster_labels: {}, kubernetes_groups: [], kubernetes_users: [],
             db_users: [], db_names: []}
      options: {max_session_ttl: 28800, client_idle_timeout: 0, permit_pty: true,
                permit_port_forwarding: true, permit_agent_forwarding: true, permit_x11_forwarding: false,
                record_session: true, recording_failure: fail_open, audit: none}
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import ensure_resource, run_module
from ansible_collections.gatehouse.clusters.plugins.module_utils.resources import role_request

CONDITION_OPTIONS = dict(
    logins=dict(type="list", elements="str"),
    node_labels=dict(type="dict"),
    cluster_labels=dict(type="dict"),
    kubernetes_groups=dict(type="list", elements="str"),
    kubernetes_users=dict(type="list", elements="str"),
    db_users=dict(type="list", elements="str"),
    db_names=dict(type="list", elements="str"),
)

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    description=dict(type="str"),
    labels=dict(type="dict"),
    allow=dict(type="dict", options=CONDITION_OPTIONS),
    deny=dict(type="dict", options=CONDITION_OPTIONS),
    options=dict(type="dict", options=dict(
        max_session_ttl=dict(type="raw"),
        client_idle_timeout=dict(type="raw"),
        permit_pty=dict(type="bool"),
        permit_port_forwarding=dict(type="bool"),
        permit_agent_forwarding=dict(type="bool"),
        permit_x11_forwarding=dict(type="bool"),
        record_session=dict(type="bool"),
        recording_failure=dict(type="str", choices=["fail_open", "fail_closed"]),
        audit=dict(type="str", choices=["none", "read"]),
    )),
)


def desired_role(params):
    """The role to send for the module's parameters (the agent normalises and checks it)."""
    return role_request(params["name"], description=params.get("description"), labels=params.get("labels"),
                        allow=params.get("allow"), deny=params.get("deny"), options=params.get("options"))


def run(module, client):
    ensure_resource(module, client, "role", desired_role)


def main():
    run_module(run, ARGUMENT_SPEC, supports_check_mode=True)


if __name__ == "__main__":
    main()
