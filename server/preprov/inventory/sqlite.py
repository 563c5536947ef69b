"""The embedded inventory: SQLite in WAL mode, in the state directory.

With synchronous=NORMAL a committed transaction survives a kill -9 of the process
(it is in the WAL, in the OS's cache); synchronous=FULL also survives a power cut,
at one fsync per commit. The writer runs on the event loop (a group commit takes
microseconds); the API reads in a thread of its own; a maintenance thread
checkpoints the WAL and plans the pruning.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..events import Event
from .queries import (
    CLAIM_LEASE,
    FORGETTABLE,
    INSERT_EVENT,
    UPDATE_DEVICE,
    UPSERT_DEVICE,
    Device,
    Reads,
)
from .store import BOOT_GAP, Budget, DeviceRows, SchemaTooNew, StoreBusy, _stage_of

T = TypeVar("T")

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


def _v2(db: sqlite3.Connection) -> None:
    """Each device's stage per channel, kept as events are written (the dashboard
    and the batches read it instead of replaying the event log), and a change
    counter for asking what changed since."""
    columns = [
        "pnp TEXT",
        "dhcp TEXT",
        "files INTEGER NOT NULL DEFAULT 0",
        "stage INTEGER NOT NULL DEFAULT 0",
        "changed INTEGER NOT NULL DEFAULT 0",
    ]
    for column in columns:
        db.execute(f"ALTER TABLE devices ADD COLUMN {column}")
    db.execute("CREATE INDEX devices_changed ON devices (changed)")
    # devices of an older inventory: their stage from their events, once
    per: dict[str, dict[str, Any]] = {}
    for mac, kind, data in db.execute("SELECT mac, kind, data FROM events WHERE mac IS NOT NULL"):
        d = per.setdefault(mac, {"pnp": None, "dhcp": None, "files": 0, "stage": 0})
        _stage_of(d, kind, orjson.loads(data))
    db.executemany(
        "UPDATE devices SET pnp = :pnp, dhcp = :dhcp, files = :files, stage = :stage,"
        " changed = 1 WHERE mac = :mac",
        [{"mac": mac, **d} for mac, d in per.items()],
    )


def _v3(db: sqlite3.Connection) -> None:
    """Boots: when the device's current boot started, how many it has had, and when
    this boot reached its own file. Devices of an older inventory: one boot, from
    their first sighting."""
    for column in ("boot_started REAL", "boots INTEGER NOT NULL DEFAULT 1",
                   "provisioned_at REAL"):  # fmt: skip
        db.execute(f"ALTER TABLE devices ADD COLUMN {column}")
    db.execute("UPDATE devices SET boot_started = first_seen,"
               " provisioned_at = CASE WHEN stage >= 3 THEN last_seen END")  # fmt: skip


def _v4(db: sqlite3.Connection) -> None:
    """A manifest's other columns (serial, model, ...) per MAC, shown in its report."""
    db.execute("ALTER TABLE batches ADD COLUMN extra TEXT NOT NULL DEFAULT '{}'")


