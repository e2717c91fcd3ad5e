"""Filtering and paging of cluster listings (auth/listing.py) and the fleet node search's
merging of leaf answers (proxy/fleet_search.py): pure code, with hostile input.

The same code end to end through real processes is in e2e/test_fleet_listing_e2e.py.
"""

from __future__ import annotations

import asyncio

import pytest

from gatehouse.auth import listing
from gatehouse.errors import BadParameter, ConnectionProblem
from gatehouse.proxy import fleet_search

LEAVES = [{"name": f"leaf{i:04d}", "labels": {"env": "prod" if i % 2 else "dev", "site": f"s{i % 3}"}}
          for i in range(10)]


def page(params, items=LEAVES):
    return listing.select(listing.parse_query(params), items, lambda c: c["name"], lambda c: c["labels"])


def test_without_a_query_everything_is_listed():
    assert page({}) == (LEAVES, "")


def test_every_filter_label_must_match():
    got, _ = page({"labels": "env=prod,site=s0"})
    assert [c["name"] for c in got] == ["leaf0003", "leaf0009"]


def test_search_looks_in_names_and_labels_in_any_case():
    assert [c["name"] for c in page({"search": "LEAF0007"})[0]] == ["leaf0007"]
    assert len(page({"search": "site=s2"})[0]) == 3


def test_pages_walk_the_whole_list_once():
    seen, after = [], ""
    while True:
        got, after = page({"limit": "3", "start_after": after})
        seen += [c["name"] for c in got]
        if not after:
            break
    assert seen == [c["name"] for c in LEAVES]


def test_a_page_continues_after_a_cursor_that_was_deleted_meanwhile():
    without = [c for c in LEAVES if c["name"] != "leaf0004"]
    got, _ = page({"limit": "2", "start_after": "leaf0004"}, without)
    assert [c["name"] for c in got] == ["leaf0005", "leaf0006"]


@pytest.mark.parametrize("params, fragment", [
    ({"limit": "1001"}, "page size"), ({"limit": "-1"}, "page size"), ({"limit": "ten"}, "page size"),
    ({"search": "x" * 101}, "search text"), ({"labels": "no-equals-sign"}, "key=value"),
])
def test_bad_queries_are_refused_with_one_sentence(params, fragment):
    with pytest.raises(BadParameter, match=fragment):
        listing.parse_query(params)


def test_fleet_search_reports_offline_slow_and_failing_leaves_and_asks_only_online_ones():
    asked = []

    async def ask(leaf):
        asked.append(leaf)
        if leaf == "slow":
            await asyncio.sleep(5)
        if leaf == "broken":
            raise ConnectionProblem('cluster "broken" did not answer')
        return [{"metadata": {"name": "web", "labels": {}}, "spec": {"addr": "10.0.0.1:3022"}}]
    states = (("ok", "online"), ("down", "offline"), ("slow", "online"), ("broken", "online"))
    leaves = [{"name": n, "status": s} for n, s in states]
    answers = asyncio.run(fleet_search.ask_leaves(leaves, ask, 0.2))
    assert sorted(asked) == ["broken", "ok", "slow"], "an offline leaf is not asked"
    out = fleet_search.combine(fleet_search.parse_query({}), "root", [], answers)
    assert [(n["cluster"], n["metadata"]["name"]) for n in out["items"]] == [("ok", "web")]
    assert out["unreachable"] == [{"cluster": "broken", "error": 'cluster "broken" did not answer'},
                                  {"cluster": "down", "error": "offline (not searched)"},
                                  {"cluster": "slow", "error": "no answer within 0.2s"}]


def test_fleet_search_drops_malformed_nodes_and_keeps_the_cluster_it_asked():
    hostile = [None, "text", {"metadata": "x"}, {"metadata": {"name": ""}}, {"metadata": {"name": 7}},
               {"metadata": {"name": "db", "labels": "x"}, "spec": "y", "cluster": "root"}]
    out = fleet_search.combine(fleet_search.parse_query({"search": "d"}), "root", [], {"leaf": hostile})
    assert out["items"] == [{"metadata": {"name": "db", "labels": "x"}, "spec": "y", "cluster": "leaf"}]


def test_fleet_search_name_and_timeout_bounds():
    q = fleet_search.parse_query({"name": "web"})
    out = fleet_search.combine(q, "root", [{"metadata": {"name": "web2"}}, {"metadata": {"name": "web"}}], {})
    assert [n["metadata"]["name"] for n in out["items"]] == ["web"]
    for bad in ("0", "31", "soon"):
        with pytest.raises(BadParameter, match="per-cluster timeout"):
            fleet_search.parse_query({"timeout": bad})
