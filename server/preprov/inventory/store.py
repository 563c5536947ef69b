"""The device inventory: device records and an append-only event log per device.

`Store` is the narrow interface a backend implements (SQLite here; a
PostgreSQL backend for several servers sharing one inventory would implement
the same five methods). `Recorder` subscribes to the event bus and writes
events in group commits: all events emitted during one turn of the event loop
go into one transaction, and `settled()` resolves once they are committed, so
a handler can wait for its event to be stored before it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..events import DeviceEvent, Dhcp4Lease, Dhcp6Lease, Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    mac         TEXT PRIMARY KEY,
    model       TEXT,
    fwver       TEXT,
    vendor      TEXT,
    ipv4        TEXT,
    ipv6        TEXT,
    first_seen  REAL NOT NULL,
    last_seen   REAL NOT NULL,
    last_event  TEXT,
    last_error  TEXT,
    registered  INTEGER NOT NULL DEFAULT 0  -- 1: listed by the operator, served with auto-add off
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY,  -- rowid: append-only, so it only grows
    ts      REAL NOT NULL,
    mac     TEXT,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_mac ON events (mac, id);
CREATE TABLE IF NOT EXISTS batches (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL,
    created REAL NOT NULL,
    macs    TEXT NOT NULL   -- JSON list of the expected MACs
);
CREATE TABLE IF NOT EXISTS leases (
    ip        TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    mac       TEXT NOT NULL,
    state     TEXT NOT NULL,   -- bound | released | declined | expired
    expires   REAL NOT NULL,
    hostname  TEXT,
    updated   REAL NOT NULL
);
"""

_LEASE_UPSERT = """
INSERT INTO leases (ip, client_id, mac, state, expires, hostname, updated)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (ip) DO UPDATE SET client_id = excluded.client_id, mac = excluded.mac,
  state = excluded.state, expires = excluded.expires, hostname = excluded.hostname,
  updated = excluded.updated
"""


@dataclass(frozen=True)
class Device:
    mac: str
    model: str | None
    fwver: str | None
    vendor: str | None
    ipv4: str | None
    ipv6: str | None
    first_seen: float
    last_seen: float
    last_event: str | None
    last_error: str | None


CHECKPOINT_INTERVAL = 5.0  # seconds: a page written often is copied once per checkpoint

_UPSERT_KEYS = ("mac", "model", "fwver", "vendor", "ipv4", "ipv6", "first", "last", "kind", "error")
_UPSERT = """
INSERT INTO devices (mac, model, fwver, vendor, ipv4, ipv6, first_seen, last_seen, last_event,
                     last_error)
VALUES (:mac, :model, :fwver, :vendor, :ipv4, :ipv6, :first, :last, :kind, :error)
ON CONFLICT (mac) DO UPDATE SET
  model = COALESCE(excluded.model, model),
  fwver = COALESCE(excluded.fwver, fwver),
  vendor = COALESCE(excluded.vendor, vendor),
  ipv4 = COALESCE(excluded.ipv4, ipv4),
  ipv6 = COALESCE(excluded.ipv6, ipv6),
  last_seen = excluded.last_seen,
  last_event = excluded.last_event,
  last_error = COALESCE(excluded.last_error, last_error)
"""

DEVICE_COLUMNS = (
    "mac, model, fwver, vendor, ipv4, ipv6, first_seen, last_seen, last_event, last_error"
)


