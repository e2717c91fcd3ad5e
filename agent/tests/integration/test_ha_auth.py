"""Several auth services on one PostgreSQL database, in process (real PostgreSQL, real services).

What must hold across auth servers because it lives in the backend: the CAs made once
by servers starting together, login and join rate limits (counted exactly, whichever
server is asked), single-use tokens, and the members' snapshot long-poll, which resumes
on another server with the revision it had (revisions are global). The same with real
processes, proxies, a leaf and a node is in agent/tests/e2e/test_ha_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from gatehouse import pki
from gatehouse.auth import keys
from gatehouse.auth.authz import Identity
from gatehouse.auth.service import AuthService
from gatehouse.config import parse
from gatehouse.errors import AccessDenied, LimitExceeded

CLUSTER = "root.test"


def _config(tmp_path, name: str, conn_string: str, **auth):
    return parse({"gatehouse": {"nodename": name, "data_dir": str(tmp_path / name)},
                  "auth_service": {"enabled": True, "cluster_name": CLUSTER, "listen_addr": "127.0.0.1:3025",
                                   "storage": {"type": "postgresql", "conn_string": conn_string}, **auth}},
                 str(tmp_path / f"{name}.yaml"))


@pytest.fixture
async def two_auths(tmp_path, pg_server, pg_database):
    """Auth services a and b, started at the same time on one empty database."""
    conn_string = pg_server.conn_string(pg_database)
    a, b = await asyncio.gather(*(AuthService.open(_config(tmp_path, n, conn_string, login_rate=5, validate_rate=3))
                                  for n in ("a", "b")))
    try:
        yield a, b
    finally:
        for svc in (a, b):
            await svc.close()


ADMIN = Identity("admin", "admin", CLUSTER)
PROXY = Identity("proxy1", "proxy", CLUSTER)


def window_start(windows_ahead: int, window: float = 60.0) -> float:
    """The start of a rate-limit window in the near future (records expire in real time)."""
    return (int(time.time() // window) + windows_ahead) * window


def fixed_clock(svc_list, at: float):
    for svc in svc_list:
        for limiter in (svc.login_addr_limiter, svc.login_user_limiter, svc.validate_limiter):
            limiter._clock = lambda: at


async def test_servers_starting_together_share_one_set_of_cas(two_auths):
    a, b = two_auths
    for ca_type in ("user", "host", "tls"):
        assert (await a.local_ca(ca_type)) == (await b.local_ca(ca_type))
    assert len([c for c in await a.cert_authorities() if c["cluster_name"] == CLUSTER]) == 3
    # Each server's own admin identity and TLS certificates chain to that one CA.
    assert (await a.ca_bundle()) == (await b.ca_bundle())


async def _login(svc: AuthService, user: str, addr: str) -> str:
    try:
        await svc.login(PROXY, user, "wrong-password-9", "x", "x", 0, addr)
    except (AccessDenied, LimitExceeded) as exc:
        return exc.code
    return "ok"


async def test_login_limit_holds_across_auth_servers(two_auths):
    """login_rate 5: five attempts in all, whichever server they reach; an in-memory limiter
    per server would allow ten."""
    a, b = two_auths
    fixed_clock((a, b), window_start(2) + 30)     # mid-window: nothing decays during the test
    outcomes = [await _login((a, b)[i % 2], "mallory", f"198.51.100.{i}") for i in range(10)]
    assert outcomes == ["access_denied"] * 5 + ["limit_exceeded"] * 5
    # The address limit too: five attempts from one address in all, over both servers.
    outcomes = [await _login((a, b)[i % 2], f"user{i}", "203.0.113.9") for i in range(8)]
    assert outcomes == ["access_denied"] * 5 + ["limit_exceeded"] * 3


async def test_concurrent_attempts_on_both_servers_are_all_counted(two_auths):
    a, b = two_auths
    fixed_clock((a, b), window_start(3) + 10)
    limiters = [a.login_user_limiter, b.login_user_limiter]

    async def attempt(i):
        try:
            await limiters[i % 2].check("eve", "login")
            return True
        except LimitExceeded:
            return False
    allowed = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert sum(allowed) == 5


async def test_limit_slides_and_its_records_expire(two_auths):
    a, b = two_auths
    window = a.login_user_limiter.window
    start = window_start(4, window)
    fixed_clock((a, b), start + 1)
    for _ in range(5):
        await a.login_user_limiter.check("zed", "login")
    with pytest.raises(LimitExceeded) as info:
        await b.login_user_limiter.check("zed", "login")
    assert str(info.value).startswith("too many login attempts; wait ") and "s and try again" in str(info.value)
    # Half-way through the next window half of the old count still weighs: two more fit, not three.
    fixed_clock((a, b), start + window * 1.5)
    await b.login_user_limiter.check("zed", "login")
    await a.login_user_limiter.check("zed", "login")
    with pytest.raises(LimitExceeded):
        await a.login_user_limiter.check("zed", "login")
    # One record per key and window, expiring two windows after the window opened.
    records = await a.backend.get_range(keys.RATE_LIMITS_PREFIX + "login_user/")
    assert len(records) == 2 and all(r.expires <= start + 3 * window for r in records)


async def test_join_limit_and_single_use_token_across_servers(two_auths):
    a, b = two_auths
    secret, _unused = await a.tokens.add(ADMIN, "node", 600, single_use=True)

    def keys_():
        ssh = pki.new_ssh_key(comment="node").public_line
        return ssh, pki.new_tls_key()[1]
    await a.join(secret, "node", "n1", *keys_(), "192.0.2.1")
    with pytest.raises(AccessDenied) as info:
        await b.join(secret, "node", "n2", *keys_(), "192.0.2.2")
    assert "single-use" in str(info.value) or 'admits only the member named "n1"' in str(info.value)
    # Two joins with a fresh single-use token at the same moment, one on each server: one wins.
    secret, _unused = await a.tokens.add(ADMIN, "node", 600, single_use=True)
    results = await asyncio.gather(a.join(secret, "node", "n3", *keys_(), "192.0.2.3"),
                                   b.join(secret, "node", "n4", *keys_(), "192.0.2.4"), return_exceptions=True)
    assert sum(isinstance(r, dict) for r in results) == 1, results
    # validate_rate 3 per address, counted over both servers (5 joins from this address so far would pass
    # an in-memory limiter on each server; here the fourth attempt from one address is refused).
    fixed_clock((a, b), window_start(6) + 5)
    outcomes = []
    for i in range(5):
        try:
            await (a, b)[i % 2].join("not-a-token-000000", "node", f"x{i}", *keys_(), "192.0.2.99")
            outcomes.append("ok")
        except (AccessDenied, LimitExceeded) as exc:
            outcomes.append(exc.code)
    assert outcomes == ["access_denied"] * 3 + ["limit_exceeded"] * 2


async def test_snapshot_long_poll_resumes_on_another_server(two_auths):
    """A member long-polls server a with the revision it has; a dies; it asks b with the same
    revision and gets every change after it, including one made while it was switching."""
    a, b = two_auths
    member = Identity("node1", "node", CLUSTER)
    first = await a.snapshot(member)
    since = first["revision"]
    poll = asyncio.ensure_future(a.snapshot(member, since, 30))
    await asyncio.sleep(0.3)
    await b.backend.put(keys.role("r1"), _role("r1"))      # written through the other server
    got = await asyncio.wait_for(poll, 20)
    assert got["revision"] > since and "r1" in {r["metadata"]["name"] for r in got["roles"]}
    since = got["revision"]
    # a is gone; a change lands before the member reaches b: b answers at once with it.
    await a.close()
    await b.backend.put(keys.role("r2"), _role("r2"))
    got = await asyncio.wait_for(b.snapshot(member, since, 30), 5)
    assert got["revision"] > since and "r2" in {r["metadata"]["name"] for r in got["roles"]}
    # and waits for the next one as it did on a
    since = got["revision"]
    poll = asyncio.ensure_future(b.snapshot(member, since, 30))
    await asyncio.sleep(0.3)
    assert not poll.done()
    await b.backend.put(keys.role("r3"), _role("r3"))
    assert (await asyncio.wait_for(poll, 20))["revision"] > since


def _role(name: str) -> dict:
    from gatehouse import resources
    return resources.validate({"kind": "role", "version": "v5", "metadata": {"name": name},
                               "spec": {"allow": {"logins": ["visitor"], "node_labels": {"*": "*"}}}})


# --------------------------------------------------------------------------- moving a site

@pytest.fixture
async def sqlite_site(tmp_path):
    """An auth service on SQLite with users, a token, a leaf's trust records and presence records."""
    cfg = parse({"gatehouse": {"nodename": "root", "data_dir": str(tmp_path / "site")},
                 "auth_service": {"enabled": True, "cluster_name": CLUSTER, "listen_addr": "127.0.0.1:1"}},
                str(tmp_path / "site.yaml"))
    svc = await AuthService.open(cfg)
    try:
        await svc.resources.put(ADMIN, {"kind": "user", "version": "v2", "metadata": {"name": "alice"},
                                        "spec": {"roles": ["access"], "traits": {"logins": ["visitor"]}}})
        await svc.set_password(ADMIN, "alice", "alice-password-1")
        await svc.tokens.add(ADMIN, "node", 3600, name="nodes")
        await svc.backend.put(keys.node("n1"), {"metadata": {"name": "n1"}}, expires=time.time() + 60)
        await svc.backend.put(keys.tunnel("leaf.test", "p1"), {"connected": True})
        cas = {ca_type: await svc.local_ca(ca_type) for ca_type in ("user", "host", "tls")}
        revision = await svc.backend.revision()
    finally:
        await svc.close()
    return cfg, cas, revision


