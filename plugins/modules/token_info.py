#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: token_info
short_description: List join tokens
version_added: 1.1.0
description:
  - Returns the join tokens of this cluster - name, types, labels and expiry. A token's value is never
    returned (the agent keeps only its hash).
  - Read-only; always reports C(changed=false). A O(name) that does not exist gives an empty list.
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes.info_module
options:
  name:
    description: Only this token (by name).
    type: str
seealso:
  - module: gatehouse.clusters.join_token
'''

EXAMPLES = r'''
- name: All of them
  gatehouse.clusters.token_info:
  register: found

- name: One by name
  gatehouse.clusters.token_info:
    name: leaf-invite
  register: one
'''

RETURN = r'''
tokens:
  description: The token resources, as C(gatectl get token) shows them.
  returned: success
  type: list
  elements: dict
  contains:
    kind:
      description: Always V(token).
      type: str
      returned: always
    metadata:
      description: C(name) and C(expires) (RFC 3339) of the token.
      type: dict
      returned: always
    spec:
      description: C(roles) (the token types) and C(labels) given to what joins with it.
      type: dict
      returned: always
  sample:
    - kind: token
      version: v2
      metadata: {name: leaf-invite, expires: '2024-05-01T12:15:00.000000Z'}
      spec: {roles: [trusted_cluster], labels: {env: prod}}
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import run_info_module


def main():
    run_info_module("token", "tokens")


if __name__ == "__main__":
    main()
