"""Which auth server a client tries, when, and what it says when none answers (gatehouse.client).

The rules, for the CLIs' APIClient and the services' AsyncAPIClient alike:
* a call goes to the server that answered last, the first listed at start;
* no connection made (refused): the next server is tried, for every method, and the one
  that answers is remembered;
* the connection broke after the request was sent: a read (GET) is tried on the next
  server; a write is not (it may have been applied), it fails with the "cannot reach"
  error and the next call starts with the next server;
* a server that answers with an error has answered: its error is raised, nobody else asked;
* every server failing: the last one's "cannot reach" sentence.

The servers are real sockets on 127.0.0.1: one that refuses connections (bound, never
listening), and small HTTP servers that answer, answer with an error, or read the request
and hang up without answering.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest

from gatehouse.client import APIClient, AsyncAPIClient
from gatehouse.errors import AccessDenied, ConnectionProblem, GatehouseError


class Server:
    """A one-thread HTTP/1.1 server; MODE: "answer" (200, its name), "deny" (403 access_denied),
    "drop" (reads the whole request, then closes without a byte) or "die" (drop, and stop
    listening first: the process is gone)."""

    def __init__(self, name: str, mode: str = "answer"):
        self.name, self.mode = name, mode
        self.requests: list[str] = []          # "METHOD /path" as received
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, args=(self.sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                       if k.strip().lower() == "content-length"), 0)
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append(" ".join(lines[0].split()[:2]))
        if self.mode == "die":
            self.sock.close()
        if self.mode in ("drop", "die"):
            return
        status, payload = ("200 OK", {"server": self.name}) if self.mode == "answer" else \
            ("403 Forbidden", {"error": {"code": "access_denied", "message": f"{self.name} says no"}})
        out = json.dumps(payload).encode()
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(out)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + out)

    def close(self) -> None:
        self.sock.close()


class Refusing:
    """An address where a socket is bound but never listens: every connection is refused."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[str] = []

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def servers():
    made: list = []

    def make(*modes: str) -> list:
        made.extend(Refusing() if mode == "refuse" else Server(f"s{i}", mode) for i, mode in enumerate(modes))
        return made[-len(modes):]
    yield make
    for server in made:
        server.close()


class Sync:
    """APIClient behind the same calls as Async, so each rule is checked on both clients."""

    def __init__(self, urls):
        self.client = APIClient(urls, timeout=5)

    async def call(self, method, path, body=None):
        return self.client.call(method, path, body)

    @property
    def base_url(self):
        return self.client.base_url

    async def close(self):
        self.client.session.close()


class Async:
    def __init__(self, urls):
        self.client = AsyncAPIClient(urls, ssl_context=None, timeout=5)

    async def call(self, method, path, body=None):
        return await self.client.call(method, path, body)

    @property
    def base_url(self):
        return self.client.base_url

    async def close(self):
        await self.client.close()


@pytest.fixture(params=[Sync, Async], ids=["APIClient", "AsyncAPIClient"])
def client_of(request):
    """A client of either kind for a list of servers (each test closes it)."""
    return lambda servers: request.param([s.url for s in servers])


async def test_first_listed_server_answers_and_others_are_not_asked(servers, client_of):
    a, b = servers("answer", "answer")
    client = client_of([a, b])
    try:
        assert await client.call("GET", "/v1/ping") == {"server": "s0"}
        assert await client.call("POST", "/v1/thing", {"x": 1}) == {"server": "s0"}
        assert a.requests == ["GET /v1/ping", "POST /v1/thing"] and b.requests == []
    finally:
        await client.close()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
async def test_refused_connection_moves_on_and_the_answering_server_is_remembered(servers, client_of, method):
    down, up, third = servers("refuse", "answer", "answer")
    client = client_of([down, up, third])
    try:
        assert await client.call(method, "/v1/x", {} if method in ("POST", "PUT") else None) == {"server": "s1"}
        assert client.base_url == up.url
        assert await client.call("GET", "/v1/y") == {"server": "s1"}
        assert up.requests == [f"{method} /v1/x", "GET /v1/y"] and third.requests == []
    finally:
        await client.close()


async def test_read_is_repeated_on_the_next_server_after_a_broken_connection(servers, client_of):
    dropping, up = servers("drop", "answer")
    client = client_of([dropping, up])
    try:
        assert await client.call("GET", "/v1/snapshot") == {"server": "s1"}
        assert set(dropping.requests) == {"GET /v1/snapshot"} and up.requests == ["GET /v1/snapshot"]
        assert client.base_url == up.url
    finally:
        await client.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_write_is_not_repeated_after_a_broken_connection(servers, client_of, method):
    """The first server read the whole write and hung up: it may have applied it, so the client
    must not apply it a second time elsewhere. The next call starts with the next server.
    (aiohttp itself sends an idempotent PUT or DELETE once more on the same server after a dropped
    connection, RFC 9112 9.3.1; a connect error on that second try must not count as "never sent".)"""
    dropping, up = servers("drop", "answer")
    client = client_of([dropping, up])
    try:
        with pytest.raises(ConnectionProblem) as err:
            await client.call(method, "/v1/resources", {"n": 1})
        assert str(err.value).startswith(f"cannot reach {dropping.url}: ")
        assert set(dropping.requests) == {f"{method} /v1/resources"} and up.requests == []
        sent = len(dropping.requests)
        assert client.base_url == up.url
        assert await client.call("GET", "/v1/resources") == {"server": "s1"}
        assert len(dropping.requests) == sent
    finally:
        await client.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_write_whose_server_died_after_receiving_it_is_not_sent_elsewhere(servers, client_of, method):
    """The first server reads the write, hangs up and is gone (kill -9 mid-request): a second try
    to it is refused, which must not make the write look unsent."""
    dying, up = servers("die", "answer")
    client = client_of([dying, up])
    try:
        with pytest.raises(ConnectionProblem, match=f"^cannot reach {dying.url}: "):
            await client.call(method, "/v1/resources", {"n": 1})
        assert dying.requests == [f"{method} /v1/resources"] and up.requests == []
    finally:
        await client.close()


async def test_an_error_answer_is_an_answer_not_a_reason_to_fail_over(servers, client_of):
    denying, up = servers("deny", "answer")
    client = client_of([denying, up])
    try:
        for method in ("GET", "POST"):
            with pytest.raises(AccessDenied, match="^s0 says no$"):
                await client.call(method, "/v1/x", {} if method == "POST" else None)
        assert up.requests == [] and client.base_url == denying.url
    finally:
        await client.close()


async def test_every_server_failing_gives_one_sentence_naming_the_last_one(servers, client_of):
    first, last = servers("refuse", "refuse")
    client = client_of([first, last])
    try:
        for method in ("GET", "POST"):
            with pytest.raises(ConnectionProblem) as err:
                await client.call(method, "/v1/x", {} if method == "POST" else None)
            message = str(err.value)
            assert message.startswith(f"cannot reach {last.url}: ") and "\n" not in message
            assert message.endswith("; check that gatehouse is running there and the address and port are right")
    finally:
        await client.close()


@pytest.mark.parametrize("urls", [[], [" "], ""])
def test_no_address_at_all_is_refused_with_the_setting_to_fix(urls):
    for make in (lambda: APIClient(urls), lambda: AsyncAPIClient(urls, ssl_context=None)):
        with pytest.raises(GatehouseError, match=r"^no auth server address is configured; set "
                                                 r"gatehouse.auth_servers \(host:3025\)$"):
            make()
