"""The storage interface every Gatehouse component uses.

Keys are ``/``-separated names (``users/alice``, ``cas/root/host``), values are
JSON-serialisable dicts. Every write gets the next value of one global revision
counter that never goes backwards; ``Item.revision`` is the revision of the last
write to that key, which is what :meth:`Backend.compare_and_swap` compares.
Items with an ``expires`` time in the past behave as absent everywhere.

Besides the abstract :class:`Backend`, this module holds the in-process change
fan-out (:class:`ChangeFeed`, :class:`Watcher`) so every implementation notifies
watchers and long-poll waiters the same way.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import json
import math
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable, Optional

from ..errors import AlreadyExists, BadParameter, CompareFailed, GatehouseError, LimitExceeded, NotFound

# Highest code point: `key >= prefix AND key < prefix + KEY_MAX` selects exactly the
# keys that start with `prefix` (keys may not contain this character).
KEY_MAX = "\U0010ffff"

OP_KINDS = ("create", "put", "update", "cas", "delete", "require_absent", "require_revision")


@dataclass(frozen=True)
class Item:
    key: str
    value: dict
    revision: int
    expires: Optional[float] = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now


@dataclass(frozen=True)
class Event:
    type: str                 # "put" | "delete"
    key: str
    item: Optional[Item]      # None for delete
    revision: int


@dataclass(frozen=True)
class Op:
    """One conditional write inside :meth:`Backend.atomic`.

    kinds: ``create`` (fails if present), ``put`` (upsert), ``update`` (fails if
    absent), ``cas`` (fails unless the stored revision equals ``revision``),
    ``delete`` (fails if absent; with ``revision`` also unless it matches),
    ``require_absent`` and ``require_revision`` (no write, only a condition).
    """

    kind: str
    key: str
    value: Optional[dict] = None
    expires: Optional[float] = None
    revision: Optional[int] = None


# --------------------------------------------------------------------------- validation

def check_key(key: Any) -> str:
    """Return ``key`` if it is a valid storage key, else raise BadParameter."""
    why = _key_problem(key, allow_empty=False)
    if why:
        raise BadParameter(f"storage key {key!r} is invalid: {why}; use a '/'-separated "
                           f"name such as 'users/alice'")
    return key


def check_prefix(prefix: Any) -> str:
    """Validate a range prefix: like a key, but may be empty or end with '/'."""
    if isinstance(prefix, str) and prefix.endswith("/"):
        why = _key_problem(prefix[:-1], allow_empty=False) if prefix != "/" else "it starts with '/'"
    else:
        why = _key_problem(prefix, allow_empty=True)
    if why:
        raise BadParameter(f"storage prefix {prefix!r} is invalid: {why}; use a '/'-separated "
                           f"prefix such as 'users/'")
    return prefix


def _key_problem(key: Any, allow_empty: bool) -> Optional[str]:
    if not isinstance(key, str):
        return f"it is a {type(key).__name__}, not a string"
    if key == "":
        return None if allow_empty else "it is empty"
    if key.startswith("/"):
        return "it starts with '/'"
    if any(ord(ch) < 0x20 or ch in ("\x7f", KEY_MAX) for ch in key):
        return "it contains a control character"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode"
    for segment in key.split("/"):
        if segment == "":
            return "it has an empty segment"
        if segment in (".", ".."):
            return f"it has a '{segment}' segment"
    return None


def check_expires(expires: Any) -> Optional[float]:
    if expires is None:
        return None
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not math.isfinite(expires):
        raise BadParameter(f"expiry time {expires!r} is invalid; pass a unix time in seconds or None")
    return float(expires)


def encode_value(key: str, value: Any) -> str:
    """The canonical JSON text stored for ``value`` (sorted keys, compact)."""
    if not isinstance(value, dict):
        raise BadParameter(f"value for storage key '{key}' is a {type(value).__name__}; "
                           f"store a JSON object (dict)")
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise BadParameter(f"value for storage key '{key}' is not JSON-serialisable ({err}); "
                           f"store only dicts, lists, strings, numbers, booleans and None") from None


def check_op(op: Any) -> Op:
    if not isinstance(op, Op):
        raise BadParameter(f"atomic() takes a list of Op, got a {type(op).__name__}; build each "
                           f"write with Op(kind, key, ...)")
    if op.kind not in OP_KINDS:
        raise BadParameter(f"unknown atomic operation {op.kind!r}; use one of {', '.join(OP_KINDS)}")
    check_key(op.key)
    check_expires(op.expires)
    if op.kind in ("create", "put", "update", "cas"):
        encode_value(op.key, op.value)
    if op.kind in ("cas", "require_revision") and (isinstance(op.revision, bool)
                                                   or not isinstance(op.revision, int)):
        raise BadParameter(f"atomic operation {op.kind!r} on '{op.key}' needs an integer revision")
    return op


def prefix_match(key: str, prefixes: Optional[tuple]) -> bool:
    return not prefixes or key.startswith(prefixes)


def normalise_prefixes(prefixes: Optional[Iterable[str]]) -> tuple:
    """None or [] means every key."""
    if prefixes is None:
        return ()
    if isinstance(prefixes, str):
        raise BadParameter("prefixes must be a list of strings, not a single string; "
                           "wrap it in a list")
    result = tuple(check_prefix(p) for p in prefixes)
    return () if "" in result else result


# --------------------------------------------------------------------------- interface

class Backend(abc.ABC):
    """Async key/value storage with revisions, conditional writes and change feeds."""

    @abc.abstractmethod
    async def get(self, key: str) -> Item:
        """The item, or NotFound if it is absent or expired."""

    async def exists(self, key: str) -> bool:
        """Whether the item is present (and not expired)."""
        try:
            await self.get(key)
            return True
        except NotFound:
            return False

    @abc.abstractmethod
    async def get_range(self, prefix: str) -> list:
        """Unexpired items whose key starts with ``prefix``, sorted by key."""

    @abc.abstractmethod
    async def create(self, key: str, value: dict, expires: Optional[float] = None) -> Item:
        """Write a new item; AlreadyExists if an unexpired one is present."""

    @abc.abstractmethod
    async def put(self, key: str, value: dict, expires: Optional[float] = None) -> Item:
        """Create or overwrite."""

    @abc.abstractmethod
    async def update(self, key: str, value: dict, expires: Optional[float] = None) -> Item:
        """Overwrite an existing item; NotFound if absent."""

    @abc.abstractmethod
    async def compare_and_swap(self, key: str, expected_revision: int, value: dict,
                               expires: Optional[float] = None) -> Item:
        """Overwrite only if the stored revision is ``expected_revision``
        (CompareFailed if it moved, NotFound if absent)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove an item; NotFound if absent."""

    @abc.abstractmethod
    async def delete_range(self, prefix: str) -> int:
        """Remove every unexpired item under ``prefix``; returns how many."""

    @abc.abstractmethod
    async def atomic(self, ops: list) -> list:
        """Apply several :class:`Op` in one transaction, all or nothing.

        Returns one entry per op: the written (or, for ``require_revision``, the
        current) Item, or None for ``delete`` and ``require_absent``. The first
        failing condition raises its error and nothing is written.
        """

    @abc.abstractmethod
    async def revision(self) -> int:
        """The current global revision."""

    @abc.abstractmethod
    async def wait_for_change(self, since_revision: int, timeout: float,
                              prefixes: Optional[list] = None) -> int:
        """Return the current revision as soon as a write with revision greater than
        ``since_revision`` (under ``prefixes``, if given) has happened, or after
        ``timeout`` seconds. Meant for long-poll snapshots; it may return early
        (never late) when it cannot tell whether a matching change happened."""

    @abc.abstractmethod
    def watch(self, prefixes: Optional[list] = None) -> "Watcher":
        """An async iterator of :class:`Event` for writes after this call, in order."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work, end watchers and release the storage."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


