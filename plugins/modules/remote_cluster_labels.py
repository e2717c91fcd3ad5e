#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: remote_cluster_labels
short_description: Set the labels of a leaf cluster on the root
version_added: 1.0.0
description:
  - Runs against a root cluster's auth API and sets the labels of a C(remote_cluster), the
    record a leaf cluster gets on the root when it establishes trust.
  - Root roles' C(cluster_labels) decide from these labels which leaf clusters a user sees and
    can route to. Only the root sets them; a leaf can never label itself.
  - The task fails when the remote cluster does not exist, unless O(wait) lets it wait for the
    leaf to register.
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
  labels:
    description:
      - Labels as a mapping of names to values.
      - With O(mode=merge), a label whose value is C(null) is removed.
    type: dict
    required: true
  mode:
    description:
      - V(merge) adds and updates the given labels and keeps the others.
      - V(replace) makes the labels exactly O(labels).
    type: str
    choices: [merge, replace]
    default: merge
  wait:
    description: Wait for the leaf cluster to register (its trust handshake) instead of failing at once.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait with O(wait=true).
    type: int
    default: 60
seealso:
  - module: gatehouse.clusters.remote_cluster_info
  - module: gatehouse.clusters.trusted_cluster
  - module: gatehouse.clusters.role
'''

EXAMPLES = r'''
- name: Label a leaf as production for the root's cluster_labels rules
  gatehouse.clusters.remote_cluster_labels:
    name: leaf-berlin
    labels:
      env: prod
      region: eu

- name: Make the labels exactly these, once the leaf has joined
  gatehouse.clusters.remote_cluster_labels:
    name: leaf-berlin
    labels:
      env: staging
    mode: replace
    wait: true
    wait_timeout: 120

- name: Drop one label, keep the others
  gatehouse.clusters.remote_cluster_labels:
    name: leaf-berlin
    labels:
      region: null
'''

RETURN = r'''
labels:
  description: The remote cluster's labels after the change (in check mode, as they would be).
  returned: success
  type: dict
  sample: {env: prod, region: eu}
remote_cluster:
  description: The remote cluster as the root reports it, with its connection status.
  returned: success
  type: dict
  sample:
    kind: remote_cluster
    version: v3
    metadata: {name: leaf-berlin, labels: {env: prod, region: eu}}
    status: {connection: online, last_heartbeat: '2024-05-01T12:00:03.120000Z'}
'''

import time

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import record_change, run_module
from ansible_collections.gatehouse.clusters.plugins.module_utils.resources import ResourceError, static_labels

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    labels=dict(type="dict", required=True),
    mode=dict(type="str", default="merge", choices=["merge", "replace"]),
    wait=dict(type="bool", default=False),
    wait_timeout=dict(type="int", default=60),
)
POLL_INTERVAL = 0.5


def wanted_labels(current, labels, mode):
    """The labels to store: ``labels`` merged into ``current`` (None removes), or exactly ``labels``."""
    if mode == "replace":
        removed = sorted(k for k, v in labels.items() if v is None)
        if removed:
            raise ResourceError("labels.%s is null; with mode=replace leave the label out instead" % removed[0])
        return static_labels(labels, "labels")
    out = dict(current or {})
    for key, value in labels.items():
        if value is None:
            out.pop(key, None)
        else:
            out.update(static_labels({key: value}, "labels"))
    return out


def find(module, client, name, wait, timeout):
    deadline = time.time() + max(timeout, 0)
    while True:
        current = client.get_resource("remote_cluster", name)
        if current is not None:
            return current
        if not wait or time.time() >= deadline:
            waited = " after waiting %s seconds" % timeout if wait else ""
            hint = "" if wait else ", or set wait: true to wait for it"
            module.fail_json(msg='remote cluster "%s" does not exist on this root cluster%s; a leaf appears once '
                                 "its trusted_cluster is created with a token from this root (list them with "
                                 "'gatectl get rc')%s" % (name, waited, hint))
        time.sleep(POLL_INTERVAL)


def run(module, client):
    params = module.params
    name = params["name"]
    try:
        wanted_labels({}, params["labels"], params["mode"])  # bad input fails before the agent is asked
    except ResourceError as exc:
        module.fail_json(msg="remote cluster %s: %s" % (name, exc))
    current = find(module, client, name, params["wait"], params["wait_timeout"])
    before = dict((current.get("metadata") or {}).get("labels") or {})
    after = wanted_labels(before, params["labels"], params["mode"])
    result = dict(changed=False, labels=before, remote_cluster=current)
    if after == before:
        module.exit_json(**result)
    record_change(module, result, {"labels": before}, {"labels": after}, "remote_cluster/%s labels" % name,
                  labels=after)
    if not module.check_mode:
        stored = client.set_remote_cluster_labels(name, after)
        result.update(remote_cluster=stored, labels=(stored.get("metadata") or {}).get("labels", after))
    module.exit_json(**result)


def main():
    run_module(run, ARGUMENT_SPEC, supports_check_mode=True)


if __name__ == "__main__":
    main()
