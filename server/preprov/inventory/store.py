"""The device inventory: device records, an append-only event log per device, the
leases, the batches; one interface (`Store`), two backends.

- `sqlite.SQLiteStore`, the embedded default: a file in the state directory.
- `postgres.PostgresStore`: one database shared by several servers
  (`inventory.database: postgresql://...`), with the leases claimed in it.

What a batch of events does to the device rows (`DeviceRows`) is the same for
both; they differ in SQL and in where a commit runs (SQLite's in a writer
process of the server's own, PostgreSQL's in the database server); the server
awaits either. `Recorder`
subscribes to the event bus and writes events in group commits: all events
emitted during one turn of the event loop go into one transaction, and
`settled()` resolves once they are committed, so a handler can wait for its
event to be stored before it answers.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from ..events import ClaimsLost, DeviceEvent, Dhcp4Lease, Dhcp6Lease, Event, is_refusal
from ..safety import RateLimiter
from .queries import STAGES, Device, Reads

T = TypeVar("T")

BOOT_GAP = 30.0  # seconds of quiet before a boot-start event begins a new boot
WRITTEN_MAX = 20_000  # device rows remembered as written (see DeviceRows): about 6 MB

__all__ = ["STAGES", "Budget", "Device", "Reads", "Recorder", "Store", "open_store"]


class SchemaTooNew(Exception):
    pass


class StoreBusy(Exception):
    """Another connection holds the write lock (a checkpoint): try again shortly."""


class StoreUnavailable(Exception):
    """The database cannot be reached: the events wait, leases are not answered."""


def _starts_boot(kind: str, data: dict[str, Any]) -> bool:
    """What a phone sends first when it boots: a DHCPDISCOVER, a SOLICIT, a new
    SUBSCRIBE, or a fetch of a file that is not its own (the pre-provisioning file).
    Answered requests, and a SUBSCRIBE that passed every check but found no rule (a
    boot that fails must still be a boot); not one refused for its source or rate."""
    if kind == "pnp.subscribe":
        return not data.get("retransmission")
    if kind == "pnp.ignored":
        return bool(data.get("no_rule"))
    if kind == "dhcp4.answered":
        return data.get("request") == "DHCPDISCOVER"
    if kind == "dhcp6.answered":
        return data.get("request") == "SOLICIT"
    if kind == "file.served":
        template = data.get("template") or ""
        return "{MAC}" not in template and "{mac}" not in template
    return False


def _stage_of(d: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
    """What one event says of a device's progress (ranks in STAGES)."""
    if kind == "pnp.notify-sent":
        d["pnp"] = d["pnp"] or "NOTIFY sent"
        d["stage"] = max(d["stage"], 1)
    elif kind == "pnp.notify-acked":
        d["pnp"] = "answered"
        d["stage"] = max(d["stage"], 1)
    elif kind == "dhcp4.answered" and data.get("message") == "DHCPACK" and data.get("url"):
        d["dhcp"] = f"DHCPv4 ACK {data.get('ip') or ''}".strip()
        d["stage"] = max(d["stage"], 1)
    elif kind == "dhcp6.answered" and data.get("message") == "REPLY" and data.get("url"):
        d["dhcp"] = "DHCPv6 REPLY"
        d["stage"] = max(d["stage"], 1)
    elif kind == "redirect.answered":
        d["stage"] = max(d["stage"], 1)
    elif kind == "file.served":
        d["files"] += 1
        template = data.get("template") or ""
        d["stage"] = max(d["stage"], 3 if "{MAC}" in template or "{mac}" in template else 2)