# --------------------------------------------------------------------------- change fan-out

_END = object()


class Watcher:
    """Async iterator over change events; also an async context manager.

    Events are queued per watcher, so a slow consumer never blocks writers: when
    more than ``max_queue`` events are pending, the watcher is closed and the next
    iteration raises LimitExceeded (re-read the state and watch again). Cancelling
    a task that waits in ``__anext__`` loses no event.
    """

    def __init__(self, feed: "ChangeFeed", prefixes: tuple, start_revision: int, max_queue: int):
        self._feed = feed
        self.prefixes = prefixes
        self.start_revision = start_revision
        self._max_queue = max_queue
        self._queue: asyncio.Queue = asyncio.Queue()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _offer(self, event: Event) -> None:
        if self._closed or event.revision <= self.start_revision or not prefix_match(event.key, self.prefixes):
            return
        if self._queue.qsize() >= self._max_queue:
            self._fail(LimitExceeded(
                f"a storage watcher fell behind by more than {self._max_queue} events and was "
                f"closed; read the current state again and start a new watch"))
            return
        self._queue.put_nowait(event)

    def _fail(self, err: Optional[BaseException]) -> None:
        """End the watcher: with ``err`` pending events are dropped and it is raised."""
        if self._closed:
            return
        self._closed = True
        self._feed._watchers.discard(self)
        if err is not None:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(err)
        else:
            self._queue.put_nowait(_END)

    def close(self) -> None:
        self._fail(None)

    async def aclose(self) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)   # keep ending on later calls
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._queue.put_nowait(_END)
            raise item
        return item

    async def __aenter__(self) -> "Watcher":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