def _v5(db: sqlite3.Connection) -> None:
    """The server that wrote an event, last heard a device, bound a lease (several
    servers share a PostgreSQL inventory; one SQLite inventory has one name)."""
    for table in ("events", "devices", "leases"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN server TEXT")


# (version, migration): applied in order at start, each in its own transaction;
# PRAGMA user_version holds the version reached.
MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [
    (2, _v2), (3, _v3), (4, _v4), (5, _v5)]  # fmt: skip
SCHEMA_VERSION = MIGRATIONS[-1][0]

CHECKPOINT_INTERVAL = 1.0  # seconds: a page written often is copied once per checkpoint
PLAN_EVERY = 5  # checkpoints: the pruning is planned every 5 s
FORGET_PLAN = 5000  # devices chosen to forget per plan, at most
FORGET_CHUNK = 500  # devices forgotten per group commit
PRUNE_CHUNK = 2000  # events deleted at most per group commit, while over the budget
_UPSERT = UPSERT_DEVICE.format(changed=":changed")
_CLAIM_MANY = CLAIM_LEASE.replace("RETURNING ip", "")
_UPDATE = UPDATE_DEVICE.format(changed=":changed")


class SQLiteStore:
    """SQLite in WAL mode (see the module's text).

    Bounded (Budget): the event log is pruned oldest first when the database
    nears its share of `max_bytes`, or past `max_events` or `max_age`; devices
    not registered and without a bound lease are forgotten after `max_age`;
    leases are never pruned. The WAL is checkpointed every 5 s and truncated when
    it outgrows its share, while the server runs.
    """

    def __init__(
        self, path: Path, synchronous: str = "normal", background_checkpoints: bool = False,
        budget: Budget | None = None, boot_gap: float = BOOT_GAP, server: str = "",
    ) -> None:  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.server = server
        self.boot_gap = boot_gap
        self.budget = budget or Budget()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        # No busy wait on the writer: it runs on the event loop, and SQLite's busy
        # handler sleeps in steps of up to 100 ms (measured: a phone's p99 went from
        # 7 to 100 ms while the WAL was truncated). A busy write raises StoreBusy and
        # the Recorder tries again a millisecond later, the loop free meanwhile.
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the hot index pages stay in memory
        self.db.execute(f"PRAGMA journal_size_limit={self.budget.wal_limit}")
        self._migrate()
        self.db.execute("PRAGMA busy_timeout=0")
        self.reads = Reads(self.db)
        self.rows = DeviceRows(server, boot_gap)
        self.shared = False  # other servers may write to this inventory
        # one SQLite inventory, one server: nobody else commits
        self.on_leases: Callable[[list[dict[str, Any]]], None] = lambda leases: None
        self.on_change: Callable[[str], None] = lambda server: None
        self.on_registered: Callable[[str], None] = lambda mac: None
        self.on_told: Callable[[list[tuple[str, str, dict[str, Any]]]], None] = lambda t: None
        self._changed = self.reads.cursor()
        first = self.db.execute("SELECT min(id) FROM events").fetchone()[0]
        self._oldest = int(first or 0)  # no event below this id
        self.prune_below = 0  # set by the maintenance thread
        self.forget: tuple[int, list[str]] = (0, [])  # the change cursor, devices to forget
        self.forgotten = 0
        self.pruned = 0  # events pruned since start
        self._reader: Reads | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        if background_checkpoints:
            # A checkpoint copies the WAL into the database and fsyncs both; done
            # by the writer it stalls the event loop for milliseconds (measured:
            # half the server's time under load went to waiting on it). A thread
            # with its own connection does it instead, every CHECKPOINT_INTERVAL.
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(
                target=self._maintenance_loop, name="preprov-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _migrate(self) -> None:
        db = self.db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise SchemaTooNew(
                f"{self.path}: inventory schema version {version} is newer than this preprov's"
                f" ({SCHEMA_VERSION}): it was written by a later release; use that release"
            )
        if version == 0:
            fresh = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
            db.executescript(SCHEMA)
            version = 1
            if fresh:  # a new inventory: the whole schema at once
                db.execute("BEGIN")
                for _, step in MIGRATIONS:
                    step(db)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
                return
        for target, step in MIGRATIONS:
            if version < target:
                db.execute("BEGIN")
                try:
                    step(db)
                    db.execute(f"PRAGMA user_version={target}")
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                version = target

    # -- maintenance (its own thread and connection) -----------------------------------

    def _maintenance_loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        wal = Path(f"{self.path}-wal")
        turns = 0
        try:
            while not self._closing.wait(CHECKPOINT_INTERVAL):
                turns += 1
                with contextlib.suppress(sqlite3.Error, OSError):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if wal.exists() and wal.stat().st_size > self.budget.wal_limit:
                        self._truncate_wal(db)
                    if turns % PLAN_EVERY == 0:
                        self.plan_pruning(db, time.time())
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    @staticmethod
    def _truncate_wal(db: sqlite3.Connection) -> None:
        """Under steady writes a PASSIVE checkpoint never catches up with the writer,
        so the WAL is never reset and grows without end (1 GB in the issue's flood).
        A TRUNCATE checkpoint resets it, but holds the writer off while it copies
        what is left: PASSIVE passes first bring that down to what a few
        milliseconds of writes add (measured: the last pass ~3 ms; a TRUNCATE on
        its own held the writer 100-160 ms)."""
        for _ in range(4):
            started = time.monotonic()
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if time.monotonic() - started < 0.005:
                break
        db.execute("PRAGMA busy_timeout=1000")
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.execute("PRAGMA busy_timeout=0")

    def plan_pruning(self, db: sqlite3.Connection, now: float) -> None:
        """Decide what the writer prunes (prune_below, forget): reads only, in this
        thread, so that the writer deletes by key and never scans on the loop."""
        b = self.budget
        lo, hi = db.execute("SELECT min(id), max(id) FROM events").fetchone()
        target = 0
        events = 0 if lo is None else hi - lo + 1
        if lo is not None:
            if events > b.max_events:
                target = hi - b.max_events + 1
            young = db.execute("SELECT id FROM events WHERE ts >= ? LIMIT 1", (now - b.max_age,))
            first_young = young.fetchone()
            target = max(target, first_young[0] if first_young else hi + 1)
        over = Reads(db).size()["database"] > b.db_limit * 0.9
        if over and lo is not None:
            target = max(target, lo + max(events // 5, 1))  # the oldest fifth
        self.prune_below = max(self.prune_below, target)
        cursor = Reads(db).cursor()
        keep = FORGET_PLAN
        victims = [m for (m,) in db.execute(
            f"SELECT mac FROM devices WHERE last_seen < ? AND {FORGETTABLE} LIMIT ?",
            (now - b.max_age, now, keep))]  # fmt: skip
        devices = db.execute("SELECT count(*) FROM devices").fetchone()[0]
        if over and events < devices:
            # Over the budget and the events no longer dominate: devices go too, the
            # longest unchanged first, those that never fetched a file before any
            # other (a flood of spoofed SUBSCRIBEs invents those).
            for which in ("stage <= 1 AND ", ""):
                victims += [m for (m,) in db.execute(
                    f"SELECT mac FROM devices WHERE {which}{FORGETTABLE} ORDER BY changed"
                    " LIMIT ?", (now, keep - len(victims)))]  # fmt: skip
        self.forget = (cursor, list(dict.fromkeys(victims))[:keep])

    # -- writing -----------------------------------------------------------------------

    async def open(self) -> None:
        pass

    def write(self, events: Sequence[Event]) -> set[str]:
        """One group commit; the addresses whose claims failed (none here: one server
        decides every lease of its file)."""
        self._changed += 1
        batch = self.rows.prepare(events, self._changed)
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            self.rows.restore(batch)
            self._changed -= 1
            raise StoreBusy(str(e)) from None
        lost: set[str] = set()
        try:
            if batch.leases:
                # all claimed (the one server's own leases: always, but for a second
                # process on the same file): one statement for them all
                before = db.total_changes
                db.executemany(_CLAIM_MANY, batch.leases)
                if db.total_changes - before != len(batch.leases):
                    ips = [x[0] for x in batch.leases]
                    marks = ",".join("?" * len(ips))
                    held = dict(db.execute(
                        f"SELECT ip, client_id FROM leases WHERE ip IN ({marks})", ips))
                    lost = {x[0] for x in batch.leases if held.get(x[0]) != x[1]}
                    batch.lost(lost)
            db.executemany(INSERT_EVENT, batch.events)
            db.executemany(_UPSERT, batch.upserts)
            if batch.updates:
                db.executemany(_UPDATE, batch.updates)
            pruned = self._prune(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self.rows.restore(batch)
            raise
        self._oldest, self.pruned = pruned, self.pruned + max(0, pruned - self._oldest)
        return lost

    def _prune(self, db: sqlite3.Connection) -> int:
        """Part of the pruning the maintenance thread planned, inside the group commit
        (no second writer, so the event loop never waits on a lock for it). Returns
        the id below which no event is left."""
        below = min(self.prune_below, self._oldest + PRUNE_CHUNK)
        if below > self._oldest:
            db.execute("DELETE FROM events WHERE id < ?", (below,))
        cursor, victims = self.forget
        if victims:
            chunk, rest = victims[:FORGET_CHUNK], victims[FORGET_CHUNK:]
            self.forget = (cursor, rest)
            marks = ",".join("?" * len(chunk))
            # spared if a new fact came since the plan, or it is registered or leased now
            db.execute(
                f"DELETE FROM devices WHERE mac IN ({marks}) AND changed <= ? AND {FORGETTABLE}",
                (*chunk, cursor, time.time()),
            )
            self.forgotten += db.execute("SELECT changes()").fetchone()[0]
            self.rows.written.clear()
        return max(below, self._oldest)

    def _execute(self, sql: str, args: Sequence[Any]) -> sqlite3.Cursor:
        """One statement outside the group commit, retried while the database is busy
        (at most 5 s): rare, operator-driven writes."""
        deadline = time.monotonic() + 5.0
        while True:
            try:
                return self.db.execute(sql, args)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)

    def add_batch(
        self, name: str, macs: list[str], now: float, extra: dict[str, dict[str, str]] | None = None
    ) -> int:
        cur = self._execute(
            "INSERT INTO batches (name, created, macs, extra) VALUES (?, ?, ?, ?)",
            (name, now, orjson.dumps(macs).decode(), orjson.dumps(extra or {}).decode()),
        )
        return int(cur.lastrowid or 0)

    def rename_batch(self, bid: int, name: str) -> bool:
        return self._execute("UPDATE batches SET name = ? WHERE id = ?", (name, bid)).rowcount > 0

    def delete_batch(self, bid: int) -> bool:
        return self._execute("DELETE FROM batches WHERE id = ?", (bid,)).rowcount > 0

    def forget_device(self, mac: str) -> bool:
        """The device and its events, as if never seen (its leases stay: the address is
        still held). It shows up again when it next sends something."""
        self.rows.written.pop(mac, None)
        self._execute("DELETE FROM events WHERE mac = ?", (mac,))
        return self._execute("DELETE FROM devices WHERE mac = ?", (mac,)).rowcount > 0

    def add_device(self, mac: str, now: float) -> None:
        self._changed += 1
        self._execute(
            "INSERT INTO devices (mac, first_seen, last_seen, registered, changed)"
            " VALUES (?, ?, ?, 1, ?) ON CONFLICT (mac) DO UPDATE SET registered = 1",
            (mac, now, now, self._changed),
        )

    def registered(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT mac FROM devices WHERE registered = 1")}

    # -- reading -----------------------------------------------------------------------

    def leases(self) -> list[dict[str, Any]]:
        return self.reads.leases()

    def batches(self) -> list[dict[str, Any]]:
        return self.reads.batches()

    def device(self, mac: str) -> Device | None:
        return self.reads.device(mac)

    def devices(self) -> list[Device]:
        return self.reads.devices()

    def events(self, mac: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return self.reads.events(mac, limit)

    async def read(self, query: Callable[[Reads], T]) -> T:
        """Run a query on the reader connection, in the reader's thread: the
        administration API's reads never hold the event loop."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="preprov-reader")
            self._reader = Reads(sqlite3.connect(self.path, check_same_thread=False))
        reader = self._reader
        assert reader is not None
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: query(reader)
        )

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            assert self._reader is not None
            self._reader.db.close()  # type: ignore[attr-defined]
        self.db.close()

    async def aclose(self) -> None:
        self.close()
