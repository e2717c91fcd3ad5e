#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: audit_info
short_description: Search a cluster's audit log
version_added: 1.1.0
description:
  - Returns audit events of the cluster, newest first, as C(gatectl audit search) finds them - on a root
    also the events of the leaf clusters that forward theirs (O(cluster) picks one).
  - Each event carries its place in its cluster's hash chain (C(stream), C(seq), C(prev), C(hash)).
  - Bounded - at most O(max_events) events are returned (fetched in pages of up to 1000); when more match,
    RV(next) holds the cursor to continue with.
  - Read-only; always reports C(changed=false). Needs the admin identity (the default on an auth server) or a
    user whose roles say C(audit=read) (role option audit set to read).
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes.info_module
options:
  cluster:
    description: Only events of this cluster (this one, or on a root one of its forwarding leaves).
    type: str
  user:
    description: Only events about this user.
    type: str
  event:
    description: Only this event type (V(session.start)), or a prefix ending in C(*) (V(session.*)).
    type: str
  session:
    description: Only events of this session id.
    type: str
  since:
    description: From this long ago (V(1h), V(30m)) or from this RFC 3339 time (V(2026-12-01T10:00:00Z)).
    type: str
  until:
    description: Up to this long ago or this time.
    type: str
  max_events:
    description: The most events to return (1 to 10000).
    type: int
    default: 1000
  cursor:
    description: Continue a search where an earlier one stopped (its RV(next)).
    type: str
seealso:
  - module: gatehouse.clusters.cluster_info
'''

EXAMPLES = r'''
- name: Who logged in to the leaves' nodes in the last day
  gatehouse.clusters.audit_info:
    event: session.start
    since: 24h
  register: sessions

- name: Everything about one session, across the root and the leaf it ran on
  gatehouse.clusters.audit_info:
    session: 3f2c9a7e-1b2d-4c3e-8f4a-5b6c7d8e9f00
  register: one_session
'''

RETURN = r'''
events:
  description: The events, newest first.
  returned: success
  type: list
  elements: dict
  sample:
    - event: session.start
      time: '2026-12-04T10:00:00.123456Z'
      cluster_name: leaf.example.com
      stream: leaf.example.com
      seq: 42
      user: alice
      login: ubuntu
      node: web1
      sid: 3f2c9a7e-1b2d-4c3e-8f4a-5b6c7d8e9f00
      success: true
count:
  description: How many events RV(events) holds.
  returned: success
  type: int
next:
  description: The cursor to pass as O(cursor) for the events after these; empty when there are no more.
  returned: success
  type: str
'''

from ansible.module_utils.six.moves.urllib.parse import urlencode

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import run_module

ARGUMENT_SPEC = dict(
    cluster=dict(type="str"),
    user=dict(type="str"),
    event=dict(type="str"),
    session=dict(type="str"),
    since=dict(type="str"),
    until=dict(type="str"),
    max_events=dict(type="int", default=1000),
    cursor=dict(type="str"),
)
PAGE = 1000
MAX_EVENTS = 10000


def run(module, client):
    params = module.params
    wanted = params["max_events"]
    if not 1 <= wanted <= MAX_EVENTS:
        module.fail_json(msg="max_events must be from 1 to %d, not %d" % (MAX_EVENTS, wanted))
    query = dict((key, params[key]) for key in ("cluster", "user", "event", "session", "since", "until", "cursor")
                 if params.get(key))
    events, nxt = [], ""
    while len(events) < wanted:
        query["limit"] = str(min(PAGE, wanted - len(events)))
        page = client.get("/v1/audit/events?" + urlencode(sorted(query.items())))
        events.extend(page.get("items") or [])
        nxt = page.get("next") or ""
        if not nxt:
            break
        query["cursor"] = nxt
    module.exit_json(changed=False, events=events, count=len(events), next=nxt)


def main():
    run_module(run, ARGUMENT_SPEC, supports_check_mode=True)


if __name__ == "__main__":
    main()
