#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: cluster_info
short_description: Read a Gatehouse cluster's identity, CAs and trust relations
version_added: 1.0.0
description:
  - Returns the cluster's name and agent version, the fingerprints of the certificate
    authorities it knows (its own and those of trusted clusters), resource counts, the leaf
    clusters registered with it (on a root) and the root clusters it trusts (on a leaf).
  - Read-only; always reports C(changed=false).
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes.info_module
options: {}
seealso:
  - module: gatehouse.clusters.remote_cluster_info
'''

EXAMPLES = r'''
- name: Read the root cluster's status
  gatehouse.clusters.cluster_info:
  register: root

- name: Show its host CA fingerprint, to compare with what a leaf pinned
  ansible.builtin.debug:
    msg: >-
      {{ root.cas | selectattr('type', 'equalto', 'host')
         | selectattr('cluster_name', 'equalto', root.cluster_name)
         | map(attribute='fingerprint') | first }}

- name: Fail when a leaf is offline
  ansible.builtin.assert:
    that: root.remote_clusters | selectattr('status.connection', 'equalto', 'offline') | list | length == 0
'''

RETURN = r'''
cluster_name:
  description: Name of the cluster.
  returned: success
  type: str
  sample: root.example.com
version:
  description: Version of the Gatehouse agent running the auth service.
  returned: success
  type: str
  sample: 1.0.0
server_time:
  description: The auth server's clock (RFC 3339, UTC).
  returned: success
  type: str
  sample: '2024-05-01T12:00:00.000000Z'
auth_addr:
  description: The auth service's advertised address.
  returned: success
  type: str
  sample: auth.example.com:3025
cas:
  description: Certificate authorities known to the cluster, public information only.
  returned: success
  type: list
  elements: dict
  contains:
    type:
      description: V(user), V(host) or V(tls).
      type: str
      returned: always
    cluster_name:
      description: The cluster the authority belongs to (this one, or a trusted one).
      type: str
      returned: always
    fingerprint:
      description: SHA-256 fingerprint of the authority's public key.
      type: str
      returned: always
    active:
      description: Whether certificates it issued are accepted now (V(false) while trust is disabled).
      type: bool
      returned: always
  sample:
    - {type: host, cluster_name: root.example.com, fingerprint: 'SHA256:IU85DaeUxUOiU0LYrzBr5+GcjdALaFQ4UfFVx0w0RuA', active: true}
counts:
  description: Number of resources of each kind.
  returned: success
  type: dict
  sample: {user: 3, role: 2, node: 5, token: 1, remote_cluster: 2, trusted_cluster: 0}
remote_clusters:
  description: Leaf clusters registered with this (root) cluster, with connection status and labels.
  returned: success
  type: list
  elements: dict
  sample:
    - kind: remote_cluster
      version: v3
      metadata: {name: leaf-berlin, labels: {env: prod}}
      status: {connection: online, last_heartbeat: '2024-05-01T12:00:03.120000Z'}
trusted_clusters:
  description: Root clusters this (leaf) cluster trusts, without tokens, with tunnel status.
  returned: success
  type: list
  elements: dict
  sample:
    - kind: trusted_cluster
      version: v2
      metadata: {name: root.example.com}
      spec: {enabled: true, web_proxy_addr: 'root.example.com:3080', tunnel_addr: 'root.example.com:3080',
             role_map: [{remote: access, local: [visitor]}]}
      status: {connection: online, tunnels: 1, tunnel_addr: 'root.example.com:3024'}
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import run_module
from ansible_collections.gatehouse.clusters.plugins.module_utils.resources import without_secrets


def run(module, client):
    status = client.status()
    result = dict(changed=False)
    for key in ("cluster_name", "version", "server_time", "auth_addr"):
        result[key] = status.get(key, "")
    result["cas"] = status.get("cas") or []
    result["counts"] = status.get("counts") or {}
    result["remote_clusters"] = client.list_resources("remote_cluster")
    result["trusted_clusters"] = [without_secrets(tc) for tc in client.list_resources("trusted_cluster")]
    module.exit_json(**result)


def main():
    run_module(run, {}, supports_check_mode=True)


if __name__ == "__main__":
    main()
