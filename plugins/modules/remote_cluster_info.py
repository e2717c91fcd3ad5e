#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: remote_cluster_info
short_description: List the leaf clusters registered with a root cluster
version_added: 1.0.0
description:
  - Returns the C(remote_cluster) records of a root cluster - one per leaf cluster that
    established trust - with their labels and tunnel status (V(online) or V(offline), last heartbeat).
  - Read-only; always reports C(changed=false). A O(name) that does not exist gives an empty list.
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes.info_module
options:
  name:
    description: Only this leaf cluster.
    type: str
seealso:
  - module: gatehouse.clusters.remote_cluster_labels
  - module: gatehouse.clusters.cluster_info
'''

EXAMPLES = r'''
- name: Wait until the leaf's tunnel is online at the root
  gatehouse.clusters.remote_cluster_info:
    name: leaf-berlin
  register: leaf
  until: leaf.remote_clusters | length == 1 and leaf.remote_clusters[0].status.connection == 'online'
  retries: 30
  delay: 2

- name: All leaves and their labels
  gatehouse.clusters.remote_cluster_info:
  register: leaves
'''

RETURN = r'''
remote_clusters:
  description: The remote clusters (leaves) registered with the root.
  returned: success
  type: list
  elements: dict
  contains:
    kind:
      description: Always V(remote_cluster).
      type: str
      returned: always
    metadata:
      description: C(name) and C(labels) of the leaf.
      type: dict
      returned: always
    status:
      description: C(connection) (V(online) or V(offline)) and C(last_heartbeat) (RFC 3339, empty if never).
      type: dict
      returned: always
  sample:
    - kind: remote_cluster
      version: v3
      metadata: {name: leaf-berlin, labels: {env: prod}}
      status: {connection: online, last_heartbeat: '2024-05-01T12:00:03.120000Z'}
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import run_info_module


def main():
    run_info_module("remote_cluster", "remote_clusters")


if __name__ == "__main__":
    main()
