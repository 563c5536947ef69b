"""The embedded inventory: SQLite in WAL mode, in the state directory.

With synchronous=NORMAL a committed transaction survives a kill -9 of the process
(it is in the WAL, in the OS's cache); synchronous=FULL also survives a power cut,
at one fsync per commit. The server's group commits run in a process of their own
(writer.py: SQLite's work there was a fifth of the event loop's time under load),
with a maintenance thread that checkpoints the WAL and plans the pruning; the API
reads in a thread of the server; the CLI and the tests commit in their own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

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
    numbered,
)
from .store import (
    BOOT_GAP,
    Batch,
    Budget,
    DeviceRows,
    Record,
    SchemaTooNew,
    StoreBusy,
    _stage_of,
    records,
)
from .writer import WriterProcess

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

# seconds: a page written often is copied once per checkpoint; short enough that the
# WAL a cycle writes stays within its share (Budget.wal_limit) at 40,000 events/s
CHECKPOINT_INTERVAL = 0.1
PLAN_EVERY = 50  # checkpoints: the pruning is planned every 5 s
FORGET_PLAN = 5000  # devices chosen to forget per plan, at most
FORGET_CHUNK = 500  # devices forgotten per group commit
PRUNE_CHUNK = 2000  # events deleted at most per group commit, while over the budget
_UPSERT, _upsert_args = numbered(UPSERT_DEVICE.format(changed=":changed"))
_CLAIM_MANY = CLAIM_LEASE.replace("RETURNING ip", "")
_UPDATE, _update_args = numbered(UPDATE_DEVICE.format(changed=":changed"))
NEXT_CHANGED = "SELECT coalesce(max(changed), 0) + 1 FROM devices"


# sqlite3 binds str, int and float as they are, but looks up an adapter for None
# and, finding none, tries two attribute lookups before binding NULL: 0.18 us per
# None, and a device row has a dozen. A registered adapter is one dict hit and a C
# call returning None, bound NULL all the same (0.03 us): the writer's CPU per
# DHCPv4 exchange, 24.7 -> 22.4 us (the store's rows alone, in process).
sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))


def connect(path: Path, synchronous: str, wal_limit: int) -> sqlite3.Connection:
    """A connection that writes: WAL, the configured durability, a big page cache."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the hot index pages stay in memory
    db.execute(f"PRAGMA journal_size_limit={wal_limit}")
    return db


