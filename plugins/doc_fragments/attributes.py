# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Attributes shared by the gatehouse.clusters modules."""

    # Modules that change state.
    DOCUMENTATION = r'''
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying the cluster.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change in check mode) as before and after resources; secrets are never included.
    support: full
  action_group:
    description: Use C(group/gatehouse.clusters.api) in C(module_defaults) to set the connection options for every module of the collection.
    support: full
    membership:
      - gatehouse.clusters.api
  platform:
    description: Runs on a Gatehouse auth server, or anywhere with O(api_url) and an admin identity.
    support: full
    platforms: posix
'''

    # Read-only modules.
    INFO_MODULE = r'''
attributes:
  check_mode:
    description: This action does not modify state, so it runs normally in check mode.
    support: full
    details:
      - It always reports C(changed=false).
  diff_mode:
    description: This action does not modify state.
    support: N/A
  action_group:
    description: Use C(group/gatehouse.clusters.api) in C(module_defaults) to set the connection options for every module of the collection.
    support: full
    membership:
      - gatehouse.clusters.api
  platform:
    description: Runs on a Gatehouse auth server, or anywhere with O(api_url) and an admin identity.
    support: full
    platforms: posix
'''