async def test_site_moves_from_sqlite_to_postgresql(sqlite_site, tmp_path, pg_server, pg_database):
    from gatehouse.auth.storage_move import copy_to_postgresql
    cfg, cas, revision = sqlite_site
    conn_string = pg_server.conn_string(pg_database)
    done = await copy_to_postgresql(cfg, conn_string)
    assert done["revision"] == revision and done["skipped"] == 2
    assert done["copied"]["cas"] == 3 and done["copied"]["users"] == 1 and done["copied"]["passwords"] == 1
    assert done["copied"]["tokens"] == 1 and done["copied"]["roles"] == 1
    moved = await AuthService.open(_config(tmp_path, "moved", conn_string))
    try:
        for ca_type, ca in cas.items():
            assert await moved.local_ca(ca_type) == ca          # the same keys: nothing re-issued
        await moved.login(PROXY, "alice", "alice-password-1", pki.new_ssh_key().public_line,
                          pki.new_tls_key()[1], 0, "192.0.2.1")
        assert await moved.backend.revision() > revision      # revisions go on from where SQLite was
        assert not await moved.backend.get_range("nodes/") and not await moved.backend.get_range("tunnels/")
    finally:
        await moved.close()
    # A second move into the now used database is refused, and writes nothing.
    stored = pg_server.query(pg_database, "SELECT count(*) FROM gatehouse_items")
    with pytest.raises(Exception) as info:
        await copy_to_postgresql(cfg, conn_string)
    assert str(info.value).startswith(f'the PostgreSQL database "{pg_database}" at 127.0.0.1:{pg_server.port} '
                                      f"already holds Gatehouse storage (")
    assert str(info.value).endswith("move the site into a new, empty database")
    assert pg_server.query(pg_database, "SELECT count(*) FROM gatehouse_items") == stored


