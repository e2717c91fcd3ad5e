# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: nodes
short_description: Every SSH node of a Gatehouse root cluster and of the leaf clusters you may reach
version_added: 1.1.0
description:
  - Lists, through the root proxy's web API, the nodes of the root cluster and of every leaf cluster
    the logged-in identity may see (the root's C(cluster_labels) and each leaf's role mapping decide,
    exactly as for C(gate ls)), one host per node named C(NODE.CLUSTER).
  - Groups hosts by cluster (C(cluster_<name>)) and by label (C(label_<key>_<value>)); C(keyed_groups),
    C(groups) and C(compose) add more.
  - Each host gets variables that make Ansible reach it through the root proxy with the certificates
    from C(gate login) - no inbound port on a leaf is needed. The plugin writes an OpenSSH client
    configuration (mode 0600) next to the profile for that, as C(gate config) does.
  - The identity is a C(gate login) profile - a person's, or a machine identity created the same way
    for automation. Its certificate must be valid; log in again when it expired.
  - The inventory file name must end in C(gatehouse.yml) or C(gatehouse.yaml).
author:
  - Gatehouse maintainers (@gatehouse)
extends_documentation_fragment:
  - inventory_cache
  - constructed
options:
  plugin:
    description: The name of this plugin; it must always be set to V(gatehouse.clusters.nodes).
    required: true
    choices: [gatehouse.clusters.nodes]
    type: str
  gate_home:
    description: Directory of the C(gate) profiles.
    type: path
    default: ~/.gate
    env:
      - name: GATE_HOME
  profile:
    description: The profile to use (the root proxy's host name); the current one when left out.
    type: str
  clusters:
    description: Only these clusters (root and leaves); all that the identity may see when left out.
    type: list
    elements: str
  login:
    description: The Unix login (C(ansible_user)) on the nodes; the first login of the certificate when left out.
    type: str
  validate_certs:
    description:
      - Verify the root proxy's web certificate with the system trust store.
      - Left out, it follows the profile (a profile made with C(gate login --insecure) does not verify).
    type: bool
  timeout:
    description: Seconds to wait for each answer of the proxy (a leaf is asked through its tunnel).
    type: int
    default: 30
'''

EXAMPLES = r'''
# nodes.gatehouse.yml
plugin: gatehouse.clusters.nodes
keyed_groups:
  - key: gatehouse_labels.role | default('none')
    prefix: role

# nodes-berlin.gatehouse.yml: one leaf, another login, cached for five minutes
plugin: gatehouse.clusters.nodes
clusters: [berlin.example.com]
login: deploy
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/gatehouse-inventory
cache_timeout: 300
'''

import json
import os
import re
import time

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.six.moves.urllib.parse import quote
from ansible.module_utils.urls import open_url
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

NODE_PORT = 3022


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "gatehouse.clusters.nodes"

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and \
            path.endswith(("gatehouse.yml", "gatehouse.yaml"))

    # ------------------------------------------------------------------ the profile
    def _profile(self):
        home = os.path.expanduser(self.get_option("gate_home"))
        name = self.get_option("profile")
        if not name:
            try:
                with open(os.path.join(home, "current")) as fh:
                    name = fh.read().strip()
            except (IOError, OSError):
                raise AnsibleParserError("gatehouse inventory: you are not logged in (no current profile in %s); "
                                         "run 'gate login --proxy=HOST:3080 --user=NAME' first" % home)
        directory = os.path.join(home, "profiles", name)
        try:
            with open(os.path.join(directory, "profile.json")) as fh:
                data = json.load(fh)
        except (IOError, OSError, ValueError):
            raise AnsibleParserError("gatehouse inventory: no usable profile %s in %s; run 'gate login "
                                     "--proxy=%s:3080' again" % (name, home, name))
        return directory, data

    # ------------------------------------------------------------------ the proxy's API
    def _get(self, profile_dir, data, path):
        validate = self.get_option("validate_certs")
        if validate is None:
            validate = not data.get("insecure")
        url = "https://%s%s" % (data["web_proxy_addr"], path)
        try:
            resp = open_url(url, validate_certs=validate, timeout=self.get_option("timeout"),
                            client_cert=os.path.join(profile_dir, "tls.crt"),
                            client_key=os.path.join(profile_dir, "tls.key"), use_proxy=False)
            return json.loads(to_text(resp.read()))
        except Exception as exc:  # urllib's HTTPError carries the agent's JSON error
            raise AnsibleParserError("gatehouse inventory: %s" % _reason(exc, data["web_proxy_addr"]))

    def _fetch(self, profile_dir, data):
        wanted = self.get_option("clusters")
        clusters = [c for c in self._get(profile_dir, data, "/webapi/clusters")["items"]
                    if not wanted or c["name"] in wanted]
        out = []
        for cluster in clusters:
            if cluster.get("type") == "leaf" and cluster.get("status") != "online":
                self.display.warning("gatehouse inventory: cluster %s is offline; its nodes are left out"
                                     % cluster["name"])
                continue
            try:
                nodes = self._get(profile_dir, data, "/webapi/nodes?cluster=%s" % quote(cluster["name"]))["items"]
            except AnsibleParserError as exc:
                if cluster["name"] == data["cluster_name"]:
                    raise
                self.display.warning("%s; its nodes are left out" % exc)
                continue
            out.append({"cluster": cluster, "nodes": nodes})
        return out

    # ------------------------------------------------------------------ inventory
    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        profile_dir, data = self._profile()
        key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        found = None
        if use_cache:
            try:
                found = self._cache[key]
            except KeyError:
                pass
        if found is None:
            _require_valid_certificate(profile_dir, data)
            found = self._fetch(profile_dir, data)
            if self.get_option("cache"):
                self._cache[key] = found
        ssh_config = _write_ssh_config(profile_dir, data, [entry["cluster"]["name"] for entry in found])
        self._populate(found, data, ssh_config)

    def _populate(self, found, data, ssh_config):
        login = self.get_option("login") or (data.get("logins") or [data["user"]])[0]
        strict = self.get_option("strict")
        for entry in found:
            cluster = entry["cluster"]["name"]
            cluster_group = self.inventory.add_group(_group("cluster", cluster))
            for node in entry["nodes"]:
                name = node["metadata"]["name"]
                host = "%s.%s" % (name, cluster)
                labels = node["metadata"].get("labels") or {}
                self.inventory.add_host(host, group=cluster_group)
                hostvars = {
                    "ansible_host": host, "ansible_port": NODE_PORT, "ansible_user": login,
                    "ansible_ssh_common_args": "-F %s" % ssh_config,
                    "gatehouse_cluster": cluster, "gatehouse_node": name, "gatehouse_labels": labels,
                    "gatehouse_root": data["cluster_name"],
                }
                for var, value in hostvars.items():
                    self.inventory.set_variable(host, var, value)
                for label, value in labels.items():
                    self.inventory.add_child(self.inventory.add_group(_group("label", label, value)), host)
                self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
                self._add_host_to_composed_groups(self.get_option("groups"), hostvars, host, strict=strict)
                self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, host, strict=strict)


def _group(*parts):
    """cluster_leaf_example_com, label_env_prod: group names Ansible accepts."""
    return re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))


def _reason(exc, addr):
    body = getattr(exc, "read", None)
    if body is not None:
        try:
            return json.loads(to_text(body()))["error"]["message"]
        except Exception:  # not the agent's JSON: fall through to the transport's words
            pass
    text = to_text(getattr(exc, "reason", None) or exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return ("the root proxy at %s presented a certificate this machine cannot verify; install a trusted "
                "certificate on the proxy, or set validate_certs: false for a test setup" % addr)
    return "cannot reach the root proxy at %s (%s); check the address and that the proxy runs" % (addr, text)


def _require_valid_certificate(profile_dir, data):
    """The TLS certificate's end date, read without the agent: refuse an expired login up front."""
    import datetime
    from ansible.module_utils.common.text.converters import to_bytes
    try:
        from cryptography import x509
        with open(os.path.join(profile_dir, "tls.crt"), "rb") as fh:
            cert = x509.load_pem_x509_certificate(to_bytes(fh.read()))
    except ImportError:
        return  # the proxy refuses an expired certificate anyway, with its own message
    except (IOError, OSError, ValueError):
        raise AnsibleParserError("gatehouse inventory: the profile's certificate is missing or damaged; run "
                                 "'gate login --proxy=%s' again" % data["web_proxy_addr"])
    end = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    if end.timestamp() <= time.time():
        raise AnsibleParserError("gatehouse inventory: your certificate for cluster %s expired at %s; run 'gate "
                                 "login --proxy=%s' to get a new one" % (data["cluster_name"], end.isoformat(),
                                                                         data["web_proxy_addr"]))


def _write_ssh_config(profile_dir, data, clusters):
    """The OpenSSH config `gate config` writes for this profile (nodes as NAME.CLUSTER via the proxy)."""
    host, port = data["ssh_proxy_addr"].rsplit(":", 1)
    host = host.strip("[]")
    alias = "gatehouse-proxy-%s" % data["cluster_name"]
    credentials = ["    IdentitiesOnly yes",
                   "    IdentityFile %s" % os.path.join(profile_dir, "key"),
                   "    CertificateFile %s" % os.path.join(profile_dir, "key-cert.pub"),
                   "    UserKnownHostsFile %s" % os.path.join(profile_dir, "known_hosts"),
                   "    StrictHostKeyChecking yes", ""]
    who = (data["user"], data["web_proxy_addr"])
    lines = ["# Written by the gatehouse.clusters.nodes inventory for %s at %s." % who,
             "Host %s" % alias, "    HostName %s" % host, "    Port %s" % port,
             "    User %s" % (data.get("logins") or [data["user"]])[0], "    HostKeyAlias %s" % host] + credentials
    for cluster in clusters:
        lines += ["Host *.%s" % cluster, "    Port %d" % NODE_PORT, "    ProxyJump %s" % alias] + credentials
    path = os.path.join(profile_dir, "ansible_ssh_config")
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines))
    os.rename(path + ".tmp", path)
    return path
