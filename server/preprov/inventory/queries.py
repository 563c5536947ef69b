"""The inventory's SQL, one text for both backends, and the queries the dashboard,
the API and the command line read with (`Reads`).

The statements are written in the SQL that SQLite and PostgreSQL share: table-
qualified columns in upserts (PostgreSQL finds a bare column of the target
ambiguous there), CASE instead of max() of two values, booleans compared with
1. Parameters are SQLite's `?` and `:name`; `for_postgres` turns them into
psycopg's `%s` and `%(name)s`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

STAGES = ("seen", "url-sent", "fetching", "provisioned")


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
    server: str | None = None  # the server that last heard from it


DEVICE_COLUMNS = (
    "mac, model, fwver, vendor, ipv4, ipv6, first_seen, last_seen, last_event, last_error, server"
)
STATUS_COLUMNS = (
    f"{DEVICE_COLUMNS}, pnp, dhcp, files, stage, changed, boot_started, boots, provisioned_at"
)
STATUS_KEYS = tuple(c.strip() for c in STATUS_COLUMNS.split(","))
LEASE_KEYS = ("ip", "client_id", "mac", "state", "expires", "hostname", "server")
ALL = 2**62  # LIMIT for "no limit": SQLite's -1 is no number PostgreSQL takes

# -- writing ------------------------------------------------------------------------

# Facts from a refusal (prefix g) only fill gaps, never overwrite: anybody can send a
# request naming a MAC, and a refused one must not move a phone's address or model.
# A new boot (:boot, the time of the event that starts it) when the batch saw it
# after a quiet spell (:boot_sure), or the row's last event is older than the gap:
# then the stage, channels, files, last error and provisioned_at start again.
# (the casts: PostgreSQL cannot tell a NULL parameter's type from IS NULL alone)
_BOOT = "CAST(:boot AS DOUBLE PRECISION)"
_NEW_BOOT = f"({_BOOT} IS NOT NULL AND (:boot_sure = 1 OR {_BOOT} - devices.last_seen >= :gap))"
# `{changed}`: the change cursor's new value when a fact changed (the backend's own)
SET_DEVICE = f"""
  model = COALESCE(:model, devices.model, :gmodel),
  fwver = COALESCE(:fwver, devices.fwver, :gfwver),
  vendor = COALESCE(:vendor, devices.vendor, :gvendor),
  ipv4 = COALESCE(:ipv4, devices.ipv4, :gipv4),
  ipv6 = COALESCE(:ipv6, devices.ipv6, :gipv6),
  last_seen = :last,
  last_event = :kind,
  server = :server,
  last_error = CASE WHEN {_NEW_BOOT} THEN :error ELSE COALESCE(:error, devices.last_error) END,
  pnp = CASE WHEN {_NEW_BOOT} THEN :pnp
             WHEN :pnp = 'answered' OR devices.pnp IS NULL THEN COALESCE(:pnp, devices.pnp)
             ELSE devices.pnp END,
  dhcp = CASE WHEN {_NEW_BOOT} THEN :dhcp ELSE COALESCE(:dhcp, devices.dhcp) END,
  files = CASE WHEN {_NEW_BOOT} THEN :files ELSE devices.files + :files END,
  stage = CASE WHEN {_NEW_BOOT} OR :stage > devices.stage THEN :stage ELSE devices.stage END,
  provisioned_at = CASE WHEN {_NEW_BOOT} THEN :prov
                        ELSE COALESCE(devices.provisioned_at, :prov) END,
  boots = devices.boots + CASE WHEN {_NEW_BOOT} THEN 1 ELSE 0 END,
  boot_started = CASE WHEN {_NEW_BOOT} THEN {_BOOT} ELSE devices.boot_started END,
  changed = CASE WHEN CAST(:changed AS BIGINT) IS NULL THEN devices.changed ELSE {{changed}} END
"""
UPSERT_DEVICE = f"""
INSERT INTO devices (mac, model, fwver, vendor, ipv4, ipv6, first_seen, last_seen, last_event,
                     last_error, pnp, dhcp, files, stage, changed, boot_started, boots,
                     provisioned_at, server)
VALUES (:mac, COALESCE(:model, :gmodel), COALESCE(:fwver, :gfwver), COALESCE(:vendor, :gvendor),
        COALESCE(:ipv4, :gipv4), COALESCE(:ipv6, :gipv6), :first, :last, :kind, :error, :pnp,
        :dhcp, :files, :stage,
        CASE WHEN CAST(:changed AS BIGINT) IS NULL THEN 0 ELSE {{changed}} END,
        COALESCE(:boot, :first), 1 + :boot_sure, :prov, :server)
