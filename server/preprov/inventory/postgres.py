"""The shared inventory: PostgreSQL, for several servers on one database
(`inventory.database: postgresql://user:password@host:5432/db`).

The driver is psycopg 3: its asyncio connection writes the group commits
without holding the event loop, and its plain connection serves the reads the
API makes in a thread (the same `Reads` as SQLite's) and the command line.

- Leases are claimed in the database (queries.CLAIM_LEASE): an address bound to
  one client is not taken by another server's REQUEST; that server's answer
  becomes a NAK (ClaimsLost).
- Every group commit takes a transaction-scoped advisory lock, then the next
  value of the change sequence: commits are ordered, so a dashboard asking what
  changed since a cursor misses no row another server committed later.
- Each commit is announced with NOTIFY on the channel `preprov`: the leases it
  bound (the other servers put them in their lease tables, so they do not offer
  a held address) and that rows changed (their dashboards refresh).
- When the database cannot be reached a write raises StoreUnavailable (the
  Recorder keeps the events and answers no lease); the next write reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import orjson
import psycopg

from ..events import Event
from .queries import (
    CLAIM_LEASE,
    FORGETTABLE,
    UPDATE_DEVICE,
    UPSERT_DEVICE,
    Device,
    Reads,
    for_postgres,
)
from .store import BOOT_GAP, Batch, Budget, DeviceRows, SchemaTooNew, StoreUnavailable, records

T = TypeVar("T")

# psycopg's parameters; `changed` is the sequence value this transaction took
_CHANGED = "currval('device_changes')"
_UPSERT = for_postgres(UPSERT_DEVICE.format(changed=_CHANGED))
_UPDATE = for_postgres(UPDATE_DEVICE.format(changed=_CHANGED))
_EVENTS = ("INSERT INTO events (ts, mac, kind, data, server) SELECT * FROM"
           " unnest(%b::float8[], %b::text[], %b::text[], %b::text[], %b::text[])")
_CLAIM = for_postgres(CLAIM_LEASE)
_LOCK = 0x70726570  # "prep": the advisory lock that orders the group commits
CHANNEL = "preprov"
NOTIFY_MAX = 7000  # bytes of a NOTIFY payload (PostgreSQL takes up to 8000)

_V1 = """
CREATE TABLE devices (
    mac TEXT PRIMARY KEY, model TEXT, fwver TEXT, vendor TEXT, ipv4 TEXT, ipv6 TEXT,
    first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
    last_event TEXT, last_error TEXT, registered INTEGER NOT NULL DEFAULT 0,
    pnp TEXT, dhcp TEXT, files INTEGER NOT NULL DEFAULT 0, stage INTEGER NOT NULL DEFAULT 0,
    changed BIGINT NOT NULL DEFAULT 0, boot_started DOUBLE PRECISION,
    boots INTEGER NOT NULL DEFAULT 1, provisioned_at DOUBLE PRECISION, server TEXT
);
CREATE INDEX devices_changed ON devices (changed);
CREATE INDEX devices_last_seen ON devices (last_seen);
CREATE SEQUENCE device_changes;
CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ts DOUBLE PRECISION NOT NULL,
    mac TEXT, kind TEXT NOT NULL, data TEXT NOT NULL, server TEXT
);
CREATE INDEX events_mac ON events (mac, id);
CREATE INDEX events_ts ON events (ts);
CREATE TABLE batches (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL, macs TEXT NOT NULL, extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE leases (
    ip TEXT PRIMARY KEY, client_id TEXT NOT NULL, mac TEXT NOT NULL, state TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL, hostname TEXT, updated DOUBLE PRECISION NOT NULL,
    server TEXT
);
CREATE INDEX leases_updated ON leases (updated);
CREATE INDEX leases_mac ON leases (mac);
"""

# (version, SQL): applied in order at start, each in its own transaction, under an
# advisory lock (two servers starting at once migrate once); preprov_schema holds
# the version reached.
MIGRATIONS: list[tuple[int, str]] = [(1, _V1)]
SCHEMA_VERSION = MIGRATIONS[-1][0]

PRUNE_EVERY = 5.0  # seconds between two looks at the retention
TELL_EVERY = 0.2  # seconds: the other servers' new facts are read at most this often
TELL_MAX = 20_000  # events read at once
PRUNE_CHUNK = 5000  # events deleted per statement


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    head, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    cred, _, host = rest.rpartition("@")
    return f"{head}{sep}{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url


def unavailable(url: str, e: BaseException) -> StoreUnavailable:
    why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return StoreUnavailable(f"PostgreSQL at {redact(url)} cannot be reached: {why}")


class PostgresStore:
    """The Store on PostgreSQL (see the module's text)."""

    def __init__(
        self, url: str, server: str = "", budget: Budget | None = None,
        boot_gap: float = BOOT_GAP, background: bool = False,
    ) -> None:  # fmt: skip
        self.url = url
        self.server = server
        self.budget = budget or Budget()
        self.rows = DeviceRows(server, boot_gap)
        self.shared = True  # other servers may write to this inventory
        self.pipeline = 1  # one transaction in flight on the writer's connection
        try:
            self.sync = psycopg.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.Error as e:
            raise unavailable(url, e) from None
        self._lock = threading.Lock()  # the plain connection: the loop's and the CLI's
        self._migrate()
        self.reads = Reads(self.sync, postgres=True)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._reader: Reads | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = threading.Event()
        self._pruner: threading.Thread | None = None
        self.pruned = 0
        self.forgotten = 0
        # told of what other servers committed: their leases, that rows changed
        self.on_leases: Callable[[list[dict[str, Any]]], None] = lambda leases: None
        self.on_change: Callable[[str], None] = lambda server: None
        self.on_registered: Callable[[str], None] = lambda mac: None
        self.on_told: Callable[[list[tuple[str, str, dict[str, Any]]]], None] = lambda told: None
        self._told_after = 0  # the id of the last event of another server read for on_told
        self._telling: asyncio.Future[None] | None = None
        if background:
            self._pruner = threading.Thread(target=self._prune_loop, name="preprov-prune",
                                            daemon=True)  # fmt: skip
            self._pruner.start()

    # -- schema ------------------------------------------------------------------------

    def _migrate(self) -> None:
        db = self.sync
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS preprov_schema (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM preprov_schema").fetchone()
            version = int(row[0] or 0) if row else 0
            if version > SCHEMA_VERSION:
                db.close()
                raise SchemaTooNew(
                    f"{redact(self.url)}: inventory schema version {version} is newer than this"
                    f" preprov's ({SCHEMA_VERSION}): it was written by a later release; use that"
                    " release"
                )
            for target, sql in MIGRATIONS:
                if version < target:
                    db.execute(sql)
                    db.execute("DELETE FROM preprov_schema")
                    db.execute("INSERT INTO preprov_schema VALUES (%s)", (target,))
                    version = target

    # -- writing -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the writer and the listener (at start: a database that cannot be
        reached then refuses the start)."""
        try:
            await self._connection()
        except psycopg.Error as e:
            raise unavailable(self.url, e) from None
        row = self._run(lambda db: db.execute("SELECT COALESCE(max(id), 0) FROM events").fetchone())
        self._told_after = int(row[0]) if row else 0  # what the start learnt (Server._remember)
        self._listener = asyncio.ensure_future(self._listen())

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=2
            )
        return self._conn

    def write(
        self, events: Sequence[Event], handed: Callable[[], None] | None = None
    ) -> Awaitable[set[str]]:
        """The batch is prepared now, in the order the events came; its transaction is
        awaited (the Recorder keeps one in flight)."""
        recs, datas = records(events)
        return self._write(self.rows.prepare(recs, 1, datas))

    async def _write(self, batch: Batch) -> set[str]:
        try:
            conn = await self._connection()
            async with conn.transaction():
                cur = conn.cursor()
                await cur.execute("SELECT pg_advisory_xact_lock(%s), nextval('device_changes')",
                                  (_LOCK,))  # fmt: skip
                won: set[str] = set()
                if batch.leases:
                    await cur.executemany(_CLAIM, batch.leases, returning=True)
                    while True:
                        won.update(r[0] for r in await cur.fetchall())
                        if not cur.nextset():
                            break
                    lost = {lease[0] for lease in batch.leases} - won
                    if lost:
                        batch.lost(lost)
                # the events in one statement: a row each was the most of the statements
                # a commit sent, and the database's one backend ran them one by one
                await cur.execute(_EVENTS, [list(c) for c in zip(*batch.events, strict=True)])
                if batch.upserts:
                    await cur.executemany(_UPSERT, batch.upserts)
                if batch.updates:
                    await cur.executemany(_UPDATE, batch.updates)
                for payload in self._announce(batch, won):
                    await cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        except psycopg.OperationalError as e:
            self.rows.restore(batch)
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
            self._conn = None
            raise unavailable(self.url, e) from None
        except BaseException:
            self.rows.restore(batch)
            raise
        return {lease[0] for lease in batch.leases} - won

    def _announce(self, batch: Batch, won: set[str]) -> list[str]:
        """The NOTIFY payloads of a commit: this server's name, the leases it holds now."""
        leases = [list(x[:5]) for x in batch.leases if x[0] in won]
        out: list[str] = []
        chunk: list[list[Any]] = []
        size = 0
        for lease in leases:
            text = orjson.dumps(lease)
            if chunk and size + len(text) > NOTIFY_MAX:
                out.append(orjson.dumps({"server": self.server, "leases": chunk}).decode())
                chunk, size = [], 0
            chunk.append(lease)
            size += len(text) + 1
        out.append(orjson.dumps({"server": self.server, "leases": chunk}).decode())
        return out

    async def _listen(self) -> None:
        """What the other servers commit: their leases into this server's tables, a nudge
        to the dashboards. Reconnects by itself; meanwhile the claims still decide."""
        while not self._closing.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                             connect_timeout=2)  # fmt: skip
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    async for note in conn.notifies():
                        msg = orjson.loads(note.payload)
                        if msg.get("server") == self.server:
                            continue
                        keys = ("ip", "client_id", "mac", "state", "expires")
                        leases = [dict(zip(keys, x, strict=True)) for x in msg.get("leases", [])]
                        if leases:
                            self.on_leases(leases)
                        for mac in msg.get("registered", []):
                            self.on_registered(str(mac))
                        self.on_change(str(msg.get("server")))
                        self._tell_soon()
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(1.0)

    def _tell_soon(self) -> None:
        """What the other servers' devices told (option 60, relay, model): read from their
        new events in the reader thread, at most every TELL_EVERY seconds, and handed
        to `on_told`, so that this server's rules decide on them too."""
        if self._telling is None or self._telling.done():
            self._telling = asyncio.ensure_future(self._tell())

    async def _tell(self) -> None:
        await asyncio.sleep(TELL_EVERY)
        while not self._closing.is_set():
            query = partial(Reads.told_since, after=self._told_after, me=self.server,
                            limit=TELL_MAX)  # fmt: skip
            try:
                rows = await self.read(query)
            except StoreUnavailable:
                return  # the next notification tries again, from the same event
            if rows:
                self._told_after = rows[-1][0]
                self.on_told([(m, k, d) for _, m, k, d in rows])
            if len(rows) < TELL_MAX:
                return

    # -- operator's writes and the plain connection ------------------------------------

    def _twice(self, call: Callable[[], T], drop: Callable[[], None]) -> T:
        """`call`, tried again once on a fresh connection when the database dropped the
        connection (`drop` forgets it); StoreUnavailable when it fails again."""
        try:
            return call()
        except psycopg.OperationalError:
            drop()
        try:
            return call()
        except psycopg.OperationalError as e:
            drop()
            raise unavailable(self.url, e) from None

    def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """On the plain connection, reconnected once if it broke."""

        def call() -> T:
            if self.sync.closed:
                self.sync = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                self.reads.db = self.sync
            return fn(self.sync)

        def drop() -> None:
            with contextlib.suppress(Exception):
                self.sync.close()

        with self._lock:
            return self._twice(call, drop)

    def add_batch(
        self, name: str, macs: list[str], now: float, extra: dict[str, dict[str, str]] | None = None
    ) -> int:
        row = self._run(lambda db: db.execute(
            "INSERT INTO batches (name, created, macs, extra) VALUES (%s, %s, %s, %s) RETURNING id",
            (name, now, orjson.dumps(macs).decode(), orjson.dumps(extra or {}).decode()),
        ).fetchone())  # fmt: skip
        return int(row[0]) if row else 0

    def rename_batch(self, bid: int, name: str) -> bool:
        cur = self._run(lambda db: db.execute("UPDATE batches SET name = %s WHERE id = %s",
                                              (name, bid)))  # fmt: skip
        return bool(cur.rowcount)

    def delete_batch(self, bid: int) -> bool:
        cur = self._run(lambda db: db.execute("DELETE FROM batches WHERE id = %s", (bid,)))
        return bool(cur.rowcount)

    def forget_device(self, mac: str) -> bool:
        self.rows.written.pop(mac, None)

        def forget(db: psycopg.Connection[Any]) -> int:
            with db.transaction():
                db.execute("DELETE FROM events WHERE mac = %s", (mac,))
                return db.execute("DELETE FROM devices WHERE mac = %s", (mac,)).rowcount

        return self._run(forget) > 0

    def add_device(self, mac: str, now: float) -> None:
        """Registered (served with auto-add off): the other servers are told at once."""

        def add(db: psycopg.Connection[Any]) -> None:
            with db.transaction():
                db.execute(
                    "INSERT INTO devices (mac, first_seen, last_seen, registered, changed, server)"
                    " VALUES (%s, %s, %s, 1, nextval('device_changes'), %s)"
                    " ON CONFLICT (mac) DO UPDATE SET registered = 1,"
                    " changed = nextval('device_changes')",
                    (mac, now, now, self.server),
                )
                note = orjson.dumps({"server": self.server, "registered": [mac]}).decode()
                db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, note))

        self._run(add)

    def registered(self) -> set[str]:
        rows = self._run(lambda db: db.execute(
            "SELECT mac FROM devices WHERE registered = 1").fetchall())  # fmt: skip
        return {r[0] for r in rows}

    def leases(self) -> list[dict[str, Any]]:
        return self._run(lambda db: self.reads.leases())

    def batches(self) -> list[dict[str, Any]]:
        return self._run(lambda db: self.reads.batches())

    def device(self, mac: str) -> Device | None:
        return self._run(lambda db: self.reads.device(mac))

    def devices(self) -> list[Device]:
        return self._run(lambda db: self.reads.devices())

    def events(self, mac: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return self._run(lambda db: self.reads.events(mac, limit))

    async def read(self, query: Callable[[Reads], T]) -> T:
        """Run a query on the reader connection, in the reader's thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="preprov-reader")

        def call() -> T:
            if self._reader is None:
                db = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
                self._reader = Reads(db, postgres=True)
            return query(self._reader)

        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._twice, call, self._close_reader
        )

    def _close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                self._reader.db.close()  # type: ignore[attr-defined]
            self._reader = None

    # -- retention (its own thread and connection) -------------------------------------

    def _prune_loop(self) -> None:
        while not self._closing.wait(PRUNE_EVERY):
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as db:
                    self.prune(db, time.time())
            except psycopg.Error:
                continue  # the database is away: the next look

    def prune(self, db: psycopg.Connection[Any], now: float) -> None:
        """Events past inventory.retention (count, age), oldest first, in chunks; devices
        unseen for max_age that are neither registered nor holding a lease."""
        b = self.budget
        lo, hi = db.execute("SELECT min(id), max(id) FROM events").fetchone() or (None, None)
        if lo is not None and hi is not None:
            below = hi - b.max_events + 1 if hi - lo + 1 > b.max_events else lo
            young = db.execute("SELECT min(id) FROM events WHERE ts >= %s",
                               (now - b.max_age,)).fetchone()  # fmt: skip
            below = max(below, young[0] if young and young[0] is not None else hi + 1)
            start = lo
            while start < below and not self._closing.is_set():
                end = min(below, start + PRUNE_CHUNK)
                self.pruned += db.execute("DELETE FROM events WHERE id >= %s AND id < %s",
                                          (start, end)).rowcount  # fmt: skip
                start = end
        self.forgotten += db.execute(
            f"DELETE FROM devices WHERE last_seen < %s AND {for_postgres(FORGETTABLE)}",
            (now - b.max_age, now),
        ).rowcount

    # -- closing -----------------------------------------------------------------------

    async def aclose(self) -> None:
        self._closing.set()
        if self._telling is not None:
            self._telling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._telling
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self.close()

    def close(self) -> None:
        self._closing.set()
        if self._pruner is not None:
            self._pruner.join(timeout=5)
        if self._executor is not None:
            self._executor.submit(self._close_reader).result()
            self._executor.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self.sync.close()
