#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: trusted_cluster_info
short_description: List the root clusters a leaf trusts
version_added: 1.1.0
description:
  - Returns the C(trusted_cluster) records of a leaf cluster (without the join token) with their tunnel
    status - V(online) or V(offline), how many root proxies it holds tunnels to, and the tunnel address in use.
  - Read-only; always reports C(changed=false). A O(name) that does not exist gives an empty list.
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes.info_module
options:
  name:
    description: Only this root cluster.
    type: str
seealso:
  - module: gatehouse.clusters.trusted_cluster
  - module: gatehouse.clusters.remote_cluster_info
'''

EXAMPLES = r'''
- name: All of them
  gatehouse.clusters.trusted_cluster_info:
  register: found

- name: One by name
  gatehouse.clusters.trusted_cluster_info:
    name: root.example.com
  register: one
'''

RETURN = r'''
trusted_clusters:
  description: The trusted_cluster resources, as C(gatectl get trusted_cluster) shows them.
  returned: success
  type: list
  elements: dict
  contains:
    kind:
      description: Always V(trusted_cluster).
      type: str
      returned: always
    spec:
      description: C(enabled), C(web_proxy_addr), C(tunnel_addr) and C(role_map); never the token.
      type: dict
      returned: always
    status:
      description: C(connection), C(tunnels) and C(tunnel_addr).
      type: dict
      returned: always
  sample:
    - kind: trusted_cluster
      version: v2
      metadata: {name: root.example.com}
      spec: {enabled: true, web_proxy_addr: 'root.example.com:3080', tunnel_addr: 'root.example.com:3080',
             role_map: [{remote: access, local: [visitor]}]}
      status: {connection: online, tunnels: 2, tunnel_addr: 'root.example.com:3024'}
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import run_info_module


def main():
    run_info_module("trusted_cluster", "trusted_clusters")


if __name__ == "__main__":
    main()