async def test_site_move_refusals(sqlite_site, tmp_path, pg_server, pg_database):
    from gatehouse.auth.storage_move import copy_to_postgresql
    from gatehouse.errors import GatehouseError
    cfg, _cas, _revision = sqlite_site
    conn_string = pg_server.conn_string(pg_database)

    async def refused(config, conn=conn_string) -> str:
        with pytest.raises(GatehouseError) as info:
            await copy_to_postgresql(config, conn)
        message = str(info.value)
        assert "\n" not in message and "pg-Secret" not in message, message
        return message
    pg = _config(tmp_path, "pg", conn_string)
    assert (await refused(pg)).startswith(f"the auth service of {pg.path} already uses postgresql storage;")
    missing = parse({"gatehouse": {"nodename": "x", "data_dir": str(tmp_path / "nothing")},
                     "auth_service": {"enabled": True, "cluster_name": CLUSTER, "listen_addr": "127.0.0.1:1"}},
                    "x.yaml")
    assert (await refused(missing)).startswith(f"there is no SQLite storage file at {tmp_path}/nothing/")
    # The auth service still runs: refused before anything is read.
    with contextlib.closing(__import__("socket").socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        running = parse({"gatehouse": {"nodename": "root", "data_dir": cfg.data_dir},
                         "auth_service": {"enabled": True, "cluster_name": CLUSTER,
                                          "listen_addr": f"127.0.0.1:{listener.getsockname()[1]}"}}, "r.yaml")
        assert "still answers at 127.0.0.1:" in await refused(running)
    dead = pg_server.conn_string(pg_database, port="1")
    assert (await refused(cfg, dead)).startswith(f'cannot reach the PostgreSQL database "{pg_database}" at '
                                                 f"127.0.0.1:1 (")
    # Nothing was written anywhere: not even the schema.
    assert pg_server.query(pg_database, "SELECT to_regclass('gatehouse_items')::text") == [(None,)]