class Committer:
    """Writes group commits on one connection, and prunes within them what its
    maintenance (`plan_pruning`, `maintain`) planned. The server runs it in the
    writer process (writer.py); the CLI and the tests in their own."""

    def __init__(self, db: sqlite3.Connection, path: Path, budget: Budget) -> None:
        self.db = db
        self.path = path
        self.budget = budget
        first = db.execute("SELECT min(id) FROM events").fetchone()[0]
        self._oldest = int(first or 0)  # no event below this id
        self.prune_below = 0  # set by the maintenance
        self.forget: tuple[int, list[str]] = (0, [])  # the change cursor, devices to forget
        self.forgotten = 0
        self.pruned = 0  # events pruned since start
        self.checkpoint_due = False  # set by the maintenance: finish_checkpoint

    def write(
        self, rows: DeviceRows, recs: Sequence[Record], datas: Sequence[dict[str, Any]] = ()
    ) -> set[str]:
        """The records in one transaction, their device rows as `rows` says: the
        addresses whose claims failed (another process on the same file bound them
        first)."""
        batch = rows.prepare(recs, 1, datas)  # 1: the commit takes the cursor's value
        try:
            lost, forgot = self.commit(batch)
        except BaseException:
            rows.restore(batch)
            raise
        if forgot:
            rows.written.clear()
        if self.checkpoint_due:
            self.finish_checkpoint()
        return lost

    def commit(self, batch: Batch) -> tuple[set[str], int]:
        """One transaction: the addresses whose claims failed (another process on the
        same file bound them first), and how many devices it forgot."""
        leases, upserts, updates = batch.leases, batch.upserts, batch.updates
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise StoreBusy(str(e)) from None
        lost: set[str] = set()
        try:
            if leases:
                # all claimed (the one server's own leases: always, but for a second
                # process on the same file): one statement for them all
                before = db.total_changes
                db.executemany(_CLAIM_MANY, leases)
                if db.total_changes - before != len(leases):
                    ips = [x[0] for x in leases]
                    marks = ",".join("?" * len(ips))
                    held = dict(
                        db.execute(f"SELECT ip, client_id FROM leases WHERE ip IN ({marks})", ips)
                    )
                    lost = {x[0] for x in leases if held.get(x[0]) != x[1]}
                    batch.lost(lost)
            db.executemany(INSERT_EVENT, batch.events)
            if any(d["changed"] is not None for d in (*upserts, *updates)):
                # the change cursor's next value, taken inside the write lock: in
                # commit order, whichever connection commits
                (changed,) = db.execute(NEXT_CHANGED).fetchone()
                for d in (*upserts, *updates):
                    if d["changed"] is not None:
                        d["changed"] = changed
            db.executemany(_UPSERT, map(_upsert_args, upserts))
            if updates:
                db.executemany(_UPDATE, map(_update_args, updates))
            pruned, forgot = self._prune(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._oldest, self.pruned = pruned, self.pruned + max(0, pruned - self._oldest)
        self.forgotten += forgot
        return lost, forgot

    def _prune(self, db: sqlite3.Connection) -> tuple[int, int]:
        """Part of the pruning the maintenance planned, inside the group commit (no
        second writer, so a commit never waits on a lock for it). Returns the id
        below which no event is left, and how many devices were forgotten."""
        below = min(self.prune_below, self._oldest + PRUNE_CHUNK)
        if below > self._oldest:
            db.execute("DELETE FROM events WHERE id < ?", (below,))
        cursor, victims = self.forget
        forgot = 0
        if victims:
            chunk, rest = victims[:FORGET_CHUNK], victims[FORGET_CHUNK:]
            self.forget = (cursor, rest)
            marks = ",".join("?" * len(chunk))
            # spared if a new fact came since the plan, or it is registered or leased now
            db.execute(
                f"DELETE FROM devices WHERE mac IN ({marks}) AND changed <= ? AND {FORGETTABLE}",
                (*chunk, cursor, time.time()),
            )
            forgot = db.execute("SELECT changes()").fetchone()[0]
        return max(below, self._oldest), forgot

    # -- maintenance (its own thread and connection) -----------------------------------

    def maintain(self, closing: threading.Event) -> None:
        """Until `closing` is set: checkpoint the WAL every CHECKPOINT_INTERVAL (copying
        while the writer goes on committing), then leave the last frames to the writer
        (checkpoint_due, finish_checkpoint); plan the pruning every PLAN_EVERY turns."""
        db = sqlite3.connect(self.path, isolation_level=None)
        turns = 0
        try:
            while not closing.wait(CHECKPOINT_INTERVAL):
                turns += 1
                with contextlib.suppress(sqlite3.Error, OSError):
                    # passes until one is short: what is left for the writer is then
                    # what a few milliseconds of commits add
                    for _ in range(4):
                        started = time.monotonic()
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                        if time.monotonic() - started < 0.005:
                            break
                    self.checkpoint_due = True
                    if turns % PLAN_EVERY == 0:
                        self.plan_pruning(db, time.time())
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    def finish_checkpoint(self) -> None:
        """The end of the maintenance's checkpoint, on the writer's own connection
        between two commits. Under steady writes a checkpoint from another connection
        never completes (the writer appends while it copies), so the WAL would never
        start again from its beginning and would grow without end (1 GB in the issue's
        flood); a TRUNCATE from there waited for the writer and then held it off, with
        SQLite's busy sleeps, 60-145 ms each time (the HTTP benchmark's p99). Here
        nothing is appended meanwhile: it copies the few milliseconds' frames left,
        completes, and the next commit starts the WAL again (kept at most at
        journal_size_limit); a WAL already past its share is truncated. A reader
        holding older pages stops it short without waiting: tried again next turn."""
        self.checkpoint_due = False
        db = self.db
        # Called after a commit: whatever fails here (busy, the WAL's size unreadable)
        # is left to the next turn, never reported as that commit's failure (the server
        # would then write its events again).
        with contextlib.suppress(sqlite3.Error, OSError):
            wal = Path(f"{self.path}-wal")
            outgrown = wal.exists() and wal.stat().st_size > self.budget.wal_limit
            mode = "TRUNCATE" if outgrown else "PASSIVE"
            (patience,) = db.execute("PRAGMA busy_timeout").fetchone()
            db.execute("PRAGMA busy_timeout=0")
            try:
                db.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
            finally:
                db.execute(f"PRAGMA busy_timeout={int(patience)}")

    def plan_pruning(self, db: sqlite3.Connection, now: float) -> None:
        """Decide what the writer prunes (prune_below, forget): reads only, in the
        maintenance's thread, so that the commits delete by key and never scan."""
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


class SQLiteStore:
    """SQLite in WAL mode (see the module's text).

    Bounded (Budget): the event log is pruned oldest first when the database
    nears its share of `max_bytes`, or past `max_events` or `max_age`; devices
    not registered and without a bound lease are forgotten after `max_age`;
    leases are never pruned. With `writer_process` (the server) the group commits
    and the maintenance (the WAL checkpointed every 0.1 s, the writer finishing each
    checkpoint between two commits, truncated when it outgrows its share; the
    pruning planned) run in the writer process; without
    it (the CLI, the tests) the commits run in the caller and nothing is
    maintained in the background.
    """

    def __init__(
        self, path: Path, synchronous: str = "normal", writer_process: bool = False,
        budget: Budget | None = None, boot_gap: float = BOOT_GAP, server: str = "",
    ) -> None:  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.server = server
        self.boot_gap = boot_gap
        self.budget = budget or Budget()
        self.db = connect(path, synchronous, self.budget.wal_limit)
        self.db.execute("PRAGMA busy_timeout=5000")
        self._migrate()
        # No busy wait on this connection: it runs on the event loop, and SQLite's
        # busy handler sleeps in steps of up to 100 ms. A busy group commit raises
        # StoreBusy and the Recorder tries again a millisecond later, the loop free
        # meanwhile; the rare operator writes retry by themselves (_execute).
        self.db.execute("PRAGMA busy_timeout=0")
        self.reads = Reads(self.db)
        self.rows = DeviceRows(server, boot_gap)
        self.shared = False  # other servers may write to this inventory
        # group commits in flight to the writer process, which commits whatever has
        # arrived in one transaction. Measured: 64 let HTTP reach 40,000 requests/s
        # instead of 37,000, but the DHCP commits then lagged past the shedding point
        # (dhcp4_kea unpinned: 4,300 exchanges/s at 5,000 offered instead of 5,000)
        self.pipeline = 16
        # one SQLite inventory, one server: nobody else commits
        self.on_leases: Callable[[list[dict[str, Any]]], None] = lambda leases: None
        self.on_change: Callable[[str], None] = lambda server: None
        self.on_registered: Callable[[str], None] = lambda mac: None
        self.on_told: Callable[[list[tuple[str, str, dict[str, Any]]]], None] = lambda t: None
        self.committer = Committer(self.db, path, self.budget)
        self.writer = (WriterProcess(path, synchronous, self.budget, server, boot_gap)
                       if writer_process else None)  # fmt: skip
        if self.writer is not None:
            # the writer process's maintenance checkpoints; an operator's write on this
            # connection would otherwise copy the WAL on the event loop
            self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._reader: Reads | None = None
        self._executor: ThreadPoolExecutor | None = None

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

    @property
    def pruned(self) -> int:
        """Events pruned since start."""
        return (self.writer or self.committer).pruned

    @property
    def forgotten(self) -> int:
        """Devices forgotten since start."""
        return (self.writer or self.committer).forgotten

    def plan_pruning(self, db: sqlite3.Connection, now: float) -> None:
        self.committer.plan_pruning(db, now)

    # -- writing -----------------------------------------------------------------------

    async def open(self) -> None:
        if self.writer is not None:
            await self.writer.start()

    def write(
        self, events: Sequence[Event], handed: Callable[[], None] | None = None
    ) -> set[str] | Awaitable[set[str]]:
        """One group commit; the addresses whose claims failed (none but with a second
        process on the same file: one server decides every lease of its file).
        `handed` is called once the writer process has the records (not without one)."""
        recs, datas = records(events)
        if self.writer is not None:
            return self.writer.write(recs, handed)
        return self.committer.write(self.rows, recs, datas)

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
        if self.writer is not None:
            self.writer.forget(mac)
        self.rows.written.pop(mac, None)
        self._execute("DELETE FROM events WHERE mac = ?", (mac,))
        return self._execute("DELETE FROM devices WHERE mac = ?", (mac,)).rowcount > 0

    def add_device(self, mac: str, now: float) -> None:
        self._execute(
            "INSERT INTO devices (mac, first_seen, last_seen, registered, changed)"
            f" VALUES (?, ?, ?, 1, ({NEXT_CHANGED}))"
            " ON CONFLICT (mac) DO UPDATE SET registered = 1",
            (mac, now, now),
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
        if self.writer is not None:
            self.writer.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            assert self._reader is not None
            self._reader.db.close()  # type: ignore[attr-defined]
        self.db.close()

    async def aclose(self) -> None:
        if self.writer is not None:
            await self.writer.aclose()
        self.close()
