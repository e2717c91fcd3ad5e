#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: node_info
short_description: List the SSH nodes registered in a cluster
version_added: 1.1.0
description:
  - Returns the C(node) records of this cluster - name, labels, the address the proxy routes to and the
    last heartbeat. A node that stops heartbeating disappears after four of its heartbeat intervals.
  - Read-only; always reports C(changed=false). A O(name) that does not exist gives an empty list.
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes.info_module
options:
  name:
    description: Only this node.
    type: str
seealso:
  - module: gatehouse.clusters.cluster_info
'''

EXAMPLES = r'''
- name: All of them
  gatehouse.clusters.node_info:
  register: found

- name: One by name
  gatehouse.clusters.node_info:
    name: web1
  register: one
'''

RETURN = r'''
nodes:
  description: The node resources, as C(gatectl get node) shows them.
  returned: success
  type: list
  elements: dict
  contains:
    kind:
      description: Always V(node).
      type: str
      returned: always
    metadata:
      description: C(name) and C(labels) of the node.
      type: dict
      returned: always
    spec:
      description: C(addr) (where the proxy reaches it), C(hostname) and C(cluster_name).
      type: dict
      returned: always
  sample:
    - kind: node
      version: v2
      metadata: {name: web1, labels: {env: prod}}
      spec: {addr: '10.0.0.5:3022', hostname: web1, cluster_name: root.example.com}
      status: {last_heartbeat: '2024-05-01T12:00:03.120000Z'}
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import run_info_module


def main():
    run_info_module("node", "nodes")


if __name__ == "__main__":
    main()
