#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: user
short_description: Manage Gatehouse local users
version_added: 1.0.0
description:
  - Create, update or remove a local user of a Gatehouse cluster, with its roles and traits
    (such as the Unix logins it may use, the C(logins) trait).
  - The module manages the user's whole record; traits that are not given are removed.
  - Roles and trait values are compared as sets, so reordering them does not report a change.
  - Passwords are never module arguments. Set one on the auth server with
    C(gatectl users passwd NAME), interactively or with C(--password-stdin).
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes
options:
  name:
    description: User name.
    type: str
    required: true
  state:
    description: V(present) creates or updates the user; V(absent) removes it (and its password).
    type: str
    choices: [present, absent]
    default: present
  roles:
    description:
      - Roles of the user; each must already exist in the cluster.
      - Required when O(state=present).
    type: list
    elements: str
  logins:
    description:
      - Unix logins of the user (the C(logins) trait), which roles use through C({{internal.logins}}).
      - Shorthand for the C(logins) entry of O(traits), which must then not have one.
    type: list
    elements: str
  traits:
    description:
      - 'All traits of the user, as a mapping of trait names to lists of values,
        for example C({logins: [ubuntu], groups: [ops]}).'
    type: dict
seealso:
  - module: gatehouse.clusters.role
'''

EXAMPLES = r'''
- name: Alice may use the access role with her own logins
  gatehouse.clusters.user:
    name: alice
    roles: [access]
    logins: [alice, ubuntu]

- name: A user with several traits used by role templates
  gatehouse.clusters.user:
    name: bob
    roles: [operator, auditor]
    logins: [bob]
    traits:
      groups: [ops, oncall]

- name: Remove a user
  gatehouse.clusters.user:
    name: mallory
    state: absent
'''

RETURN = r'''
user:
  description:
    - The user as the agent stores it, after the change (in check mode, as it would be stored).
    - Empty when O(state=absent).
  returned: always
  type: dict
  sample:
    kind: user
    version: v2
    metadata: {name: alice}
    spec: {roles: [access], traits: {logins: [alice, ubuntu]}}
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import ensure_resource, run_module
from ansible_collections.gatehouse.clusters.plugins.module_utils.resources import user_request

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    roles=dict(type="list", elements="str"),
    logins=dict(type="list", elements="str"),
    traits=dict(type="dict"),
)


def desired_user(params):
    """The user to send for the module's parameters (the agent normalises and checks it)."""
    return user_request(params["name"], params.get("roles"), traits=params.get("traits"), logins=params.get("logins"))


def run(module, client):
    ensure_resource(module, client, "user", desired_user)


def main():
    run_module(run, ARGUMENT_SPEC, supports_check_mode=True, required_if=[("state", "present", ("roles",))])


if __name__ == "__main__":
    main()
