"""The one duration parser: role options, TTLs, CLI flags and API bodies."""

from __future__ import annotations

import pytest

from conftest import raised_message
from gatehouse import durations as r


@pytest.mark.parametrize("text,seconds", [
    ("1h30m", 5400), ("15m", 900), ("90s", 90), ("2h", 7200), (3600, 3600), ("30h0m0s", 108000),
    ("1h1m1s", 3661), ("0", 0), ("0s", 0), ("-5m", -300), ("1.5h", 5400), (" 10m ", 600), (120.0, 120),
    ("1m30s", 90), ("+2m", 120),
])
def test_parse_duration(text, seconds):
    assert r.parse_duration(text) == seconds


@pytest.mark.parametrize("value,message", [
    ("5x", '"5x" is not a valid duration; write it like 1h30m, 15m or 90s'),
    ("", '"" is not a valid duration; write it like 1h30m, 15m or 90s'),
    ("h", '"h" is not a valid duration; write it like 1h30m, 15m or 90s'),
    ("300", '"300" has no unit; write it like 300s, 15m or 1h30m'),
    ("2d", '"2d" uses days, which is not a unit here; write 48h instead'),
    ("1.5s", '"1.5s" is not a whole number of seconds; write it like 1h30m, 15m or 90s'),
    (True, "the duration must be like 1h30m, 15m or 90s (or a whole number of seconds), not the boolean true"),
    (None, "the duration must be like 1h30m, 15m or 90s (or a whole number of seconds), not empty"),
])
def test_parse_duration_errors(value, message):
    assert raised_message(r.parse_duration, value) == message


def test_parse_ttl():
    assert r.parse_ttl("5m") == 300
    assert raised_message(r.parse_ttl, "0") == "TTL must be positive, not 0s; e.g. 15m or 12h"
    assert raised_message(r.parse_ttl, "-1h", "--ttl") == "--ttl must be positive, not -1h; e.g. 15m or 12h"
    assert raised_message(r.parse_ttl, "soon", "--ttl") == '--ttl "soon" is not a valid duration; write it like 1h30m, ' \
                                                     '15m or 90s'


@pytest.mark.parametrize("seconds,text", [
    (0, "0s"), (1, "1s"), (59, "59s"), (60, "1m"), (90, "1m30s"), (3600, "1h"), (3661, "1h1m1s"),
    (5400, "1h30m"), (43200, "12h"), (86400, "24h"), (-90, "-1m30s"),
])
def test_format_duration(seconds, text):
    assert r.format_duration(seconds) == text
    assert r.parse_duration(text) == seconds


def test_duration_round_trip_range():
    for seconds in list(range(0, 7300, 7)) + [86399, 86400, 86401, 10 ** 7]:
        assert r.parse_duration(r.format_duration(seconds)) == seconds
        assert r.parse_duration(r.format_duration(-seconds)) == -seconds
