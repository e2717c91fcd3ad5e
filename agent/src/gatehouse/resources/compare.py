"""Does a change change anything? Order-blind comparison of normalised resources.

Lists in resources are sets in meaning (logins, roles, label values), so two
resources are the same when their metadata and spec are equal with every list
sorted and de-duplicated. The server's dry run (`PUT /v1/resources?dry_run=true`)
answers with this, so the Ansible modules decide "changed" with the agent's rules.
"""

from __future__ import annotations

import json


def canonical(value):
    """A copy in which every list is sorted and de-duplicated."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = {}
        for item in value:
            norm = canonical(item)
            items[json.dumps(norm, sort_keys=True)] = norm
        return [items[k] for k in sorted(items)]
    return value


def same(desired: dict | None, current: dict | None, sections=("metadata", "spec")) -> bool:
    """Whether two resources mean the same (their version and status are not compared)."""
    if desired is None or current is None:
        return desired is current
    return all(canonical(desired.get(k)) == canonical(current.get(k)) for k in sections)
