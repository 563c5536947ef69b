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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from ..events import DeviceEvent, Dhcp4Lease, Dhcp6Lease, Event, is_refusal
from ..safety import RateLimiter

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


# (version, migration): applied in order at start, each in its own transaction;
# PRAGMA user_version holds the version reached.
MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [
    (2, _v2), (3, _v3), (4, _v4)]  # fmt: skip
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SchemaTooNew(Exception):
    pass


class StoreBusy(Exception):
    """Another connection holds the write lock (a checkpoint): try again shortly."""


STAGES = ("seen", "url-sent", "fetching", "provisioned")
BOOT_GAP = 30.0  # seconds of quiet before a boot-start event begins a new boot


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


CHECKPOINT_INTERVAL = 1.0  # seconds: a page written often is copied once per checkpoint
PLAN_EVERY = 5  # checkpoints: the pruning is planned every 5 s
FORGET_PLAN = 5000  # devices chosen to forget per plan, at most
FORGET_CHUNK = 500  # devices forgotten per group commit
PRUNE_CHUNK = 2000  # events deleted at most per group commit, while over the budget
WRITTEN_MAX = 20_000  # device rows remembered as written (see write): about 6 MB

_FACTS = ("model", "fwver", "vendor", "ipv4", "ipv6")
_UPSERT_KEYS = ("mac", *_FACTS, *(f"g{k}" for k in _FACTS), "first", "last", "kind", "error",
                "pnp", "dhcp", "files", "stage", "changed",
                "boot", "boot_sure", "prov")  # fmt: skip
# Facts from a refusal (prefix g) only fill gaps, never overwrite: anybody can send a
# request naming a MAC, and a refused one must not move a phone's address or model.
# A new boot (:boot, the time of the event that starts it) when the batch saw it
# after a quiet spell (:boot_sure), or the row's last event is older than the gap:
# then the stage, channels, files, last error and provisioned_at start again.
_NEW_BOOT = "(:boot IS NOT NULL AND (:boot_sure OR :boot - last_seen >= :gap))"
_SET = f"""
  model = COALESCE(:model, model, :gmodel),
  fwver = COALESCE(:fwver, fwver, :gfwver),
  vendor = COALESCE(:vendor, vendor, :gvendor),
  ipv4 = COALESCE(:ipv4, ipv4, :gipv4),
  ipv6 = COALESCE(:ipv6, ipv6, :gipv6),
  last_seen = :last,
  last_event = :kind,
  last_error = CASE WHEN {_NEW_BOOT} THEN :error ELSE COALESCE(:error, last_error) END,
  pnp = CASE WHEN {_NEW_BOOT} THEN :pnp
             WHEN :pnp = 'answered' OR pnp IS NULL THEN COALESCE(:pnp, pnp) ELSE pnp END,
  dhcp = CASE WHEN {_NEW_BOOT} THEN :dhcp ELSE COALESCE(:dhcp, dhcp) END,
  files = CASE WHEN {_NEW_BOOT} THEN :files ELSE files + :files END,
  stage = CASE WHEN {_NEW_BOOT} THEN :stage ELSE max(stage, :stage) END,
  provisioned_at = CASE WHEN {_NEW_BOOT} THEN :prov ELSE COALESCE(provisioned_at, :prov) END,
  boots = boots + {_NEW_BOOT},
  boot_started = CASE WHEN {_NEW_BOOT} THEN :boot ELSE boot_started END,
  changed = COALESCE(:changed, changed)
"""
_UPSERT = f"""
INSERT INTO devices (mac, model, fwver, vendor, ipv4, ipv6, first_seen, last_seen, last_event,
                     last_error, pnp, dhcp, files, stage, changed, boot_started, boots,
                     provisioned_at)
VALUES (:mac, COALESCE(:model, :gmodel), COALESCE(:fwver, :gfwver), COALESCE(:vendor, :gvendor),
        COALESCE(:ipv4, :gipv4), COALESCE(:ipv6, :gipv6), :first, :last, :kind, :error, :pnp,
        :dhcp, :files, :stage, COALESCE(:changed, 0), COALESCE(:boot, :first), 1 + :boot_sure,
        :prov)
ON CONFLICT (mac) DO UPDATE SET {_SET}
"""
# A refused datagram updates a device already known and creates none: its source
# and MAC can be made up, so a flood of them would invent devices. A refused HTTP
# request does create one (a phone refused for auto-add off must show up; the
# connection proves its address, and refusals are stored as samples anyway).
_UPDATE = f"UPDATE devices SET {_SET} WHERE mac = :mac"