class ChangeFeed:
    """Delivers committed events to watchers and long-poll waiters (loop thread only).

    Keeps the last ``history`` events so ``wait_for_change`` can answer for a
    ``since`` revision in the past without touching storage.
    """

    def __init__(self, revision: int, history: int = 2048, watcher_queue: int = 4096):
        self.revision = revision
        self.history_start = revision     # every event with revision > this is in _recent
        self._recent: collections.deque = collections.deque()
        self._history = history
        self._watcher_queue = watcher_queue
        self._watchers: set = set()
        self._waiters: dict = {}          # future -> (since, prefixes)

    @property
    def active(self) -> bool:
        return bool(self._watchers or self._waiters)

    def publish(self, events: list, revision: int) -> None:
        for event in events:
            if event.revision <= self.revision:
                continue  # already delivered
            self.revision = event.revision
            self._recent.append((event.revision, event.key))
            if len(self._recent) > self._history:
                self.history_start = self._recent.popleft()[0]
            for watcher in list(self._watchers):
                watcher._offer(event)
            for fut, (since, prefixes) in self._waiters.items():
                if not fut.done() and event.revision > since and prefix_match(event.key, prefixes):
                    fut.set_result(None)
        if revision > self.revision:
            # Writes we have no events for (history pruned or not readable): we can
            # no longer tell what changed, so end watchers and wake every waiter.
            self.gap(revision)

    def gap(self, revision: int) -> None:
        self.revision = max(self.revision, revision)
        self.history_start = self.revision
        self._recent.clear()
        for watcher in list(self._watchers):
            watcher._fail(GatehouseError(
                "storage changes were missed (another process wrote more than the change "
                "history holds); read the current state again and start a new watch"))
        self.wake_all()

    def wake_all(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        for watcher in list(self._watchers):
            watcher.close()
        self.wake_all()

    def watch(self, prefixes: Optional[Iterable[str]]) -> Watcher:
        watcher = Watcher(self, normalise_prefixes(prefixes), self.revision, self._watcher_queue)
        self._watchers.add(watcher)
        return watcher

    def changed_since(self, since: int, prefixes: tuple) -> bool:
        """Whether a matching change after ``since`` may already have happened."""
        if since >= self.revision:
            return False
        if since < self.history_start:
            return True   # unknown: answer early rather than late
        return any(rev > since and prefix_match(key, prefixes) for rev, key in reversed(self._recent))

    async def wait(self, since: int, timeout: float, prefixes: tuple) -> None:
        if timeout <= 0:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters[fut] = (since, prefixes)
        try:
            await asyncio.wait({fut}, timeout=timeout)
        finally:
            self._waiters.pop(fut, None)
            if not fut.done():
                fut.cancel()


# --------------------------------------------------------------------------- one op inside a transaction
# Shared by the SQLite and PostgreSQL backends: TXN offers current(key) -> Item | None,
# write(key, text, expires) -> Item and remove(key), all inside the caller's transaction.

def not_found(key: str) -> NotFound:
    return NotFound(f'storage item "{key}" not found')


def already_exists(key: str) -> AlreadyExists:
    return AlreadyExists(f'storage item "{key}" already exists')


def compare_failed(key: str, current: int, expected: int) -> CompareFailed:
    shown = current if current > 0 else "written earlier in this atomic()"
    return CompareFailed(f'storage item "{key}" was changed by another writer (revision {shown}, '
                         f'expected {expected}); read it again and retry')


def apply_op(txn, op: "Op", text: Optional[str], expires: Optional[float]):
    """Apply OP in TXN: the written Item, the current Item (require_revision) or None; raises
    AlreadyExists / NotFound / CompareFailed when its condition does not hold."""
    key, kind = op.key, op.kind
    if kind == "put":
        return txn.write(key, text, expires)
    cur = txn.current(key)
    if kind in ("create", "require_absent"):
        if cur is not None:
            raise already_exists(key)
        return txn.write(key, text, expires) if kind == "create" else None
    if cur is None:
        raise not_found(key)
    if op.revision is not None and cur.revision != op.revision:
        raise compare_failed(key, cur.revision, op.revision)
    if kind in ("update", "cas"):
        return txn.write(key, text, expires)
    if kind == "delete":
        txn.remove(key)
        return None
    return cur  # require_revision