ON CONFLICT (mac) DO UPDATE SET {SET_DEVICE}
"""
# A refused datagram updates a device already known and creates none: its source
# and MAC can be made up, so a flood of them would invent devices. A refused HTTP
# request does create one (a phone refused for auto-add off must show up; the
# connection proves its address, and refusals are stored as samples anyway).
UPDATE_DEVICE = f"UPDATE devices SET {SET_DEVICE} WHERE mac = :mac"

INSERT_EVENT = "INSERT INTO events (ts, mac, kind, data, server) VALUES (?, ?, ?, ?, ?)"

# A lease change is a claim on the address: it is taken when the address is free,
# held by the same client, or its lease is over. Two servers on one database that
# offered the same address to two clients: the first REQUEST committed wins, the
# other finds no row returned and answers with a NAK (docs/design.md §5).
CLAIM_LEASE = """
INSERT INTO leases (ip, client_id, mac, state, expires, hostname, updated, server)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (ip) DO UPDATE SET client_id = excluded.client_id, mac = excluded.mac,
  state = excluded.state, expires = excluded.expires, hostname = excluded.hostname,
  updated = excluded.updated, server = excluded.server
WHERE leases.client_id = excluded.client_id OR leases.state <> 'bound'
  OR leases.expires <= excluded.updated