# a device the inventory may forget: not listed by the operator, holding no lease
_FORGETTABLE = ("registered = 0 AND mac NOT IN (SELECT mac FROM leases WHERE state = 'bound'"
                " AND expires > ?)")  # fmt: skip

DEVICE_COLUMNS = (
    "mac, model, fwver, vendor, ipv4, ipv6, first_seen, last_seen, last_event, last_error"
)
STATUS_COLUMNS = (
    f"{DEVICE_COLUMNS}, pnp, dhcp, files, stage, changed, boot_started, boots, provisioned_at"
)


@dataclass(frozen=True)
class Budget:
    """How much the state directory may hold (inventory.max_bytes, inventory.retention)."""

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
    def write(self, events: Sequence[Event]) -> None: ...
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
    def close(self) -> None: ...


class Reads:
    """The queries, on whichever connection they are given: the writer's for the
    command line and the start, a reader's in a thread of its own for the
    administration API (so that no read stalls the event loop)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def device(self, mac: str) -> Device | None:
        row = self.db.execute(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE mac = ?", (mac,))
        found = row.fetchone()
        return Device(*found) if found else None

    def devices(self, after: str = "", limit: int | None = None) -> list[Device]:
        rows = self.db.execute(
            f"SELECT {DEVICE_COLUMNS} FROM devices WHERE mac > ? ORDER BY mac LIMIT ?",
            (after, -1 if limit is None else limit),
        )
        return [Device(*r) for r in rows.fetchall()]

    def status(
        self, after: str = "", limit: int = -1, since: int = 0, macs: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Each device's stage per channel (the dashboard's rows): all of them by MAC
        from `after`, those changed after the cursor `since`, or those of `macs`."""
        if macs is not None:
            out: list[dict[str, Any]] = []
            for i in range(0, len(macs), 500):
                chunk = list(macs[i : i + 500])
                marks = ",".join("?" * len(chunk))
                cur = self.db.execute(
                    f"SELECT {STATUS_COLUMNS} FROM devices WHERE mac IN ({marks})", chunk
                )
                out += [_status_row(r) for r in cur.fetchall()]
            return out
        if since:
            cur = self.db.execute(
                f"SELECT {STATUS_COLUMNS} FROM devices WHERE changed > ? ORDER BY changed LIMIT ?",
                (since, limit),
            )
        else:
            cur = self.db.execute(
                f"SELECT {STATUS_COLUMNS} FROM devices WHERE mac > ? ORDER BY mac LIMIT ?",
                (after, limit),
            )
        return [_status_row(r) for r in cur.fetchall()]

    def cursor(self) -> int:
        return int(self.db.execute("SELECT COALESCE(max(changed), 0) FROM devices").fetchone()[0])

    def device_counts(self) -> dict[str, int]:
        """Devices by their last event."""
        rows = self.db.execute("SELECT COALESCE(last_event, 'none'), count(*) FROM devices "
                               "GROUP BY 1")  # fmt: skip
        return {k: n for k, n in rows.fetchall()}

    def stage_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT stage, count(*) FROM devices GROUP BY stage").fetchall()
        return {STAGES[min(stage, 3)]: n for stage, n in rows}

    def events(
        self, mac: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[dict[str, Any]]:
        """The latest events (of one device), oldest first; `before`: ids below it."""
        below = before if before is not None else 2**63 - 1
        if mac:
            cur = self.db.execute(
                "SELECT id, ts, mac, kind, data FROM events WHERE mac = ? AND id < ?"
                " ORDER BY id DESC LIMIT ?",
                (mac, below, limit),
            )
        else:
            cur = self.db.execute(
                "SELECT id, ts, mac, kind, data FROM events WHERE id < ? ORDER BY id DESC LIMIT ?",
                (below, limit),
            )
        return [
            {"id": i, "ts": ts, "mac": m, "kind": k, **orjson.loads(d)}
            for i, ts, m, k, d in reversed(cur.fetchall())
        ]

    def leases(self, after: str = "", limit: int = -1) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT ip, client_id, mac, state, expires, hostname FROM leases WHERE ip > ?"
            " ORDER BY ip LIMIT ?",
            (after, limit),
        )
        keys = ("ip", "client_id", "mac", "state", "expires", "hostname")
        return [dict(zip(keys, row, strict=True)) for row in cur.fetchall()]

    def recent_facts(self, limit: int) -> list[tuple[str, str, dict[str, Any]]]:
        """(mac, kind, data) of the latest events that told a device's facts (answered
        SUBSCRIBEs and DHCP requests, served files), newest first: what the device
        directory learns again after a restart."""
        rows = self.db.execute(
            "SELECT mac, kind, data FROM events WHERE mac IS NOT NULL AND kind IN "
            "('pnp.subscribe', 'dhcp4.answered', 'file.served') ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [(m, k, orjson.loads(d)) for m, k, d in rows]

    def leases_in_use(self, now: float) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT instr(ip, ':') > 0, count(*) FROM leases WHERE state = 'bound' AND expires > ?"
            " GROUP BY 1",
            (now,),
        ).fetchall()
        got = dict(rows)
        return {"ipv4": got.get(0, 0), "ipv6": got.get(1, 0)}

    def batches(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, name, created, macs, extra FROM batches ORDER BY id"
        ).fetchall()
        return [{"id": i, "name": n, "created": c, "macs": orjson.loads(m),
                 "extra": orjson.loads(x)} for i, n, c, m, x in rows]  # fmt: skip

    def size(self) -> dict[str, int]:
        """Bytes used in the database (free pages not counted), and of the WAL."""
        page = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return {"database": (pages - free) * page, "file": pages * page}


