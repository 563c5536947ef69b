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
from pathlib import Path
from typing import Any

from ..events import DeviceEvent, Event

PAGE = Path(__file__).with_name("dashboard.html")


def batch_report(name: str, expected: list[str], status: list[dict[str, Any]]) -> dict[str, Any]:
    seen = {s["mac"]: s for s in status}
    rows = []
    for mac in expected:
        s = seen.get(mac)
        if s is None:
            rows.append({"mac": mac, "stage": "not seen", "reason": "no packet from this MAC"})
        else:
            reason = s["last_error"] or ("" if s["stage"] == "provisioned" else
                                         f"stopped at {s['stage']}")  # fmt: skip
            rows.append({"mac": mac, "stage": s["stage"], "reason": reason})
    done = sum(1 for r in rows if r["stage"] == "provisioned")
    return {
        "name": name,
        "expected": len(expected),
        "provisioned": done,
        "missing": [r for r in rows if r["stage"] != "provisioned"],
        "devices": rows,
    }


def report_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["mac", "stage", "reason"])
    for r in report["devices"]:
        w.writerow([r["mac"], r["stage"], r["reason"]])
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
