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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..events import DeviceEvent, Event

PAGE = Path(__file__).with_name("dashboard.html")


def iso(ts: float | None) -> str:
    """ISO 8601 in UTC, to the second: what exports and reports show."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


REPORT_COLUMNS = ("mac", "stage", "reason", "model", "fwver", "ipv4", "ipv6", "pnp", "dhcp",
                  "files", "boots", "boot_started", "provisioned_at", "last_error")  # fmt: skip


def batch_report(
    name: str, expected: list[str], status: list[dict[str, Any]], created: float = 0.0
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
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(REPORT_COLUMNS)
    for r in report["devices"]:
        w.writerow(["" if r.get(k) is None else r.get(k) for k in REPORT_COLUMNS])
    return out.getvalue()


class Stream:
    """The bus's events about devices, pushed to each open dashboard (server-sent events).
    A page too slow to read loses events, never the server its memory."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[str]] = set()

    def __call__(self, event: Event) -> None:
        if not self.queues or not isinstance(event, DeviceEvent) or not event.mac:
            return
        line = json.dumps({"mac": event.mac, "kind": event.kind, "ts": event.ts})
        for q in self.queues:
            if q.qsize() < 1000:
                q.put_nowait(line)

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