def _status_row(r: Sequence[Any]) -> dict[str, Any]:
    keys = ("mac", "model", "fwver", "vendor", "ipv4", "ipv6", "first_seen", "last_seen",
            "last_event", "last_error", "pnp", "dhcp", "files", "stage", "changed",
            "boot_started", "boots", "provisioned_at")  # fmt: skip
    row = dict(zip(keys, r, strict=True))
    row["stage"] = STAGES[min(row["stage"], 3)]
    return row


class SQLiteStore:
    """SQLite in WAL mode. With synchronous=NORMAL a committed transaction
    survives a kill -9 of the process (it is in the WAL, in the OS's cache);
    synchronous=FULL also survives a power cut, at one fsync per commit.

    Bounded (Budget): the event log is pruned oldest first when the database
    nears its share of `max_bytes`, or past `max_events` or `max_age`; devices
    not registered and without a bound lease are forgotten after `max_age`;
    leases are never pruned. The WAL is checkpointed every 5 s and truncated when
    it outgrows its share, while the server runs.
    """

    def __init__(
        self, path: Path, synchronous: str = "normal", background_checkpoints: bool = False,
        budget: Budget | None = None, boot_gap: float = BOOT_GAP,
    ) -> None:  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
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
        # per device: what its row says, when it was written, files served since
        self._written: dict[str, tuple[tuple[object, ...], float, int]] = {}
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
            f"SELECT mac FROM devices WHERE last_seen < ? AND {_FORGETTABLE} LIMIT ?",
            (now - b.max_age, now, keep))]  # fmt: skip
        devices = db.execute("SELECT count(*) FROM devices").fetchone()[0]
        if over and events < devices:
            # Over the budget and the events no longer dominate: devices go too, the
            # longest unchanged first, those that never fetched a file before any
            # other (a flood of spoofed SUBSCRIBEs invents those).
            for which in ("stage <= 1 AND ", ""):
                victims += [m for (m,) in db.execute(
                    f"SELECT mac FROM devices WHERE {which}{_FORGETTABLE} ORDER BY changed"
                    " LIMIT ?", (now, keep - len(victims)))]  # fmt: skip
        self.forget = (cursor, list(dict.fromkeys(victims))[:keep])

    # -- writing -----------------------------------------------------------------------

    def write(self, events: Sequence[Event]) -> None:
        rows = []
        leases = []
        devices: dict[str, dict[str, Any]] = {}
        self._changed += 1
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
                    d["mac"], d["first"], d["files"], d["stage"] = mac, ev.ts, 0, 0
                    d["create"], d["boot_sure"] = False, 0
                elif _starts_boot(ev.kind, data) and ev.ts - d["last"] >= self.boot_gap:
                    # a new boot within this batch: what came before it is the old one's
                    d.update(pnp=None, dhcp=None, files=0, stage=0, error=None, prov=None,
                             boot=None, boot_sure=1)  # fmt: skip
                if d["boot"] is None and _starts_boot(ev.kind, data):
                    d["boot"] = ev.ts
                d["last"], d["kind"] = ev.ts, ev.kind
                refused = is_refusal(ev)
                prefix = "g" if refused else ""
                for k in ("model", "fwver", "vendor"):
                    if data[k]:
                        d[prefix + k] = data[k]
                client = data["client"]
                if client:
                    d[prefix + ("ipv6" if ":" in client else "ipv4")] = client
                if ev.level != "info":
                    d["error"] = f"{ev.kind}: {data.get('reason', '')}"
                if not refused or data["channel"] in ("http", "https"):
                    d["create"] = True
                _stage_of(d, ev.kind, data)
                if d["stage"] >= 3 and d["prov"] is None:
                    d["prov"] = ev.ts
        # A device row changes when a fact about it changes (its stage included);
        # otherwise its last_seen and files count are refreshed at most once a second
        # (the event log has every event), which spares random page writes per event
        # under load: a file served rewrote the row, and the WAL grew 80 MB/s.
        upserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        prior: dict[str, tuple[tuple[object, ...], float, int] | None] = {}
        for mac, d in devices.items():
            state = (d["model"], d["fwver"], d["vendor"], d["ipv4"], d["ipv6"], d["kind"],
                     d["error"], d["pnp"], d["dhcp"], d["stage"],
                     d["gipv4"], d["gipv6"], d["boot"])  # fmt: skip
            written = prior[mac] = self._written.get(mac)
            if written is None or written[0] != state or d["last"] - written[1] >= 1.0:
                # the change cursor moves for a new fact, not for a refreshed last_seen
                fresh = written is None or written[0] != state
                d["changed"] = self._changed if fresh else None
                if d["boot"] is None:  # files not written yet belong to this boot
                    d["files"] += written[2] if written else 0
                d["gap"] = self.boot_gap
                (upserts if d.pop("create") else updates).append(d)
                self._written[mac] = (state, d["last"], 0)
            elif d["files"]:
                self._written[mac] = (written[0], written[1], written[2] + d["files"])
        if len(self._written) > WRITTEN_MAX:
            self._written.clear()  # forgetting costs one more row write per device
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            self._restore(prior)
            self._changed -= 1
            raise StoreBusy(str(e)) from None
        try:
            db.executemany("INSERT INTO events (ts, mac, kind, data) VALUES (?, ?, ?, ?)", rows)
            db.executemany(_UPSERT, upserts)
            if updates:
                db.executemany(_UPDATE, updates)
            if leases:
                db.executemany(_LEASE_UPSERT, leases)
            pruned = self._prune(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._restore(prior)
            raise
        self._oldest, self.pruned = pruned, self.pruned + max(0, pruned - self._oldest)

    def _restore(self, prior: dict[str, tuple[tuple[object, ...], float, int] | None]) -> None:
        for mac, written in prior.items():
            if written is None:
                self._written.pop(mac, None)
            else:
                self._written[mac] = written

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
                f"DELETE FROM devices WHERE mac IN ({marks}) AND changed <= ? AND {_FORGETTABLE}",
                (*chunk, cursor, time.time()),
            )
            self.forgotten += db.execute("SELECT changes()").fetchone()[0]
            self._written.clear()
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
        self._written.pop(mac, None)
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
            self._reader.db.close()
        self.db.close()


