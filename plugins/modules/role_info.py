#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: role_info
short_description: List roles
version_added: 1.1.0
description:
  - Returns the roles of this cluster in the agent's normalised form (every key present, durations in seconds), as M(gatehouse.clusters.role) writes them.
  - Read-only; always reports C(changed=false). A O(name) that does not exist gives an empty list.
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes.info_module
options:
  name:
    description: Only this role.
    type: str
seealso:
  - module: gatehouse.clusters.role
'''

EXAMPLES = r'''
- name: All of them
  gatehouse.clusters.role_info:
  register: found

- name: One by name
  gatehouse.clusters.role_info:
    name: access
  register: one
'''

RETURN = r'''
roles:
  description: The role resources, as C(gatectl get role) shows them.
  returned: success
  type: list
  elements: dict
  contains:
    kind:
      description: Always V(role).
      type: str
      returned: always
    metadata:
      description: C(name), C(description) and C(labels) of the role.
      type: dict
      returned: always
    spec:
      description: C(options), C(allow) and C(deny).
      type: dict
      returned: always
  sample:
    - kind: role
      version: v5
      metadata: {name: access, description: SSH access with the user's own logins, labels: {}}
      spec:
        allow: {logins: ['{{internal.logins}}'], node_labels: {'*': ['*']}, cluster_labels: {'*': ['*']}}
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import run_info_module


def main():
    run_info_module("role", "roles")


if __name__ == "__main__":
    main()
