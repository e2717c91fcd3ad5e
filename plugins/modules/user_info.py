#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: user_info
short_description: List local users
version_added: 1.1.0
description:
  - Returns the local users of this cluster with their roles and traits. Passwords are never returned.
  - Read-only; always reports C(changed=false). A O(name) that does not exist gives an empty list.
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes.info_module
options:
  name:
    description: Only this user.
    type: str
seealso:
  - module: gatehouse.clusters.user
'''

EXAMPLES = r'''
- name: All of them
  gatehouse.clusters.user_info:
  register: found

- name: One by name
  gatehouse.clusters.user_info:
    name: alice
  register: one
'''

RETURN = r'''
users:
  description: The user resources, as C(gatectl get user) shows them.
  returned: success
  type: list
  elements: dict
  contains:
    kind:
      description: Always V(user).
      type: str
      returned: always
    metadata:
      description: C(name) of the user.
      type: dict
      returned: always
    spec:
      description: C(roles) and C(traits).
      type: dict
      returned: always
  sample:
    - kind: user
      version: v2
      metadata: {name: alice}
      spec: {roles: [access], traits: {logins: [alice, ubuntu]}}
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import run_info_module


def main():
    run_info_module("user", "users")


if __name__ == "__main__":
    main()
