"""The live dashboard: each device's stage per channel, a timeline per device,
batches of expected MACs (a shipping manifest) and their report.

The stages are kept by the inventory as it stores the events (one source of
truth, docs/design.md §4); the page is told of new events by server-sent events and
then asks for the devices that changed since its cursor.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..events import DeviceEvent, Event
from ..macros import try_mac

PAGE = Path(__file__).with_name("dashboard.html")


def iso(ts: float | None) -> str:
    """ISO 8601 in UTC, to the second: what exports and reports show."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


REPORT_COLUMNS = ("mac", "stage", "reason", "model", "fwver", "ipv4", "ipv6", "pnp", "dhcp",
                  "files", "boots", "boot_started", "provisioned_at", "last_error",
                  "server")  # fmt: skip


class ManifestError(ValueError):
    pass


def parse_manifest(text: str) -> tuple[list[str], dict[str, dict[str, str]], list[str]]:
    """The MACs of a shipping manifest, its other columns per MAC, and the MACs listed
    more than once (kept once). CSV (comma, semicolon or tab) with a `mac` column
    anywhere, the other columns kept (serial, model, ...); or a MAC per line; or JSON: a
    list of MACs, or of objects with a "mac" key. Any MAC notation."""
    rows: list[dict[str, str]] = []
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except ValueError as e:
            raise ManifestError(f"not valid JSON: {e}") from None
        items = data.get("macs", data.get("devices")) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ManifestError('JSON: expected a list of MACs, or of objects with "mac"')
        for item in items:
            if isinstance(item, dict) and "mac" in item:
                rows.append({str(k): "" if v is None else str(v) for k, v in item.items()})
            elif isinstance(item, str):
                rows.append({"mac": item})
            else:
                raise ManifestError(f'JSON: {str(item)[:40]!r} is neither a MAC nor has "mac"')
    else:
        lines = [ln for ln in stripped.splitlines() if ln.strip()]
        delimiter = max(",;\t", key=lambda d: lines[0].count(d)) if lines else ","
        table = list(csv.reader(lines, delimiter=delimiter))
        header = [h.strip().lower() for h in table[0]] if table else []
        if "mac" in header:
            names = [h.strip() for h in table[0]]
            rows = [{names[i].lower() if i == header.index("mac") else names[i]: c.strip()
                     for i, c in enumerate(r) if i < len(names)} for r in table[1:]]  # fmt: skip
        else:  # no header: a MAC per line, in the first column that holds one
            for r in table:
                cells = [c.strip() for c in r]
                rows.append({"mac": next((c for c in cells if try_mac(c)), cells[0])})
    macs: list[str] = []
    extra: dict[str, dict[str, str]] = {}
    bad, dup = [], []
    for row in rows:
        cell = row.get("mac", "").strip()
        if not cell:
            continue
        mac = try_mac(cell)
        if mac is None:
            bad.append(cell)
        elif mac in extra:
            dup.append(mac)
        else:
            macs.append(mac)
            extra[mac] = {k: v for k, v in row.items() if k != "mac" and v}
    if bad:
        raise ManifestError(f"not MACs: {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else ""))
    if not macs:
        raise ManifestError("no MAC in the manifest")
    return macs, {m: x for m, x in extra.items() if x}, dup


def batch_report(
    name: str, expected: list[str], status: list[dict[str, Any]], created: float = 0.0,
    extra: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Each expected MAC on its current boot. A phone counts as provisioned for the batch
    only on a boot that began after the batch was created: one provisioned before
    has not been through this staging yet."""
    seen = {s["mac"]: s for s in status}
    rows: list[dict[str, Any]] = []
    for mac in expected:
        s = seen.get(mac)
        if s is None:
            rows.append(dict.fromkeys(REPORT_COLUMNS, "") | {
                "mac": mac, "stage": "not seen", "reason": "no packet from this MAC"})  # fmt: skip
            continue
        stage, reason = s["stage"], s["last_error"] or ""
        if (s["boot_started"] or 0) < created:
            stage = "not booted"
            reason = f"no boot since the batch was created (last boot {iso(s['boot_started'])}," \
                     f" {s['stage']})"  # fmt: skip
        elif stage != "provisioned" and not reason:
            reason = f"stopped at {stage}"
        row = {k: s.get(k) for k in REPORT_COLUMNS} | {"stage": stage, "reason": reason}
        row["boot_started"], row["provisioned_at"] = iso(s["boot_started"]), iso(
            s["provisioned_at"])  # fmt: skip
        rows.append(row)
    for row in rows:  # the manifest's own columns (serial, model, ...)
        row["manifest"] = (extra or {}).get(row["mac"], {})
    done = sum(1 for r in rows if r["stage"] == "provisioned")
    return {
        "name": name,
        "created": iso(created),
        "expected": len(expected),
        "provisioned": done,
        "missing": [r for r in rows if r["stage"] != "provisioned"],
        "devices": rows,
    }


def report_csv(report: dict[str, Any]) -> str:
    """The report as CSV: REPORT_COLUMNS, then the manifest's own columns."""
    out = io.StringIO()
    w = csv.writer(out)
    own = list(dict.fromkeys(k for r in report["devices"] for k in r.get("manifest", {})))
    w.writerow([*REPORT_COLUMNS, *own])
    for r in report["devices"]:
        m = r.get("manifest", {})
        w.writerow(["" if r.get(k) is None else r.get(k) for k in REPORT_COLUMNS]
                   + [m.get(k, "") for k in own])  # fmt: skip
    return out.getvalue()


def inventory_csv(status: list[dict[str, Any]]) -> str:
    """Every device on its current boot, as the batch reports show one."""
    return report_csv(batch_report("inventory", [s["mac"] for s in status], status))


class Stream:
    """The bus's events about devices, pushed to each open dashboard (server-sent events).
    A page too slow to read loses events, never the server its memory."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[str]] = set()
        self._elsewhere = 0.0  # when another server's changes were last announced

    def __call__(self, event: Event) -> None:
        if not self.queues or not isinstance(event, DeviceEvent) or not event.mac:
            return
        self._push(json.dumps({"mac": event.mac, "kind": event.kind, "ts": event.ts}))

    def _push(self, line: str) -> None:
        for q in self.queues:
            if q.qsize() < 1000:
                q.put_nowait(line)

    def changed_elsewhere(self, server: str) -> None:
        """Another server sharing the inventory committed changes: the pages refresh (at
        most five times a second: they read what changed since their cursor anyway)."""
        now = time.monotonic()
        if now - self._elsewhere < 0.2:
            return
        self._elsewhere = now
        self._push(json.dumps({"server": server, "kind": "inventory.changed"}))

    def open(self) -> asyncio.Queue[str]:
        q: asyncio.Queue[str] = asyncio.Queue()
        self.queues.add(q)
        return q

    def close(self, q: asyncio.Queue[str]) -> None:
        self.queues.discard(q)

    def end(self) -> None:
        """Tell every open page's stream to finish (on shutdown)."""
        for q in list(self.queues):
            q.put_nowait("")
