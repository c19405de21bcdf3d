"""History in Redis Streams, so a stream resumes on any worker and any node (docs/scaling.md).

Every node keeps its streams in its local Rust registry, exactly as :class:`~tokenwire.storage.MemoryStorage`
does: ``append`` stays a ring append (no network call per token) and local readers read the ring.

- **Owner (the producing node)**: the registry lists the streams appended to since the last look
  (``take_dirty``); every ``ship_interval`` the writer renders the new frames of all of them in the binary
  wire format (one Rust call each) and ships them in ONE script call, so Redis round trips grow with ticks,
  not with tokens. Per stream Redis holds a stream ``{p}s:{id}:f`` (one entry per shipped batch, entry id
  ``0-{last seq of the batch}``, field ``d`` the frames, ``s`` the end state on the final batch, capped near
  the ring bound) and a hash ``{p}s:{id}:m`` (owner node, state, last shipped seq). Redis down: nothing
  blocks; the ring is the write-behind buffer, shipped from where it stopped once Redis answers again.
- **Another node** that gets a resume for a stream it does not hold restores it: one round trip reads the
  hash and the stream; a local copy (a ring starting at the first seq Redis holds) gets those frames, then
  the node's single tail reader (one connection, one blocking ``XREAD`` over every copied stream) appends
  what follows. Entry ids are seqs, so the catch-up/live seam has no gap and no duplicate.
- **Liveness**: each node holds a lease key, refreshed every ``lease / 3`` s. A node with copies of an
  open stream whose owner's lease has been missing for ``lease`` s ends it in Redis with an ``error``
  frame, code ``producer_lost`` (one script, checked and written atomically), which every copy receives.
- **Cancel** on any node is published to the owner (``{p}ctl:{owner}``); **readers** on other nodes are
  recorded per stream (``{p}s:{id}:r``) so the owner's abandonment policy counts them.
- **Epoch** ``{p}epoch`` belongs to the store: restarting a node keeps ids valid; Redis restarted empty gets
  a new epoch (old resume points: 409).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from tokenwire import _core
from tokenwire.errors import ResumeExpired, StorageUnavailable
from tokenwire.protocol.resume import format_id_prefix, new_epoch
from tokenwire.storage import MemoryStorage

__all__ = ["RedisStorage", "StorageHost"]

log = logging.getLogger("tokenwire.redis")


class StorageHost(Protocol):
    """What a shared storage calls back on its hub (all on the event loop's thread)."""

    def on_remote_frames(self, key: str) -> None:
        """New frames were appended to the local copy of another node's stream."""

    def on_remote_end(self, key: str, state: int) -> None:
        """The local copy of another node's stream got its final frame."""

    def on_remote_cancel(self, key: str, reason: str) -> None:
        """Another node asks to cancel a stream this node produces."""

    def has_readers(self, key: str) -> bool:
        """A connection on this node reads the stream."""

    def on_remote_readers(self, key: str) -> None:
        """Another node has readers of a stream this node produces (the abandonment clock restarts)."""

    def owned_unread(self) -> list[str]:
        """Open streams this node produces that nobody here reads (abandonment candidates)."""


# One script call per tick ships every dirty stream. ARGV: prefix, node, epoch, maxlen, open ttl ms, ended ttl
# ms, then two for all streams: lines ``"{id} {from} {last} {end state} {frames size} {labels JSON or nothing}"``
# and every stream's frames (binary wire format, after ``from`` up to ``last``) one after another: the request
# has eight arguments whatever the number of streams (redis-py builds it in Python, per argument). Per stream and tick Redis runs two commands (HGET, XADD); the
# hash is written when the stream starts, changes labels, or ends. What Redis holds is the last entry's id
# (``0-{seq}``): an entry that is not newer (a tick shipped again) is refused by XADD and skipped. Returns
# {1, ids...} (ids: streams ended elsewhere, e.g. declared lost, that got new frames: their owner stops) or {0}
# (the epoch changed: the store lost its history). A stream whose hash names another owner (a client-chosen id
# used twice) is reported too: this node's stops.
_SHIP = """
local p = ARGV[1]
if redis.call('GET', p .. 'epoch') ~= ARGV[3] then return {0} end
local out = {1}
local blob, at = ARGV[8], 1
for line in string.gmatch(ARGV[7], '[^\\n]+') do
  local id, from, last, st, size, labels = string.match(line, '^(%S+) (%d+) (%d+) (%d+) (%d+) ?(.*)$')
  local frames = string.sub(blob, at, at + tonumber(size) - 1)
  at = at + tonumber(size)
  local m = p .. 's:' .. id .. ':m'
  local f = p .. 's:' .. id .. ':f'
  local meta = redis.call('HMGET', m, 'state', 'owner')
  local state = meta[1]
  if meta[2] and meta[2] ~= ARGV[2] then
    table.insert(out, id)  -- the id is another node's stream (a client-chosen id used twice): this one stops
  elseif state and state ~= '0' then
    local held = redis.call('XREVRANGE', f, '+', '-', 'COUNT', 1)
    local shipped = 0
    if held[1] then shipped = tonumber(string.sub(held[1][1], 3)) end
    if tonumber(last) > shipped then table.insert(out, id) end
  else
    if not state then
      redis.call('HSET', m, 'owner', ARGV[2], 'state', '0')
      redis.call('PEXPIRE', m, ARGV[5])
    end
    if labels ~= '' then
      redis.call('HSET', m, 'labels', labels)
    end
    if last ~= from then
      local added
      if st ~= '0' then
        added = redis.pcall('XADD', f, 'MAXLEN', '~', ARGV[4], '0-' .. last, 'd', frames, 's', st)
      else
        added = redis.pcall('XADD', f, 'MAXLEN', '~', ARGV[4], '0-' .. last, 'd', frames)
      end
      if type(added) == 'string' and (from == '0' or math.floor(tonumber(last) / 1024) ~= math.floor(tonumber(from) / 1024)) then
        redis.call('PEXPIRE', f, ARGV[5])
        redis.call('PEXPIRE', m, ARGV[5])
      end
    end
    if st ~= '0' then
      redis.call('HSET', m, 'state', st)
      redis.call('PEXPIRE', m, ARGV[6])
      redis.call('PEXPIRE', f, ARGV[6])
    end
  end
end
return out
"""

# Ends an open stream whose owner's lease is gone. ARGV: meta key, frames key, lease key, expected last seq in
# Redis, frame bytes, its seq, state, maxlen, ttl ms. 1: done; 0: not needed (ended, or the owner is back);
# -1: the owner shipped meanwhile (try again); 2: Redis has no hash for it (its keys went: the copy ends itself).
_LOST = """
local m, f = ARGV[1], ARGV[2]
local state = redis.call('HGET', m, 'state')
if not state then return 2 end
if state ~= '0' then return 0 end
if redis.call('EXISTS', ARGV[3]) == 1 then return 0 end
local held = redis.call('XREVRANGE', f, '+', '-', 'COUNT', 1)
local shipped = '0'
if held[1] then shipped = string.sub(held[1][1], 3) end
if shipped ~= ARGV[4] then return -1 end
redis.call('XADD', f, 'MAXLEN', '~', ARGV[8], '0-' .. ARGV[6], 'd', ARGV[5], 's', ARGV[7])
redis.call('HSET', m, 'state', ARGV[7], 'lost', '1')
redis.call('PEXPIRE', m, ARGV[9])
redis.call('PEXPIRE', f, ARGV[9])
return 1
"""


_SHA1 = {source: hashlib.sha1(source.encode()).hexdigest() for source in (_SHIP, _LOST)}  # noqa: S324 - Redis' id


@dataclass(slots=True)
class _Copy:
    """The local copy of another node's open stream."""

    handle: int
    owner: str
    #: Id of the last Redis entry applied (the tail reads after it).
    entry_id: str
    #: When the owner's lease was first seen missing (0: it is there).
    owner_missing_since: float = 0.0


@dataclass(slots=True)
class _Owned:
    key: str
    #: Last seq Redis holds (as far as this node knows).
    shipped: int = 0
    #: The stream no longer ships (ended elsewhere, or the store's history was lost).
    stopped: bool = False
    #: First tick that saw unshipped frames (replication lag), 0 when all is shipped.
    dirty_since: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    #: Labels changed since the last ship.
    labels_dirty: bool = False


@dataclass(slots=True)
class _Stats:
    redis_errors: int = 0
    round_trips: int = 0
    ship_calls: int = 0
    ship_streams: int = 0
    ship_frames_bytes: int = 0
    restores: int = 0
    tail_reads: int = 0
    producers_lost: int = 0
    gaps: int = 0


class RedisStorage(MemoryStorage):
    """History shared through Redis Streams (or Valkey): resume on any worker and node.

    ``url``: ``redis://HOST:PORT/DB``, ``rediss://...`` or ``unix:///path.sock``. ``ship_interval``: seconds
    between shipping ticks (the live lag another node sees, plus a round trip). ``lease``: seconds after
    which a silent owner's open streams end with ``producer_lost`` on the nodes reading them.
    ``command_timeout``: a Redis call slower than this counts as a failure (nothing waits on it but the
    background tasks and a resume/start of a stream). The other keywords are :class:`MemoryStorage`'s.
    """

    shared = True

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "tw:",
        ship_interval: float = 0.005,
        lease: float = 3.0,
        command_timeout: float = 2.0,
        node_id: str | None = None,
        max_frames_per_stream: int = 65_536,
        max_bytes_per_stream: int = 8 << 20,
        max_total_bytes: int = 1 << 30,
        ttl: float = 300.0,
    ) -> None:
        super().__init__(
            max_frames_per_stream=max_frames_per_stream,
            max_bytes_per_stream=max_bytes_per_stream,
            max_total_bytes=max_total_bytes,
            ttl=ttl,
            epoch="-",  # the store's epoch is read from Redis once connected
        )
        self.url = url
        self.prefix = key_prefix
        self.ship_interval = ship_interval
        self.lease = lease
        self.command_timeout = command_timeout
        #: This process: names its lease and control channel; owners are recorded by it.
        self.node_id = node_id or f"{os.uname().nodename[:32]}-{os.getpid()}-{new_epoch()}"
        self._epoch_known = False
        self.available = False
        self._resync = False
        self.last_error = "not connected yet"
        self._create_local = self._registry.create
        self.create = self._create  # type: ignore[assignment]  # a narrower signature than the registry's
        self.sweep = self._sweep
        self._host: StorageHost | None = None
        self._owned: dict[int, _Owned] = {}
        self._pending: set[int] = set()  # owned handles with frames (or a creation) not yet shipped
        self._copies: dict[str, _Copy] = {}
        self._copy_labels: dict[str, dict[str, str]] = {}
        self._stats = _Stats()
        self._tasks: list[asyncio.Task[None]] = []
        self._copies_changed = asyncio.Event()
        self._client, self._tail_client = self._connect()
        self._wake_id = "0-0"
        self._connected = asyncio.Event()
        self._maxlen = max(16, max_frames_per_stream)

    # -- keys ---------------------------------------------------------------------------------------

    def _meta(self, key: str) -> str:
        return f"{self.prefix}s:{key}:m"

    def _frames_key(self, key: str) -> str:
        return f"{self.prefix}s:{key}:f"

    def _readers_key(self, key: str) -> str:
        return f"{self.prefix}s:{key}:r"

    def _lease_key(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def _control(self, node: str) -> str:
        return f"{self.prefix}ctl:{node}"

    @property
    def _wake_key(self) -> str:
        return f"{self.prefix}wake:{self.node_id}"

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._epoch

    def bind(self, host: StorageHost) -> None:
        """The hub this storage reports to (one hub per storage)."""
        if self._host is not None and self._host is not host:
            raise RuntimeError("a RedisStorage serves one hub")
        self._host = host

    def start(self) -> None:
        """Start the background tasks on the running loop (idempotent): connect, ship, tail, lease, control."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        for name, coro in (
            ("heartbeat", self._heartbeat_loop()),
            ("ship", self._ship_loop()),
            ("tail", self._tail_loop()),
            ("control", self._control_loop()),
        ):
            self._tasks.append(loop.create_task(coro, name=f"tokenwire:redis:{name}"))

    def _connect(self) -> tuple[aioredis.Redis, aioredis.Redis]:
        """The clients (they connect on first use): a pool for the writer, heartbeat, restores and control,
        and the tail reader's own connection, which blocks up to a second per read."""
        timeout = self.command_timeout
        # A pooled connection Redis closed (it restarted) fails its next command: that command is sent once
        # more on a new connection. Every call here may run twice (XADD refuses an entry it has, a second cancel
        # or wake changes nothing).
        retry = {"retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError]}
        client = aioredis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout, **retry)
        tail = aioredis.from_url(
            self.url,
            socket_timeout=timeout + 1.0,
            socket_connect_timeout=timeout,
            single_connection_client=True,
            **retry,
        )
        return client, tail

    async def wait_connected(self, within: float) -> bool:
        """Wait until Redis has answered once (True) or ``within`` s pass (False)."""
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), within)
        return self._connected.is_set()

    async def aclose(self) -> None:
        """Ship what is left (bounded by ``command_timeout``), then stop the tasks and close the connections."""
        if self.available:  # the hub's producers ended since the last tick: their final frames are dirty
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ship_once(), self.command_timeout)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:  # a task inside the redis client may take its cancel late: the close is bounded
            await asyncio.wait(tasks, timeout=self.command_timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.delete(self._lease_key(self.node_id)), self.command_timeout)
        for client in (self._client, self._tail_client):
            with contextlib.suppress(Exception):
                await client.aclose()
        self._client, self._tail_client = self._connect()  # a later start begins afresh

    def _ok(self) -> None:
        self._stats.round_trips += 1
        if not self.available:
            if self._epoch_known:
                log.info("redis %s reachable", self.url)
            self.available = True
            self.last_error = ""

    def _failed(self, exc: BaseException, what: str) -> None:
        self._stats.redis_errors += 1
        message = f"{type(exc).__name__}: {exc}"
        if self.available or self.last_error != message:
            log.warning("redis %s: %s failed: %s", self.url, what, message)
        self.available = False
        self.last_error = message
        # The call that reaches Redis first after this may be the ship script itself: compare what Redis holds
        # with what was shipped before any ship (a Redis back from an older snapshot lost acknowledged writes).
        self._resync = self._epoch_known

    def _unavailable(self) -> StorageUnavailable:
        return StorageUnavailable(f"stream storage (redis {self.url}) is unreachable: {self.last_error}")

    # -- the hub's calls ----------------------------------------------------------------------------

    def _create(self, key: str, id_prefix: str, frames: int = 0, frame_bytes: int = 0) -> int:
        """A new stream this node produces: ``StorageUnavailable`` while Redis does not answer (another node
        could not resume it, and nothing would be shipped)."""
        if not self.available or not self._epoch_known:
            raise self._unavailable()
        handle = self._create_local(key, id_prefix, frames, frame_bytes, tracked=True)
        self._owned[handle] = _Owned(key)
        self._pending.add(handle)  # its meta goes out on the next tick, before any token
        return handle

    def _sweep(self, now: float) -> list[str]:
        removed = self._registry.sweep(now)
        if removed:
            gone = set(removed)
            for handle in [h for h, o in self._owned.items() if o.key in gone]:
                del self._owned[handle]
                self._pending.discard(handle)
            for key in gone:
                self._copies.pop(key, None)
                self._copy_labels.pop(key, None)
        return removed

    def label(self, handle: int, name: str, value: str) -> None:
        owned = self._owned.get(handle)
        if owned is not None:
            owned.labels[name] = value
            owned.labels_dirty = True
            self._pending.add(handle)

    def labels(self, key: str) -> dict[str, str]:
        return dict(self._copy_labels.get(key, {}))

    def stats(self) -> dict[str, float]:
        s = self._stats
        now = time.monotonic()
        lag = max((now - o.dirty_since for o in self._owned.values() if o.dirty_since), default=0.0)
        return {
            "redis_up": float(self.available),
            "redis_errors": s.redis_errors,
            "redis_round_trips": s.round_trips,
            "redis_ship_calls": s.ship_calls,
            "redis_ship_streams": s.ship_streams,
            "redis_ship_bytes": s.ship_frames_bytes,
            "redis_replication_lag_seconds": lag,
            "redis_unshipped_streams": len(self._pending),
            "redis_restores": s.restores,
            "redis_tail_reads": s.tail_reads,
            "redis_copies": len(self._copies),
            "redis_producers_lost": s.producers_lost,
            "redis_gaps": s.gaps,
        }

    async def restore(self, key: str) -> int | None:
        """Copy a stream another node produced: its frames from Redis now, then the live tail. ``None`` if the
        store does not know it; ``StorageUnavailable`` if Redis does not answer."""
        handle = self._registry.lookup(key)
        if handle is not None:
            return handle
        if not self._epoch_known:
            raise self._unavailable()
        meta_raw, entries = await self._read_stream(key)
        wait = max(0.05, 4 * self.ship_interval)
        for _ in range(4):
            if meta_raw:
                break
            # Started a moment ago on its node and not shipped yet? Its first tick is a ship interval and a round
            # trip away, more on a node short of CPU: look again, waiting longer each time (0.75 s in all),
            # before calling it unknown. A client would otherwise run its prompt again.
            await asyncio.sleep(wait)
            wait *= 2
            meta_raw, entries = await self._read_stream(key)
        handle = self._registry.lookup(key)  # restored meanwhile by a concurrent request
        if handle is not None:
            return handle
        if not meta_raw:
            return None
        meta = {k.decode(): v.decode() for k, v in meta_raw.items()}
        frames, entry_id, end_state = _contiguous(entries)
        first_seq = frames[0][1] if frames else _entry_seq(entry_id) + 1
        handle = self._create_local(key, format_id_prefix(key, self._epoch), first_seq=first_seq)
        with contextlib.suppress(ValueError, AttributeError):
            self._copy_labels[key] = {str(k): str(v) for k, v in json.loads(meta.get("labels", "{}")).items()}
        self._stats.restores += 1
        copy = _Copy(handle, meta.get("owner", ""), entry_id)
        ended = self._apply(handle, frames, end_state)
        if not ended:
            self._copies[key] = copy
            self._copies_changed.set()
            self._wake_tail()
        return handle

    async def _read_stream(self, key: str) -> tuple[dict[bytes, bytes], _Entries]:
        """One round trip: a stream's hash and every entry Redis holds for it."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._meta(key))
                pipe.xrange(self._frames_key(key))
                meta_raw, entries = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "restore")
            raise self._unavailable() from exc
        self._ok()
        return meta_raw, entries

    def cancel_remote(self, key: str, reason: str) -> None:
        """Ask the owner of a copied stream to cancel it (published; the end arrives through the tail)."""
        copy = self._copies.get(key)
        if copy is None:
            return
        self._spawn(self._publish(key, copy, f"cancel\t{key}\t{reason}"), "cancel")

    async def _publish(self, key: str, copy: _Copy, message: str) -> None:
        """Publish to ``copy``'s owner until its control subscription took it (pub/sub keeps nothing: Redis away,
        or the owner resubscribing, would drop it) or the copy ends (cancelled, or its owner declared lost)."""
        delay = 0.05
        while self._copies.get(key) is copy:
            try:
                received = await self._client.publish(self._control(copy.owner), message)
                self._ok()
                if received:
                    return
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, "publish")
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"tokenwire:redis:{what}")
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    # -- copies: apply frames from Redis ------------------------------------------------------------

    def _apply(self, handle: int, frames: list[tuple[int, int, str]], end_state: int) -> bool:
        """Append ``frames`` (in seq order, possibly overlapping what is held) to a copy; True if it ended."""
        reg = self._registry
        if reg.state(handle) != _core.STATE_OPEN:
            return True
        last = reg.last_seq(handle)
        tokens: list[str] = []
        for kind, seq, text in frames:
            if seq <= last:
                continue
            if seq != last + 1:
                self._end_copy(handle, "history_gap", f"frames {last + 1}-{seq - 1} were lost")
                return True
            last = seq
            if kind == _core.FRAME_TOKEN:
                tokens.append(text)
                continue
            if tokens:
                reg.append_many(handle, tokens)
                tokens = []
            state = end_state or (_core.STATE_FINISHED if kind == _core.FRAME_DONE else _core.STATE_FAILED)
            reg.end(handle, kind, text, state, time.monotonic())
            self._notify_end(handle, state)
            return True
        if tokens:
            reg.append_many(handle, tokens)
            if self._host is not None:
                self._host.on_remote_frames(reg.key(handle))
        return False

    def _end_copy(self, handle: int, code: str, message: str) -> None:
        """End a copy here only (its history cannot go on): readers get an ``error`` frame with ``code``."""
        reg = self._registry
        if reg.state(handle) != _core.STATE_OPEN:
            return
        payload = json.dumps({"code": code, "message": message}, separators=(",", ":"))
        reg.end(handle, _core.FRAME_ERROR, payload, _core.STATE_FAILED, time.monotonic())
        self._notify_end(handle, _core.STATE_FAILED)

    def _notify_end(self, handle: int, state: int) -> None:
        key = self._registry.key(handle)
        self._copies.pop(key, None)
        if self._host is not None:
            self._host.on_remote_end(key, state)

    def _wake_tail(self) -> None:
        """Make the tail reader re-read its key list now (a new copy to follow)."""
        self._spawn(self._wake(), "wake")

    async def _wake(self) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=8, approximate=False)
                pipe.pexpire(self._wake_key, 60_000)  # node ids are new at every start: the key goes with its node
                await pipe.execute()
            self._ok()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "wake")

    async def _tail_loop(self) -> None:
        """One blocking read over every copied stream (and this node's wake key), for the whole node."""
        backoff = 0.05
        while _not_cancelled():
            if not self._copies:
                self._copies_changed.clear()
                await self._copies_changed.wait()
                continue
            if not self._epoch_known:
                await asyncio.sleep(0.2)
                continue
            try:
                await self._tail_once()
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, "tail read")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05

    async def _tail_once(self) -> None:
        streams: dict[Any, Any] = {self._wake_key: self._wake_id}
        by_frames_key: dict[bytes, str] = {}
        for key, followed in self._copies.items():
            fk = self._frames_key(key)
            streams[fk] = followed.entry_id
            by_frames_key[fk.encode()] = key
        raw = await self._tail_client.xread(streams, count=1024, block=1000)
        reply = cast("list[tuple[bytes, _Entries]] | None", raw)
        self._ok()
        self._stats.tail_reads += 1
        for stream_key, entries in reply or ():
            if stream_key == self._wake_key.encode():
                self._wake_id = entries[-1][0].decode()
                continue
            key = by_frames_key.get(stream_key, "")
            copy = self._copies.get(key)
            if copy is None or not entries:
                continue
            frames, _, end_state = _contiguous(entries, allow_gap=False)
            copy.entry_id = entries[-1][0].decode()
            try:
                self._apply(copy.handle, frames, end_state)
            except Exception:  # a copy removed meanwhile (swept, evicted): stop following it
                log.exception("stream %s: applying frames from redis failed", key)
                self._copies.pop(key, None)

    # -- owner: ship new frames ---------------------------------------------------------------------

    async def _ship_loop(self) -> None:
        while _not_cancelled():
            await asyncio.sleep(self.ship_interval)
            try:
                await self._ship_once()
            except Exception:  # one bad tick must not stop shipping
                log.exception("shipping to redis failed")

    async def _ship_once(self) -> None:
        """One tick: the new frames of every dirty stream this node produces, in one script call."""
        self._pending.update(h for h in self._registry.take_dirty() if h in self._owned)
        if self._resync and self._epoch_known:
            await self._resync_shipped()
            if self._resync:  # Redis still away: a ship now could write past frames it lost
                return
        if not self._pending or not self._epoch_known:
            return
        args: list[Any] = [self.prefix, self.node_id, self._epoch, self._maxlen]
        args += [int(max(self.ttl, 3600.0) * 1000), int(self.ttl * 1000)]
        batch = self._collect(args)
        if not batch:
            return
        try:
            reply = await self._script(_SHIP, args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "ship")
            for _, owned, _, had_labels in batch:
                owned.labels_dirty |= had_labels
            return
        self._ok()
        self._stats.ship_calls += 1
        self._stats.ship_streams += len(batch)
        if not reply or int(reply[0]) == 0:
            self._history_lost()
            return
        self._shipped(batch, {r.decode() if isinstance(r, bytes) else str(r) for r in reply[1:]})

    def _collect(self, args: list[Any]) -> list[tuple[int, _Owned, int, bool]]:
        """Adds the pending streams' head lines and frames to ``args`` (see ``_SHIP``); returns what it added."""
        reg = self._registry
        now = time.monotonic()
        batch: list[tuple[int, _Owned, int, bool]] = []
        heads: list[str] = []
        frames: list[bytes] = []
        for handle in list(self._pending):
            owned = self._owned.get(handle)
            if owned is None or owned.stopped:
                self._pending.discard(handle)
                continue
            if not owned.dirty_since:
                owned.dirty_since = now
            after = owned.shipped
            try:
                data, last, ended = reg.poll(handle, after, _core.WIRE_BINARY)
            except ResumeExpired:
                # The ring dropped frames Redis never got (Redis was away too long): ship from what is held;
                # copies elsewhere will not cross the hole (their readers get 410 or ``history_gap``).
                self._stats.gaps += 1
                log.warning("stream %s: frames after %d were dropped before redis got them", owned.key, after)
                after = reg.oldest_seq(handle) - 1
                data, last, ended = reg.poll(handle, after, _core.WIRE_BINARY)
            except LookupError:  # removed meanwhile
                self._pending.discard(handle)
                continue
            labels = json.dumps(owned.labels, separators=(",", ":")) if owned.labels_dirty else ""
            owned.labels_dirty = False  # set again if this tick fails
            heads.append(f"{owned.key} {after} {last} {reg.state(handle) if ended else 0} {len(data)} {labels}")
            frames.append(data)
            batch.append((handle, owned, last, bool(labels)))
            self._stats.ship_frames_bytes += len(data)
        args += ["\n".join(heads), b"".join(frames)]
        return batch

    def _shipped(self, batch: list[tuple[int, _Owned, int, bool]], ended_elsewhere: set[str]) -> None:
        for handle, owned, last, _ in batch:
            owned.shipped = max(owned.shipped, last)
            if self._registry.last_seq(handle) <= owned.shipped:
                self._pending.discard(handle)
                owned.dirty_since = 0.0
            if owned.key in ended_elsewhere:
                owned.stopped = True
                self._pending.discard(handle)
                if self._registry.state(handle) != _core.STATE_OPEN:
                    continue
                log.warning("stream %s was ended by another node (its lease lapsed); cancelling it here", owned.key)
                if self._host is not None:
                    self._host.on_remote_cancel(owned.key, "producer_lost")

    async def _resync_shipped(self) -> None:
        """Ship again from what Redis holds where that is less than this node shipped (lost writes)."""
        owned = [(h, o) for h, o in self._owned.items() if not o.stopped]
        if not owned:  # nothing to compare (and no round trip that would say Redis answers)
            self._resync = False
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for _, o in owned:
                    pipe.xrevrange(self._frames_key(o.key), count=1)
                held = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "resync")
            return
        self._ok()
        self._resync = False
        for (handle, o), value in zip(owned, held, strict=True):
            in_redis = _entry_seq(value[0][0].decode()) if value else 0
            if in_redis < o.shipped:
                log.warning(
                    "stream %s: redis holds up to seq %d of %d shipped; shipping again", o.key, in_redis, o.shipped
                )
                o.shipped = in_redis
                self._pending.add(handle)

    async def _script(self, source: str, args: list[Any]) -> Any:
        """Run a Lua script by its SHA-1, sending its text only where Redis does not know it (a new or restarted
        server: ``EVAL`` also caches it)."""
        try:
            return await self._client.evalsha(_SHA1[source], 0, *args)
        except NoScriptError:
            return await self._client.eval(source, 0, *args)

    def _history_lost(self) -> None:
        """Redis lost the store's history (restarted empty): nothing produced so far ships any more."""
        for owned in self._owned.values():
            owned.stopped = True
        self._pending.clear()
        for copy in list(self._copies.values()):
            self._end_copy(copy.handle, "history_lost", "the stream store lost its history")
        self._epoch_known = False  # the heartbeat reads (or sets) the new epoch

    # -- heartbeat: lease, epoch, readers, owners ---------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.lease / 3
        while _not_cancelled():
            try:
                await self._heartbeat()
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, "heartbeat")
                if not self._connected.is_set():
                    await asyncio.sleep(min(interval, 0.2))
                    continue
            except Exception:
                log.exception("redis heartbeat failed")
            await asyncio.sleep(interval)

    async def _heartbeat(self) -> None:
        """One round trip: this node's lease, the store's epoch, reader presence both ways, owners' leases."""
        host = self._host
        lease_ms = int(self.lease * 1000)
        now_ms = int(time.time() * 1000)
        read_here = [k for k in self._copies if host is not None and host.has_readers(k)]
        owners = sorted({c.owner for c in self._copies.values()})
        unread = host.owned_unread() if host is not None else []
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(self._lease_key(self.node_id), "1", px=lease_ms)
            pipe.set(f"{self.prefix}epoch", new_epoch(), nx=True)
            pipe.get(f"{self.prefix}epoch")
            for key in read_here:
                pipe.hset(self._readers_key(key), self.node_id, now_ms + 2 * lease_ms)
                pipe.pexpire(self._readers_key(key), 2 * lease_ms)
            for owner in owners:
                pipe.exists(self._lease_key(owner))
            for key in unread:
                pipe.hvals(self._readers_key(key))
            replies = await pipe.execute()
        self._ok()
        self._adopt_epoch(replies[2].decode())
        at = 3 + 2 * len(read_here)
        alive = dict(zip(owners, replies[at : at + len(owners)], strict=True))
        at += len(owners)
        for key, expiries in zip(unread, replies[at:], strict=True):
            if host is not None and any(int(e) > now_ms for e in expiries):
                host.on_remote_readers(key)
        now = time.monotonic()
        lost = []
        for key, copy in list(self._copies.items()):
            if alive.get(copy.owner):
                copy.owner_missing_since = 0.0
            elif not copy.owner_missing_since:
                copy.owner_missing_since = now
            elif now - copy.owner_missing_since >= self.lease:
                lost.append(self._declare_lost(key, copy))
        await asyncio.gather(*lost)  # together: many copies of one dead owner must not delay this node's lease

    def _adopt_epoch(self, epoch: str) -> None:
        if epoch != self._epoch:
            if self._epoch_known:
                log.warning("redis epoch changed %s -> %s: the store lost its history", self._epoch, epoch)
                self._history_lost()
            self._epoch = epoch
            self._epoch_known = True
        self._connected.set()

    async def _declare_lost(self, key: str, copy: _Copy) -> None:
        """The owner's lease lapsed a lease ago: end the stream in Redis with ``producer_lost``."""
        client = self._client
        held = cast("_Entries", await client.xrevrange(self._frames_key(key), count=1))
        shipped = _entry_seq(held[0][0].decode()) if held else 0
        message = f"the node producing this stream ({copy.owner}) stopped; everything it produced is kept"
        payload = json.dumps({"code": "producer_lost", "message": message}, separators=(",", ":"))
        frame = _core.encode_frame(_core.FRAME_ERROR, shipped + 1, payload)
        done = await self._script(
            _LOST,
            [
                self._meta(key),
                self._frames_key(key),
                self._lease_key(copy.owner),
                str(shipped),
                frame,
                shipped + 1,
                _core.STATE_FAILED,
                self._maxlen,
                int(self.ttl * 1000),
            ],
        )
        if int(done) == 1:
            self._stats.producers_lost += 1
            log.warning("stream %s: producer node %s lost; ended with producer_lost", key, copy.owner)
        if int(done) == 2 or (int(done) != -1 and self._registry.last_seq(copy.handle) > shipped):
            # Redis lost history this copy holds (back from an older snapshot, or its keys went): an end written
            # there is not after what the copy holds, so it would never reach it. End the copy here.
            self._end_copy(copy.handle, "producer_lost", message)
        self._wake_tail()

    # -- control: cancels for streams this node produces ---------------------------------------------

    async def _control_loop(self) -> None:
        while _not_cancelled():
            client = self._client
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._control(self.node_id))
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._on_control(message["data"])
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, "control subscription")
                await asyncio.sleep(0.2)

    def _on_control(self, data: bytes) -> None:
        parts = data.decode(errors="replace").split("\t")
        if len(parts) == 3 and parts[0] == "cancel" and self._host is not None:
            self._host.on_remote_cancel(parts[1], parts[2])