@dataclass(frozen=True)
class Budget:
    """How much the inventory may hold (inventory.max_bytes, inventory.retention).
    max_bytes bounds SQLite's files; a PostgreSQL database is the operator's disk,
    bounded by the retention alone."""

    max_bytes: int = 256 * 1024 * 1024
    max_age: float = 30 * 86400.0  # seconds
    max_events: int = 1_000_000

    @property
    def wal_limit(self) -> int:
        """The WAL's share: an eighth, at most 64 MiB."""
        return min(self.max_bytes // 8, 64 * 1024 * 1024)

    @property
    def db_limit(self) -> int:
        """The database's share; events are pruned when it is 90 % full."""
        return self.max_bytes - self.wal_limit


class Store(Protocol):
    """What the server, the API and the command line use; both backends have it."""

    server: str  # this server's name, on every event and device row it writes
    shared: bool  # other servers may write to the same inventory
    pipeline: int  # awaited writes in flight at once, at most (committed in order)
    reads: Reads  # the queries on the loop's own connection (start, command line)

    @property
    def pruned(self) -> int: ...  # events pruned since start
    @property
    def forgotten(self) -> int: ...  # devices forgotten since start

    # told of what other servers sharing the inventory committed (PostgreSQL)
    on_leases: Callable[[list[dict[str, Any]]], None]
    on_change: Callable[[str], None]
    on_registered: Callable[[str], None]
    on_told: Callable[[list[tuple[str, str, dict[str, Any]]]], None]

    async def open(self) -> None: ...
    def write(
        self, events: Sequence[Event], handed: Callable[[], None] | None = None
    ) -> set[str] | Awaitable[set[str]]:
        """Store the events in one transaction; the addresses whose lease claims
        another server won (none with one server). `handed`, if the store calls
        it, says the events are safe from this process's end before the commit
        (in the writer process's pipe)."""
        ...

    def leases(self) -> list[dict[str, Any]]: ...
    def add_batch(
        self, name: str, macs: list[str], now: float, extra: dict[str, dict[str, str]] | None = None
    ) -> int: ...
    def rename_batch(self, bid: int, name: str) -> bool: ...
    def delete_batch(self, bid: int) -> bool: ...
    def forget_device(self, mac: str) -> bool: ...
    def batches(self) -> list[dict[str, Any]]: ...
    def add_device(self, mac: str, now: float) -> None: ...
    def registered(self) -> set[str]: ...
    def device(self, mac: str) -> Device | None: ...
    def devices(self) -> list[Device]: ...
    def events(self, mac: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...
    async def read(self, query: Callable[[Reads], T]) -> T: ...
    async def aclose(self) -> None: ...
    def close(self) -> None: ...


def open_store(
    database: str | None, state_dir: Path, *, server: str = "", synchronous: str = "normal",
    budget: Budget | None = None, boot_gap: float = BOOT_GAP, background: bool = False,
) -> Store:  # fmt: skip
    """The store `inventory.database` names: a postgresql:// URL, else SQLite in the
    state directory (the default)."""
    if database and database.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(database, server=server, budget=budget, boot_gap=boot_gap,
                             background=background)  # fmt: skip
    from .sqlite import SQLiteStore

    path = Path(database) if database else state_dir / "preprov.db"
    return SQLiteStore(path, synchronous, writer_process=background, budget=budget,
                       boot_gap=boot_gap, server=server)  # fmt: skip


_FACTS = ("model", "fwver", "vendor", "ipv4", "ipv6")
_UPSERT_KEYS = ("mac", *_FACTS, *(f"g{k}" for k in _FACTS), "first", "last", "kind", "error",
                "pnp", "dhcp", "files", "stage", "changed",
                "boot", "boot_sure", "prov", "server")  # fmt: skip


@dataclass
class Batch:
    """One group commit, ready for either backend's SQL."""

    events: list[tuple[float, str | None, str, str, str]]  # ts, mac, kind, data, server
    leases: list[tuple[Any, ...]]  # CLAIM_LEASE's parameters
    lease_events: list[int]  # the index in `events` of each lease's event
    upserts: list[dict[str, Any]]  # devices the batch may create
    updates: list[dict[str, Any]]  # devices it only updates (refused datagrams)
    prior: dict[str, tuple[tuple[object, ...], float, int] | None]  # for restore()

    def lost(self, ips: set[str]) -> None:
        """These claims failed: their events say so (state "lost"), not "bound"."""
        for lease, i in zip(self.leases, self.lease_events, strict=True):
            if lease[0] in ips:
                ts, mac, kind, data, server = self.events[i]
                d = orjson.loads(data)
                d.update(state="lost", reason="bound by another server first")
                self.events[i] = (ts, mac, kind, orjson.dumps(d).decode(), server)


# One event as the inventory writes it, in plain values (it crosses a pipe to the
# SQLite writer process): its time, its device's MAC (a device event's), kind,
# fields as JSON, level "info", a refusal (is_refusal), and for a lease event
# CLAIM_LEASE's parameters but the server's name.
Record = tuple[float, str | None, str, str, bool, bool, tuple[Any, ...] | None]


def records(events: Sequence[Event]) -> tuple[list[Record], list[dict[str, Any]]]:
    """The events as records, and their fields as dicts (DeviceRows.prepare's `datas`)."""
    out: list[Record] = []
    datas: list[dict[str, Any]] = []
    for ev in events:
        data = ev.fields()
        lease = ((ev.ip, ev.client_id, ev.mac, ev.state, ev.expires, ev.hostname, ev.ts)
                 if isinstance(ev, (Dhcp4Lease, Dhcp6Lease)) else None)  # fmt: skip
        out.append((ev.ts, data.get("mac") if isinstance(ev, DeviceEvent) else None, ev.kind,
                    orjson.dumps(data, default=str).decode(), ev.level == "info",
                    is_refusal(ev), lease))  # fmt: skip
        datas.append(data)
    return out, datas


class DeviceRows:
    """What a batch of events does to the device rows: one dict of parameters per
    device for UPSERT_DEVICE / UPDATE_DEVICE, boots and stages folded in.

    A device row changes when a fact about it changes (its stage included);
    otherwise its last_seen and files count are refreshed at most once a second
    (the event log has every event), which spares random page writes per event
    under load: a file served rewrote the row, and SQLite's WAL grew 80 MB/s."""

    def __init__(self, server: str, boot_gap: float) -> None:
        self.server = server
        self.boot_gap = boot_gap
        # per device: what its row says, when it was written, files served since
        self.written: dict[str, tuple[tuple[object, ...], float, int]] = {}

    def prepare(
        self, records: Sequence[Record], changed: int, datas: Sequence[dict[str, Any]] = ()
    ) -> Batch:
        """`changed`: the change cursor's value for rows with a new fact; `datas`, the
        records' fields as dicts where the caller has them (else read from the JSON)."""
        rows: list[tuple[float, str | None, str, str, str]] = []
        leases: list[tuple[Any, ...]] = []
        lease_events: list[int] = []
        devices: dict[str, dict[str, Any]] = {}
        server = self.server
        for i, (ts, mac, kind, text, info, refused, lease) in enumerate(records):
            if lease is not None:
                leases.append((*lease, server))
                lease_events.append(len(rows))
            rows.append((ts, mac, kind, text, server))
            if mac:
                data = datas[i] if datas else orjson.loads(text)
                d = devices.get(mac)
                if d is None:
                    d = devices[mac] = dict.fromkeys(_UPSERT_KEYS)
                    d["mac"], d["first"], d["files"], d["stage"] = mac, ts, 0, 0
                    d["create"], d["boot_sure"], d["server"] = False, 0, server
                elif _starts_boot(kind, data) and ts - d["last"] >= self.boot_gap:
                    # a new boot within this batch: what came before it is the old one's
                    d.update(pnp=None, dhcp=None, files=0, stage=0, error=None, prov=None,
                             boot=None, boot_sure=1)  # fmt: skip
                if d["boot"] is None and _starts_boot(kind, data):
                    d["boot"] = ts
                d["last"], d["kind"] = ts, kind
                prefix = "g" if refused else ""
                for k in ("model", "fwver", "vendor"):
                    if data[k]:
                        d[prefix + k] = data[k]
                client = data["client"]
                if client:
                    d[prefix + ("ipv6" if ":" in client else "ipv4")] = client
                if not info:
                    d["error"] = f"{kind}: {data.get('reason', '')}"
                if not refused or data["channel"] in ("http", "https"):
                    d["create"] = True
                _stage_of(d, kind, data)
                if d["stage"] >= 3 and d["prov"] is None:
                    d["prov"] = ts
        upserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        prior: dict[str, tuple[tuple[object, ...], float, int] | None] = {}
        for mac, d in devices.items():
            state = (d["model"], d["fwver"], d["vendor"], d["ipv4"], d["ipv6"], d["kind"],
                     d["error"], d["pnp"], d["dhcp"], d["stage"],
                     d["gipv4"], d["gipv6"], d["boot"])  # fmt: skip
            written = prior[mac] = self.written.get(mac)
            if written is None or written[0] != state or d["last"] - written[1] >= 1.0:
                # the change cursor moves for a new fact, not for a refreshed last_seen
                fresh = written is None or written[0] != state
                d["changed"] = changed if fresh else None
                if d["boot"] is None:  # files not written yet belong to this boot
                    d["files"] += written[2] if written else 0
                d["gap"] = self.boot_gap
                (upserts if d.pop("create") else updates).append(d)
                self.written[mac] = (state, d["last"], 0)
            elif d["files"]:
                self.written[mac] = (written[0], written[1], written[2] + d["files"])
        if len(self.written) > WRITTEN_MAX:
            self.written.clear()  # forgetting costs one more row write per device
        return Batch(rows, leases, lease_events, upserts, updates, prior)

    def restore(self, batch: Batch) -> None:
        """The batch was not written: its rows are as they were before it."""
        for mac, written in batch.prior.items():
            if written is None:
                self.written.pop(mac, None)
            else:
                self.written[mac] = written


# A group commit waits while events keep arriving, loop turn after loop turn,
# for at most FLUSH_MAX seconds; it commits as soon as a turn brings nothing new.
# Closed-loop clients (an HTTP client waiting for its answer) are then answered
# at once, and a flood of datagrams is committed in batches of FLUSH_MAX.
FLUSH_MAX = 0.002
NOISE_BURST = 200
BUSY_RETRY = 0.001  # seconds between tries of a busy group commit
BUSY_MAX = 5.0  # then its answers fail (503), as for any failed commit
NOISE_RATE = 20.0
RETRY_UNAVAILABLE = 1.0  # seconds between tries while the database cannot be reached
SPOOL_MAX = 100_000  # events kept in memory while it cannot: then the oldest are dropped

Callback = Callable[[BaseException | None], None]


class _InFlight:
    """A write awaited, and the callbacks waiting for it. A store that hands its
    commits to another process (SQLite's writer) calls `handed` once the events
    are there: they are then committed even if this process dies at once (a kill
    -9), so the callbacks that claim no lease are called (an answer leaves without
    waiting for SQLite); those that claim one wait for the commit's verdict."""

    __slots__ = ("callbacks", "is_handed", "since")

    def __init__(self, callbacks: list[tuple[Callback, bool]]) -> None:
        self.since = time.monotonic()
        self.callbacks = callbacks
        self.is_handed = False

    def handed(self) -> None:
        self.is_handed = True
        waiting, self.callbacks = self.callbacks, []
        for cb, claims in waiting:
            if claims:
                self.callbacks.append((cb, claims))
            else:
                cb(None)

    def wait(self, callback: Callback, claims: bool) -> None:
        if self.is_handed and not claims:
            callback(None)
        else:
            self.callbacks.append((callback, claims))


class Recorder:
    """The inventory's subscription to the event bus, with group commit.

    Events are written in one transaction (see FLUSH_MAX); callbacks registered
    with after_commit run once that transaction is committed (or failed), so an
    answer can wait for its event to be stored without a task or a future per
    request. A store whose write is awaited has up to `store.pipeline` writes
    in flight (SQLite's writer process 16: it commits whatever has arrived in one
    transaction, so the loop never waits for it; PostgreSQL 1); the events of
    the turns meanwhile make the next one, so the group grows with the load.

    While the database cannot be reached (StoreUnavailable), files and PnP are
    answered and their events wait in memory (at most SPOOL_MAX, then the oldest
    are dropped and counted); an answer that claims a lease is not sent. The
    write is tried again every RETRY_UNAVAILABLE seconds; `on_state` is told of
    each change (the server turns it into an event and a metric).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        # Refusals (ignored, refused, malformed requests) are stored as samples: at
        # most NOISE_BURST at once and NOISE_RATE a second of each kind and channel.
        # The metrics count every one; a flood of them fills no disk.
        self.noise = RateLimiter(NOISE_BURST, NOISE_RATE, max_sources=4096)
        self.unsampled: dict[str, int] = {}  # refusals not stored, by kind/channel
        self._pending: list[Event] = []
        self._callbacks: list[tuple[Callback, bool]] = []
        self._inflight: deque[_InFlight] = deque()  # the writes awaited, oldest first
        self._requeued = 0  # events of failed writes put back, in order, since the last
        self._scheduled = False
        self._since = 0.0
        self._seen = 0
        self._registered: set[str] = store.registered()
        self.registered_version = 0  # counts the additions to the registered set
        self._busy_since: float | None = None
        self.busy_retries = 0
        self.failures = 0
        self.claims_lost = 0  # lease claims another server won
        self.down: StoreUnavailable | None = None  # why the database cannot be reached
        self.dropped = 0  # events dropped while it could not
        self.on_state: Callable[[StoreUnavailable | None], None] = lambda down: None

    def __call__(self, event: Event) -> None:
        if is_refusal(event):
            key = f"{event.kind}/{getattr(event, 'channel', '')}"
            if not self.noise.allow(key, time.monotonic()):
                self.unsampled[key] = self.unsampled.get(key, 0) + 1
                return
        if self.down is not None and len(self._pending) >= SPOOL_MAX:
            del self._pending[: SPOOL_MAX // 10]
            self.dropped += SPOOL_MAX // 10
        self._pending.append(event)
        if not self._scheduled:
            self._scheduled = True
            self._since = time.monotonic()
            self._seen = len(self._pending)
            asyncio.get_running_loop().call_soon(self._maybe_flush)

    def _maybe_flush(self) -> None:
        n = len(self._pending)
        if n > self._seen and time.monotonic() - self._since < FLUSH_MAX:
            self._seen = n  # more came during this turn: wait one more
            asyncio.get_running_loop().call_soon(self._maybe_flush)
        else:
            self._flush()

    def lag(self) -> float:
        """Seconds the commit in flight has taken: past SHED_AFTER the DHCP servers start
        no new exchange (endpoint.DatagramReader), so that the answers waiting for
        the database are not joined by more than it can write."""
        return time.monotonic() - self._inflight[0].since if self._inflight else 0.0

    def registered(self, mac: str) -> bool:
        """Listed by the operator: served even when auto-add is off."""
        return mac in self._registered

    def register(self, mac: str) -> None:
        if mac not in self._registered:
            self.store.add_device(mac, time.time())
            self._registered.add(mac)
            self.registered_version += 1

    def registered_elsewhere(self, mac: str) -> None:
        """Another server sharing the inventory registered it."""
        if mac not in self._registered:
            self._registered.add(mac)
            self.registered_version += 1

    def after_commit(self, callback: Callback, claims: bool = False) -> None:
        """Call back once every event received so far is committed (at once if none
        waits). `claims`: the caller's events claim leases; it is told of claims
        another server won (ClaimsLost), and of a database that cannot be reached,
        where the others are called back at once without error."""
        if self.down is not None:
            callback(self.down if claims else None)
        elif self._pending:
            self._callbacks.append((callback, claims))
        elif self._inflight:
            self._inflight[-1].wait(callback, claims)
        else:
            callback(None)

    def _deliver(
        self, callbacks: list[tuple[Callback, bool]], error: BaseException | None,
        lost: set[str] | None = None,
    ) -> None:  # fmt: skip
        won = ClaimsLost(frozenset(lost)) if lost else None
        if won is not None:
            self.claims_lost += len(lost or ())
        for cb, claims in callbacks:
            cb(won if claims and error is None and won is not None else error)

    def _flush(self) -> None:
        self._scheduled = False
        if len(self._inflight) >= self.store.pipeline:
            return  # the oldest write in flight schedules the next when it is done
        events, self._pending = self._pending, []
        self._requeued = 0
        callbacks, self._callbacks = self._callbacks, []
        if not events:
            self._deliver(callbacks, None)
            return
        w = _InFlight(callbacks)
        try:
            result = self.store.write(events, handed=w.handed)
            self._busy_since = None
        except StoreBusy as e:
            now = time.monotonic()
            self._busy_since = self._busy_since or now
            if now - self._busy_since < BUSY_MAX:
                # the same events, and the answers waiting for them, a moment later
                self._pending = events + self._pending
                self._callbacks = callbacks + self._callbacks
                self.busy_retries += 1
                self._schedule(BUSY_RETRY)
                return
            self.failures += 1
            self._deliver(callbacks, e)
            return
        except StoreUnavailable as e:
            self._unavailable(events, callbacks, e)
            return
        except Exception as e:
            self.failures += 1
            self._deliver(callbacks, e)
            return
        if inspect.isawaitable(result):
            self._inflight.append(w)
            task = asyncio.ensure_future(result)
            task.add_done_callback(lambda t: self._written(t, events, w))
            return
        self._deliver(callbacks, None, result)

    def _schedule(self, delay: float) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(delay, self._flush)

    def _written(self, task: asyncio.Future[set[str]], events: list[Event], w: _InFlight) -> None:
        self._inflight.remove(w)  # the oldest: the writes complete in order
        callbacks = w.callbacks
        error = task.exception()
        if isinstance(error, StoreUnavailable):
            self._unavailable(events, callbacks, error)
            return
        if error is not None:
            self.failures += 1
            self._deliver(callbacks, error)
        else:
            self._requeued = 0
            if self.down is not None:
                self.down = None
                self.on_state(None)
            self._deliver(callbacks, None, task.result())
        if self._pending or self._callbacks:
            self._schedule(0.0)

    def _unavailable(
        self, events: list[Event], callbacks: list[tuple[Callback, bool]], why: StoreUnavailable
    ) -> None:
        """Keep the events for the next try (after those of the writes that failed
        before it, in order); answer what claims no lease."""
        at = self._requeued
        self._pending[at:at] = events
        self._requeued += len(events)
        if self.down is None:
            self.down = why
            self.on_state(why)
        for cb, claims in callbacks + self._callbacks:
            cb(why if claims else None)
        self._callbacks = []
        self._schedule(RETRY_UNAVAILABLE)

    async def settled(self) -> None:
        """Once every event received so far is committed: a read then sees what the
        answers before it said (most answers leave when their events are handed
        to the writer process, before the commit: see _InFlight). Raises what made
        the commit fail; not a lost claim, nor a database away (the events wait)."""
        if not self._pending and not self._inflight:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(error: BaseException | None) -> None:
            if fut.done():
                return
            if error is None or isinstance(error, (ClaimsLost, StoreUnavailable)):
                fut.set_result(None)
            else:
                fut.set_exception(error)

        self.after_commit(done, claims=True)  # claims: at the commit, not at the handover
        await fut

    async def drain(self) -> None:
        """Write what is pending (on shutdown); gives up while the database cannot be
        reached, or after BUSY_MAX seconds."""
        deadline = time.monotonic() + BUSY_MAX
        while (self._pending or self._inflight) and time.monotonic() < deadline:
            if self.down is not None:
                try:
                    await asyncio.wait_for(self._retry_once(), 1.0)
                except (StoreUnavailable, TimeoutError):
                    return
                continue
            if not self._inflight and not self._scheduled:
                self._flush()
            await asyncio.sleep(0.001)

    async def _retry_once(self) -> None:
        events, self._pending = self._pending, []
        try:
            result = self.store.write(events)
            if inspect.isawaitable(result):
                await result
        except BaseException:
            self._pending = events + self._pending
            raise
        self.down = None
        self.on_state(None)