RETURNING ip
"""

# a device the inventory may forget: not listed by the operator, holding no lease
FORGETTABLE = ("registered = 0 AND mac NOT IN (SELECT mac FROM leases WHERE state = 'bound'"
               " AND expires > ?)")  # fmt: skip

_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z_0-9]*)")


def numbered(sql: str) -> tuple[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]]:
    """SQLite's `:name` parameters as numbered ones (`?1`), and what makes a row's tuple
    of them from its dict. sqlite3 binds a dict by asking SQLite each parameter's
    name and looking it up; a tuple is bound by position (the writer's CPU per DHCPv4
    exchange, 26.7 -> 23.9 us)."""
    keys: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in keys:
            keys.append(m.group(1))
        return f"?{keys.index(m.group(1)) + 1}"

    numbered_sql = _NAMED.sub(number, sql)
    get = operator.itemgetter(*keys)
    return numbered_sql, (get if len(keys) > 1 else lambda d: (get(d),))


def for_postgres(sql: str) -> str:
    """SQLite's parameters as psycopg's: `?` -> `%s`, `:name` -> `%(name)s`."""
    return _NAMED.sub(r"%(\1)s", sql.replace("?", "%s"))


class Connection(Protocol):
    def execute(self, sql: str, args: Sequence[Any] = ...) -> Any: ...


class Reads:
    """The queries, on whichever connection they are given: the writer's for the
    command line and the start, a reader's in a thread of its own for the
    administration API (so that no read stalls the event loop). `postgres`: the
    connection is psycopg's."""

    def __init__(self, db: Connection, postgres: bool = False) -> None:
        self.db = db
        self.postgres = postgres

    def q(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.db.execute(for_postgres(sql) if self.postgres else sql, args)

    def device(self, mac: str) -> Device | None:
        found = self.q(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE mac = ?", (mac,)).fetchone()
        return Device(*found) if found else None

    def devices(self, after: str = "", limit: int | None = None) -> list[Device]:
        rows = self.q(
            f"SELECT {DEVICE_COLUMNS} FROM devices WHERE mac > ? ORDER BY mac LIMIT ?",
            (after, ALL if limit is None else limit),
        )
        return [Device(*r) for r in rows.fetchall()]

    def status(
        self, after: str = "", limit: int = -1, since: int = 0, macs: Sequence[str] | None = None,
        server: str | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Each device's stage per channel (the dashboard's rows): all of them by MAC
        from `after`, those changed after the cursor `since`, or those of `macs`;
        `server`: only those a given server last heard from."""
        limit = ALL if limit < 0 else limit
        if macs is not None:
            out: list[dict[str, Any]] = []
            for i in range(0, len(macs), 500):
                chunk = list(macs[i : i + 500])
                marks = ",".join("?" * len(chunk))
                cur = self.q(f"SELECT {STATUS_COLUMNS} FROM devices WHERE mac IN ({marks})", chunk)
                out += [_status_row(r) for r in cur.fetchall()]
            return out
        only = " AND server = ?" if server else ""
        extra = (server,) if server else ()
        if since:
            cur = self.q(
                f"SELECT {STATUS_COLUMNS} FROM devices WHERE changed > ?{only}"
                " ORDER BY changed LIMIT ?",
                (since, *extra, limit),
            )
        else:
            cur = self.q(
                f"SELECT {STATUS_COLUMNS} FROM devices WHERE mac > ?{only} ORDER BY mac LIMIT ?",
                (after, *extra, limit),
            )
        return [_status_row(r) for r in cur.fetchall()]

    def cursor(self) -> int:
        return int(self.q("SELECT COALESCE(max(changed), 0) FROM devices").fetchone()[0])

    def server_counts(self) -> dict[str, int]:
        """Devices by the server that last heard from them (a shared inventory)."""
        rows = self.q("SELECT COALESCE(server, ''), count(*) FROM devices GROUP BY 1")
        return {k: n for k, n in rows.fetchall()}

    def device_counts(self) -> dict[str, int]:
        """Devices by their last event."""
        rows = self.q("SELECT COALESCE(last_event, 'none'), count(*) FROM devices GROUP BY 1")
        return {k: n for k, n in rows.fetchall()}

    def stage_counts(self) -> dict[str, int]:
        rows = self.q("SELECT stage, count(*) FROM devices GROUP BY stage").fetchall()
        return {STAGES[min(stage, 3)]: n for stage, n in rows}

    def events(
        self, mac: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[dict[str, Any]]:
        """The latest events (of one device), oldest first; `before`: ids below it."""
        below = before if before is not None else 2**63 - 1
        if mac:
            cur = self.q(
                "SELECT id, ts, mac, kind, data, server FROM events WHERE mac = ? AND id < ?"
                " ORDER BY id DESC LIMIT ?",
                (mac, below, limit),
            )
        else:
            cur = self.q(
                "SELECT id, ts, mac, kind, data, server FROM events WHERE id < ?"
                " ORDER BY id DESC LIMIT ?",
                (below, limit),
            )
        return [
            {"id": i, "ts": ts, "mac": m, "kind": k, **orjson.loads(d), "server": s}
            for i, ts, m, k, d, s in reversed(cur.fetchall())
        ]

    def leases(self, after: str = "", limit: int = -1) -> list[dict[str, Any]]:
        cur = self.q(
            f"SELECT {', '.join(LEASE_KEYS)} FROM leases WHERE ip > ? ORDER BY ip LIMIT ?",
            (after, ALL if limit < 0 else limit),
        )
        return [dict(zip(LEASE_KEYS, row, strict=True)) for row in cur.fetchall()]

    def recent_facts(self, limit: int) -> list[tuple[str, str, dict[str, Any]]]:
        """(mac, kind, data) of the latest events that told a device's facts (answered
        SUBSCRIBEs and DHCP requests, served files), newest first: what the device
        directory learns again after a restart."""
        rows = self.q(
            "SELECT mac, kind, data FROM events WHERE mac IS NOT NULL AND kind IN "
            "('pnp.subscribe', 'dhcp4.answered', 'file.served') ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [(m, k, orjson.loads(d)) for m, k, d in rows]

    def told_since(
        self, after: int, me: str, limit: int
    ) -> list[tuple[int, str, str, dict[str, Any]]]:
        """(id, mac, kind, data) of the events after `after` that told a device's facts,
        written by servers other than `me`, oldest first (a shared inventory)."""
        rows = self.q(
            "SELECT id, mac, kind, data FROM events WHERE id > ? AND mac IS NOT NULL AND kind IN "
            "('pnp.subscribe', 'dhcp4.answered', 'file.served') AND server <> ? ORDER BY id"
            " LIMIT ?",
            (after, me, limit),
        ).fetchall()
        return [(i, m, k, orjson.loads(d)) for i, m, k, d in rows]

    def leases_in_use(self, now: float) -> dict[str, int]:
        rows = self.q(
            "SELECT CASE WHEN ip LIKE ? THEN 1 ELSE 0 END, count(*) FROM leases"
            " WHERE state = 'bound' AND expires > ? GROUP BY 1",
            ("%:%", now),
        ).fetchall()
        got = dict(rows)
        return {"ipv4": got.get(0, 0), "ipv6": got.get(1, 0)}

    def batches(self) -> list[dict[str, Any]]:
        rows = self.q("SELECT id, name, created, macs, extra FROM batches ORDER BY id").fetchall()
        return [{"id": i, "name": n, "created": c, "macs": orjson.loads(m),
                 "extra": orjson.loads(x)} for i, n, c, m, x in rows]  # fmt: skip

    def size(self) -> dict[str, int]:
        """Bytes used in the database (free pages not counted), and its file's."""
        if self.postgres:
            n = int(self.q("SELECT pg_database_size(current_database())").fetchone()[0])
            return {"database": n, "file": n}
        page = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return {"database": (pages - free) * page, "file": pages * page}


def _status_row(r: Sequence[Any]) -> dict[str, Any]:
    row = dict(zip(STATUS_KEYS, r, strict=True))
    row["stage"] = STAGES[min(row["stage"], 3)]
    return row