# A group commit waits while events keep arriving, loop turn after loop turn,
# for at most FLUSH_MAX seconds; it commits as soon as a turn brings nothing new.
# Closed-loop clients (an HTTP client waiting for its answer) are then answered
# at once, and a flood of datagrams is committed in batches of FLUSH_MAX.
FLUSH_MAX = 0.002
NOISE_BURST = 200
BUSY_RETRY = 0.001  # seconds between tries of a busy group commit
BUSY_MAX = 5.0  # then its answers fail (503), as for any failed commit
NOISE_RATE = 20.0


class Recorder:
    """The inventory's subscription to the event bus, with group commit.

    Events are written in one transaction (see FLUSH_MAX); callbacks registered
    with after_commit run once that transaction is committed (or failed), so an
    answer can wait for its event to be stored without a task or a future per
    request.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        # Refusals (ignored, refused, malformed requests) are stored as samples: at
        # most NOISE_BURST at once and NOISE_RATE a second of each kind and channel.
        # The metrics count every one; a flood of them fills no disk.
        self.noise = RateLimiter(NOISE_BURST, NOISE_RATE, max_sources=4096)
        self.unsampled: dict[str, int] = {}  # refusals not stored, by kind/channel
        self._pending: list[Event] = []
        self._callbacks: list[Callable[[BaseException | None], None]] = []
        self._scheduled = False
        self._since = 0.0
        self._seen = 0
        self._registered: set[str] = store.registered()
        self._busy_since: float | None = None
        self.busy_retries = 0
        self.failures = 0

    def __call__(self, event: Event) -> None:
        if is_refusal(event):
            key = f"{event.kind}/{getattr(event, 'channel', '')}"
            if not self.noise.allow(key, time.monotonic()):
                self.unsampled[key] = self.unsampled.get(key, 0) + 1
                return
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
                self._busy_since = None
            except StoreBusy as e:
                now = time.monotonic()
                self._busy_since = self._busy_since or now
                if now - self._busy_since < BUSY_MAX:
                    # the same events, and the answers waiting for them, a moment later
                    self._pending = events + self._pending
                    self._callbacks = callbacks + self._callbacks
                    self.busy_retries += 1
                    if not self._scheduled:
                        self._scheduled = True
                        asyncio.get_running_loop().call_later(BUSY_RETRY, self._flush)
                    return
                self.failures += 1
                error = e
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
        deadline = time.monotonic() + BUSY_MAX
        while self._pending or self._callbacks:
            events, callbacks = self._pending, self._callbacks
            self._pending, self._callbacks = [], []
            try:
                if events:
                    self.store.write(events)
            except StoreBusy:
                self._pending, self._callbacks = events, callbacks
                if time.monotonic() > deadline:
                    raise
                time.sleep(BUSY_RETRY)
                continue
            for cb in callbacks:
                cb(None)
