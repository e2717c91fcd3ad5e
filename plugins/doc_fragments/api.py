# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """How every gatehouse.clusters module reaches the Gatehouse auth API."""

    DOCUMENTATION = r'''
options:
  data_dir:
    description:
      - The Gatehouse agent's data directory on the host the task runs on.
      - By default the module uses the local admin identity the agent writes to
        C(<data_dir>/admin/) on an auth server (C(identity.crt), C(identity.key),
        C(ca.crt) and C(auth_addr)), the same identity C(gatectl) uses there.
      - Reading it needs root or the user that owns the data directory, so run the
        task with privilege escalation (C(become=true)) or as that user.
    type: path
    default: /var/lib/gatehouse
  api_url:
    description:
      - Address of the auth API, as C(https://HOST:PORT) or C(HOST:PORT) (port 3025 by default on the agent).
      - Defaults to the first address in C(<data_dir>/admin/auth_addr) (the local auth server).
      - Set it, together with O(client_cert), O(client_key) and O(ca_cert), to manage a
        cluster from a controller that is not its auth server.
    type: str
  client_cert:
    description:
      - X.509 client certificate (PEM) of an C(admin) identity of the cluster.
      - Defaults to C(<data_dir>/admin/identity.crt).
    type: path
  client_key:
    description:
      - Private key (PEM) of O(client_cert).
      - Defaults to C(<data_dir>/admin/identity.key).
    type: path
  ca_cert:
    description:
      - The cluster's X.509 CA certificate (PEM). The auth server's certificate must be
        issued by it; as with C(gatectl), only this CA is trusted and host names are not
        checked, because cluster members reach the auth server by addresses the private
        CA cannot know in advance.
      - Defaults to C(<data_dir>/admin/ca.crt).
    type: path
  timeout:
    description:
      - Seconds to wait for each answer from the auth API.
    type: int
    default: 30
notes:
  - All modules of the collection are in the action group C(gatehouse.clusters.api), so
    C(module_defaults) with C(group/gatehouse.clusters.api) sets the connection options for a play.
  - Errors name their cause - the agent not running (connection refused), a TLS failure,
    a missing or unreadable identity file - and errors the agent reports (validation,
    permission, not found, handshake refusals) are shown with the agent's own message.
'''
