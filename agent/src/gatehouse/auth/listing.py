"""Filtering and paging for cluster listings (`gatectl get rc`, `gate clusters`), pure.

A fleet root lists thousands of leaves, so the API takes a label filter, a search
text and a page size, and answers a page plus the name to continue after. Without a
page size it answers everything, as earlier versions did. Items are dicts with a
name and labels; the caller says where they are.
"""

from __future__ import annotations

from ..errors import BadParameter
from ..resources import parse_labels_arg

#: The largest page one request may ask for (a page of 10,000 leaves is a few MB of JSON).
MAX_PAGE = 1000
MAX_SEARCH = 100


class Query:
    """What a listing request asks for, checked: labels (all must match), search text, limit, start_after."""

    def __init__(self, labels: dict[str, str], search: str, limit: int, start_after: str):
        self.labels, self.search, self.limit, self.start_after = labels, search, limit, start_after

    @property
    def is_filtered(self) -> bool:
        return bool(self.labels or self.search)


def parse_query(params) -> Query:
    """From request parameters (`labels=env=prod,team=ops`, `search=TEXT`, `limit=N`, `start_after=NAME`)."""
    labels = parse_labels_arg(str(params.get("labels") or "")[:2000])
    search = str(params.get("search") or "")
    if len(search) > MAX_SEARCH:
        raise BadParameter(f"the search text is longer than {MAX_SEARCH} characters; search for a shorter part of "
                           f"the name or of a label")
    raw_limit = str(params.get("limit") or "0")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = -1
    if limit < 0 or limit > MAX_PAGE:
        raise BadParameter(f"the page size (limit) must be a whole number from 1 to {MAX_PAGE}, not "
                           f"{raw_limit[:20]!r}; leave it out to list everything")
    return Query(labels, search.lower(), limit, str(params.get("start_after") or "")[:253])


def matches(query: Query, name: str, labels: dict) -> bool:
    """Every label of the filter is on the item, and the search text is in its name or in a label."""
    if any(labels.get(k) != v for k, v in query.labels.items()):
        return False
    if not query.search:
        return True
    haystack = [name, *(f"{k}={v}" for k, v in labels.items())]
    return any(query.search in text.lower() for text in haystack)


def select(query: Query, items: list, name_of, labels_of) -> tuple[list, str]:
    """(the page of ITEMS the query asks for, the name to pass as start_after for the next page, or "").

    ITEMS are in a stable order (the caller's); a page continues after the item named
    start_after, or, when that item has gone meanwhile, after the last item whose name
    sorts before it (names are unique and the stored order is by name).
    """
    chosen = [i for i in items if matches(query, name_of(i), labels_of(i))]
    if query.start_after:
        names = [name_of(i) for i in chosen]
        if query.start_after in names:
            chosen = chosen[names.index(query.start_after) + 1:]
        else:
            chosen = [i for i in chosen if name_of(i) > query.start_after]
    if query.limit and len(chosen) > query.limit:
        return chosen[:query.limit], name_of(chosen[query.limit - 1])
    return chosen, ""