def _not_cancelled() -> bool:
    """For the background loops: a cancel that a call inside the redis client swallowed (it happens, while a
    command is in flight) still stops the loop at its next turn, instead of leaving it running."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return True


def _entry_seq(entry_id: str) -> int:
    """The seq an entry id ``0-{seq}`` names: the last frame of its batch."""
    return int(entry_id.partition("-")[2] or 0)


_Entries = Sequence[tuple[bytes, dict[bytes, bytes]]]


def _contiguous(entries: _Entries, *, allow_gap: bool = True) -> tuple[list[tuple[int, int, str]], str, int]:
    """Frames of ``entries`` in seq order, the last entry id, and the end state if the last entry ends the
    stream (0 otherwise). With ``allow_gap``, frames before a hole in the seqs are dropped (a copy starts
    after it); without, the caller finds the hole."""
    frames: list[tuple[int, int, str]] = []
    last = 0
    end_state = 0
    for _, fields in entries:
        for frame in _core.FrameDecoder().feed(fields[b"d"]):
            seq = frame[1]
            if seq <= last:
                continue  # shipped twice (a retried tick)
            if allow_gap and last and seq > last + 1:
                frames = []  # a hole: a copy starts after it
            frames.append(frame)
            last = seq
        if b"s" in fields:
            end_state = int(fields[b"s"])
    entry_id = entries[-1][0].decode() if entries else "0-0"
    return frames, entry_id, end_state


if TYPE_CHECKING:
    from tokenwire.storage import Storage

    _check: type[Storage] = RedisStorage