class Store(Protocol):
    def write(self, events: Sequence[Event]) -> None: ...
    def leases(self) -> list[dict[str, Any]]: ...
    def add_batch(self, name: str, macs: list[str], now: float) -> int: ...
    def batches(self) -> list[dict[str, Any]]: ...
    def add_device(self, mac: str, now: float) -> None: ...
    def registered(self) -> set[str]: ...
    def device(self, mac: str) -> Device | None: ...
    def devices(self) -> list[Device]: ...
    def events(self, mac: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class SQLiteStore:
    """SQLite in WAL mode. With synchronous=NORMAL a committed transaction
    survives a kill -9 of the process (it is in the WAL, in the OS's cache);
    synchronous=FULL also survives a power cut, at one fsync per commit."""

    def __init__(
        self, path: Path, synchronous: str = "normal", background_checkpoints: bool = False
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the hot index pages stay in memory
        self.db.executescript(SCHEMA)
        self._written: dict[str, tuple[tuple[object, ...], float]] = {}
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        if background_checkpoints:
            # A checkpoint copies the WAL into the database and fsyncs both; done
            # by the writer it stalls the event loop for milliseconds (measured:
            # half the server's time under load went to waiting on it). A thread
            # with its own connection does it instead, once a second.
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="preprov-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            while not self._closing.wait(CHECKPOINT_INTERVAL):
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    def write(self, events: Sequence[Event]) -> None:
        rows = []
        leases = []
        devices: dict[str, dict[str, Any]] = {}
        for ev in events:
            data = ev.fields()
            if isinstance(ev, (Dhcp4Lease, Dhcp6Lease)):
                leases.append(
                    (ev.ip, ev.client_id, ev.mac, ev.state, ev.expires, ev.hostname, ev.ts)
                )
            mac = data.get("mac") if isinstance(ev, DeviceEvent) else None
            rows.append((ev.ts, mac, ev.kind, orjson.dumps(data, default=str).decode()))
            if mac:
                d = devices.get(mac)
                if d is None:
                    d = devices[mac] = dict.fromkeys(_UPSERT_KEYS)
                    d["mac"], d["first"] = mac, ev.ts
                d["last"], d["kind"] = ev.ts, ev.kind
                for k in ("model", "fwver", "vendor"):
                    if data[k]:
                        d[k] = data[k]
                client = data["client"]
                if client:
                    d["ipv6" if ":" in client else "ipv4"] = client
                if ev.level != "info":
                    d["error"] = f"{ev.kind}: {data.get('reason', '')}"
        # A device row changes when a fact about it changes; otherwise its
        # last_seen is refreshed at most once a second (the event log has every
        # event), which spares a random page write per event under load.
        upserts = []
        for mac, d in devices.items():
            state = (d["model"], d["fwver"], d["vendor"], d["ipv4"], d["ipv6"], d["kind"],
                     d["error"])  # fmt: skip
            written = self._written.get(mac)
            if written is None or written[0] != state or d["last"] - written[1] >= 1.0:
                upserts.append(d)
                self._written[mac] = (state, d["last"])
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO events (ts, mac, kind, data) VALUES (?, ?, ?, ?)", rows)
            db.executemany(_UPSERT, upserts)
            if leases:
                db.executemany(_LEASE_UPSERT, leases)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            for d in upserts:
                self._written.pop(d["mac"], None)
            raise

    def leases(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT ip, client_id, mac, state, expires, hostname FROM leases")
        keys = ("ip", "client_id", "mac", "state", "expires", "hostname")
        return [dict(zip(keys, row, strict=True)) for row in cur.fetchall()]

    def add_batch(self, name: str, macs: list[str], now: float) -> int:
        cur = self.db.execute(
            "INSERT INTO batches (name, created, macs) VALUES (?, ?, ?)",
            (name, now, orjson.dumps(macs).decode()),
        )
        return int(cur.lastrowid or 0)

    def batches(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT id, name, created, macs FROM batches ORDER BY id").fetchall()
        return [{"id": i, "name": n, "created": c, "macs": orjson.loads(m)} for i, n, c, m in rows]

    def add_device(self, mac: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO devices (mac, first_seen, last_seen, registered) VALUES (?, ?, ?, 1)"
            " ON CONFLICT (mac) DO UPDATE SET registered = 1",
            (mac, now, now),
        )

    def registered(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT mac FROM devices WHERE registered = 1")}

    def device(self, mac: str) -> Device | None:
        row = self.db.execute(
            f"SELECT {DEVICE_COLUMNS} FROM devices WHERE mac = ?",
            (mac,),
        ).fetchone()
        return Device(*row) if row else None

    def devices(self) -> list[Device]:
        rows = self.db.execute(f"SELECT {DEVICE_COLUMNS} FROM devices ORDER BY mac").fetchall()
        return [Device(*r) for r in rows]

    def events(self, mac: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if mac:
            cur = self.db.execute(
                "SELECT id, ts, mac, kind, data FROM events WHERE mac = ? ORDER BY id DESC LIMIT ?",
                (mac, limit),
            )
        else:
            cur = self.db.execute(
                "SELECT id, ts, mac, kind, data FROM events ORDER BY id DESC LIMIT ?", (limit,)
            )
        return [
            {"id": i, "ts": ts, "mac": m, "kind": k, **orjson.loads(d)}
            for i, ts, m, k, d in reversed(cur.fetchall())
        ]

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        self.db.close()


# A group commit waits while events keep arriving, loop turn after loop turn,
# for at most FLUSH_MAX seconds; it commits as soon as a turn brings nothing new.
# Closed-loop clients (an HTTP client waiting for its answer) are then answered
# at once, and a flood of datagrams is committed in batches of FLUSH_MAX.
FLUSH_MAX = 0.002


class Recorder:
    """The inventory's subscription to the event bus, with group commit.

    Events are written in one transaction (see FLUSH_MAX); callbacks registered
    with after_commit run once that transaction is committed (or failed), so an
    answer can wait for its event to be stored without a task or a future per
    request.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[Event] = []
        self._callbacks: list[Callable[[BaseException | None], None]] = []
        self._scheduled = False
        self._since = 0.0
        self._seen = 0
        self._registered: set[str] = store.registered()
        self.failures = 0

    def __call__(self, event: Event) -> None:
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

    def registered(self, mac: str) -> bool:
        """Listed by the operator: served even when auto-add is off."""
        return mac in self._registered

    def register(self, mac: str) -> None:
        if mac not in self._registered:
            self.store.add_device(mac, time.time())
            self._registered.add(mac)

    def after_commit(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call back once every event received so far is committed (at once if none waits)."""
        if not self._pending:
            callback(None)
        else:
            self._callbacks.append(callback)

    def _flush(self) -> None:
        events, self._pending = self._pending, []
        callbacks, self._callbacks = self._callbacks, []
        self._scheduled = False
        error: BaseException | None = None
        if events:
            try:
                self.store.write(events)
            except Exception as e:
                self.failures += 1
                error = e
        for cb in callbacks:
            cb(error)

    async def settled(self) -> None:
        if not self._pending:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(error: BaseException | None) -> None:
            if not fut.done():
                fut.set_exception(error) if error else fut.set_result(None)

        self.after_commit(done)
        await fut

    def flush_now(self) -> None:
        """Write what is pending at once (on shutdown)."""
        if self._pending or self._callbacks:
            self._flush()
