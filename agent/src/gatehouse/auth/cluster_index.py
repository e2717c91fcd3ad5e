"""Indexes that keep a trust handshake's checks cheap at fleet size.

A root with 10,000 leaves must not read every CA and every cluster name to admit the
next one. Two index records, written in the same transaction as what they index:

* `ca_keys/<sha256 of the key>` → which cluster holds an SSH CA key (and of which type):
  "a key any cluster here holds is refused" is one read, and two handshakes racing with
  the same key cannot both commit (the second `create` of the index record fails).
* `cluster_names/<labels reversed>` → every cluster this one knows by name (itself, its
  leaves, the root it trusts): the names that fall under a leaf's name are one range
  read, the names it falls under one read per label.

Records written before the indexes existed are indexed when auth starts (`backfill`).
"""

from __future__ import annotations

import logging

from .. import pki
from ..backend.base import Op
from ..errors import AlreadyExists, BadParameter, NotFound
from . import keys

log = logging.getLogger("gatehouse.auth.index")


def ca_ops(cluster: str, ca_type: str, public: str, local: bool = False) -> list[Op]:
    """The index op to write with a new SSH CA record (it fails if any cluster holds the key already)."""
    try:
        canonical = pki.ca_public_key(public)
    except BadParameter:
        return []  # not a key anyone can hold: nothing to index
    return [Op("create", keys.ca_key_index(canonical),
               {"cluster_name": cluster, "type": ca_type, "local": bool(local)})]


def name_ops(name: str) -> list[Op]:
    """The index op to write with a new remote or trusted cluster (fails if the name is known already)."""
    return [Op("create", keys.cluster_name_index(name), {"name": name})]


async def delete_ops(backend, cluster: str) -> list[Op]:
    """Ops that remove the index records of CLUSTER's CAs and of its name (those that exist)."""
    ops = []
    for item in await backend.get_range(keys.cas_of(cluster)):
        try:
            key = keys.ca_key_index(pki.ca_public_key(item.value.get("public")))
        except (BadParameter, AttributeError, TypeError):
            continue
        if await _held_by(backend, key, cluster):
            ops.append(Op("delete", key))
    if await backend.exists(keys.cluster_name_index(cluster)):
        ops.append(Op("delete", keys.cluster_name_index(cluster)))
    return ops


async def _held_by(backend, key: str, cluster: str) -> bool:
    try:
        return (await backend.get(key)).value.get("cluster_name") == cluster
    except NotFound:
        return False


async def ca_owner(backend, public_key: str) -> dict | None:
    """{cluster_name, type, local} of the cluster holding the canonical SSH key PUBLIC_KEY, or None."""
    try:
        return (await backend.get(keys.ca_key_index(public_key))).value
    except NotFound:
        return None


async def overlapping(backend, leaf: str, exclude=()) -> list[str]:
    """Known cluster names (other than LEAF and EXCLUDE) that LEAF's name covers or falls under."""
    found = []
    base = keys.cluster_name_index(leaf)
    for item in await backend.get_range(base + "/"):  # names under LEAF ("*.LEAF" would cover them)
        found.append(item.value.get("name", ""))
    labels = leaf.lower().rstrip(".").split(".")
    for i in range(1, len(labels)):  # names LEAF falls under ("*.NAME" would cover the leaf's hosts)
        try:
            found.append((await backend.get(keys.cluster_name_index(".".join(labels[i:])))).value.get("name", ""))
        except NotFound:
            continue
    skip = {leaf.lower(), *(e.lower() for e in exclude)}
    return [name for name in found if name and name.lower() not in skip]


async def backfill(backend, own_cluster: str) -> int:
    """Index what earlier versions stored without indexes; returns how many records were added."""
    have = {i.key for i in await backend.get_range(keys.CA_KEYS_PREFIX)}
    have |= {i.key for i in await backend.get_range(keys.CLUSTER_NAMES_PREFIX)}
    ops: dict[str, Op] = {}
    names = {own_cluster}
    for item in await backend.get_range(keys.CAS_PREFIX):
        record = item.value
        if not isinstance(record, dict) or record.get("type") not in ("host", "user"):
            continue
        for op in ca_ops(str(record.get("cluster_name")), record["type"], record.get("public"),
                         bool(record.get("local"))):
            if op.key not in have and op.key not in ops:
                ops[op.key] = op
        if isinstance(record.get("cluster_name"), str):
            names.add(record["cluster_name"])
    for prefix in (keys.REMOTE_CLUSTERS_PREFIX, keys.TRUSTED_CLUSTERS_PREFIX):
        names |= {keys.name_of(i.key) for i in await backend.get_range(prefix)}
    for name in names:
        for op in name_ops(name):
            if op.key not in have and op.key not in ops:
                ops[op.key] = op
    added = 0
    for op in ops.values():
        try:
            await backend.atomic([op])
            added += 1
        except AlreadyExists:
            continue
    if added:
        log.info("indexed %d certificate authority keys and cluster names stored by an earlier version", added)
    return added
