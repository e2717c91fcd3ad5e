#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: oidc_connector
short_description: Manage Gatehouse OpenID Connect single sign-on connectors
version_added: 1.0.0
description:
  - Create, update or remove an OIDC connector (a resource of kind C(oidc)) on a Gatehouse root cluster,
    with which users log in through an OpenID provider (C(gate login --proxy=ROOT --auth=NAME)).
  - The provider's claims become the users' external traits, carried in their certificates to
    every leaf cluster; O(claims_to_roles) decides their roles at the root.
  - The module manages the whole connector; options that are not given take the agent's defaults.
  - Changes are found with the agent's dry run, so lists are compared as the agent compares them
    and a changed O(client_secret) is detected without the agent ever showing it.
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - gatehouse.clusters.api
  - gatehouse.clusters.attributes
options:
  name:
    description: Name of the connector, the one users give to C(gate login --auth).
    type: str
    required: true
  state:
    description: V(present) creates or updates the connector; V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  issuer_url:
    description:
      - The provider's issuer, exactly as its discovery document states it (path included), for example
        V(https://idp.example.com/realms/corp). C(https://) is required (C(http://) only on a loopback address).
      - Required when O(state=present).
    type: str
  client_id:
    description:
      - The client ID the provider registered for Gatehouse.
      - Required when O(state=present).
    type: str
  client_secret:
    description:
      - The client secret the provider gave Gatehouse. It is never shown in the module's results or diff.
      - Required when O(state=present).
    type: str
  redirect_url:
    description:
      - The root proxy's callback, which must be registered at the provider as a redirect URI, for example
        V(https://root.example.com:3080/webapi/oidc/callback).
      - Required when O(state=present).
    type: str
  scope:
    description:
      - Scopes to ask the provider for; V(openid) is always added. The agent's default is
        V(openid), V(email) and V(profile).
    type: list
    elements: str
  claims_to_roles:
    description:
      - Which root roles users get from their claims; every entry applies.
      - Required when O(state=present).
    type: list
    elements: dict
    suboptions:
      claim:
        description: The claim to look at, for example V(groups).
        type: str
        required: true
      value:
        description:
          - A value of the claim; with C(*) a pattern whose stars capture, or a C(^regex$), matched against
            the whole value as role maps do.
        type: str
        required: true
      roles:
        description: The roles it gives; C($1) inserts what the pattern captured.
        type: list
        elements: str
        required: true
  username_claim:
    description: The claim whose value is the user name (the agent's default is V(email)).
    type: str
seealso:
  - module: gatehouse.clusters.role
notes:
  - Run the C(gatehouse.clusters.access) role to manage connectors together with roles and users.
'''

EXAMPLES = r'''
- name: Developers and administrators log in with the company's identity provider
  gatehouse.clusters.oidc_connector:
    name: corp
    issuer_url: https://idp.example.com/realms/corp
    client_id: gatehouse
    client_secret: "{{ vault_gatehouse_oidc_secret }}"
    redirect_url: https://root.example.com:3080/webapi/oidc/callback
    scope: [openid, email, profile, groups]
    claims_to_roles:
      - claim: groups
        value: developers
        roles: [access]
      - claim: groups
        value: '^admin-(.*)$'
        roles: ['admin-$1']

- name: Remove a connector
  gatehouse.clusters.oidc_connector:
    name: legacy
    state: absent
'''

RETURN = r'''
oidc_connector:
  description:
    - The connector as the agent stores it, without its client secret (in check mode, as it would be stored).
    - Empty when O(state=absent).
  returned: always
  type: dict
  sample:
    kind: oidc
    version: v3
    metadata: {name: corp}
    spec:
      issuer_url: https://idp.example.com/realms/corp
      client_id: gatehouse
      redirect_url: https://root.example.com:3080/webapi/oidc/callback
      scope: [openid, email, profile, groups]
      claims_to_roles:
        - {claim: groups, value: developers, roles: [access]}
      username_claim: email
secret_changed:
  description: Whether the run changed (or in check mode would change) the client secret, which the diff does not show.
  returned: when the connector existed and O(state=present)
  type: bool
'''

from ansible_collections.gatehouse.clusters.plugins.module_utils.api import ensure_resource, run_module
from ansible_collections.gatehouse.clusters.plugins.module_utils.resources import oidc_request

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    issuer_url=dict(type="str"),
    client_id=dict(type="str"),
    client_secret=dict(type="str", no_log=True),
    redirect_url=dict(type="str"),
    scope=dict(type="list", elements="str"),
    claims_to_roles=dict(type="list", elements="dict", options=dict(
        claim=dict(type="str", required=True),
        value=dict(type="str", required=True),
        roles=dict(type="list", elements="str", required=True),
    )),
    username_claim=dict(type="str"),
)


def desired_connector(params):
    """The connector to send for the module's parameters (the agent normalises and checks it)."""
    return oidc_request(params["name"], params)


def run(module, client):
    ensure_resource(module, client, "oidc_connector", desired_connector, kind="oidc")


def main():
    run_module(run, ARGUMENT_SPEC, supports_check_mode=True, required_if=[
        ("state", "present", ("issuer_url", "client_id", "client_secret", "redirect_url", "claims_to_roles"))])


if __name__ == "__main__":
    main()
