#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: remote_cluster
short_description: Remove a leaf cluster from a root cluster, or set its exact labels
version_added: 1.1.0
description:
  - On a root cluster, manages the C(remote_cluster) record of a leaf that established trust.
  - O(state=absent) removes the trust from the root's side, as C(gatectl rm rc/NAME) does - the
    leaf's certificate authorities are deleted, its tunnels are dropped and root users can no longer
    reach it. The leaf can join again later with a new token (after removing its C(trusted_cluster)).
  - O(state=present) requires the leaf to have joined already (a remote cluster appears when the leaf
    creates its C(trusted_cluster)); with O(labels) it sets exactly those labels. To add or remove
    single labels use M(gatehouse.clusters.remote_cluster_labels).
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes
options:
  name:
    description: Name of the leaf cluster.
    type: str
    required: true
  state:
    description: V(absent) removes the leaf from this root; V(present) checks it is there.
    type: str
    choices: [present, absent]
    default: present
  labels:
    description:
      - With O(state=present), the complete set of labels the leaf should have (others are removed).
      - Left out, the labels are not touched.
    type: dict
seealso:
  - module: gatehouse.clusters.remote_cluster_labels
  - module: gatehouse.clusters.remote_cluster_info
  - module: gatehouse.clusters.trusted_cluster
'''

EXAMPLES = r'''
- name: Remove a decommissioned site from the root
  gatehouse.clusters.remote_cluster:
    name: leaf-paris
    state: absent

- name: Exactly these labels on a leaf
  gatehouse.clusters.remote_cluster:
    name: leaf-berlin
    labels:
      env: prod
      region: eu
'''

RETURN = r'''
remote_cluster:
  description: The remote cluster after the change (in check mode, as it would be). Empty when absent.
  returned: always
  type: dict
  sample:
    kind: remote_cluster
    version: v3
    metadata: {name: leaf-berlin, labels: {env: prod, region: eu}}
    status: {connection: online, last_heartbeat: '2024-05-01T12:00:03.120000Z'}
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import exit_absent, record_change, run_module
from ansible_collections.gatehouse.clusters.plugins.module_utils.resources import ResourceError, static_labels

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    labels=dict(type="dict"),
)


def run(module, client):
    params = module.params
    name = params["name"]
    result = dict(changed=False, remote_cluster={})
    current = client.get_resource("remote_cluster", name)
    if params["state"] == "absent":
        exit_absent(module, client, "remote_cluster", name, current, result)
    if current is None:
        module.fail_json(msg='remote cluster "%s" does not exist on this root cluster; a leaf appears once its '
                             "trusted_cluster is created with a token from this root (list them with "
                             "'gatectl get rc')" % name)
    result["remote_cluster"] = current
    if params.get("labels") is None:
        module.exit_json(**result)
    try:
        labels = static_labels(params["labels"], "labels")
    except ResourceError as exc:
        module.fail_json(msg="remote cluster %s: %s" % (name, exc))
    request = {"kind": "remote_cluster", "metadata": {"name": name, "labels": labels}}
    plan = client.plan_resource(request, force=True)
    if plan.get("changed"):
        record_change(module, result, plan.get("current"), plan["resource"], "remote_cluster/%s" % name,
                      remote_cluster=dict(current, metadata=plan["resource"]["metadata"]))
        if not module.check_mode:
            client.put_resource(request, force=True)
            result["remote_cluster"] = client.get_resource("remote_cluster", name) or result["remote_cluster"]
    module.exit_json(**result)


def main():
    run_module(run, ARGUMENT_SPEC, supports_check_mode=True)


if __name__ == "__main__":
    main()
