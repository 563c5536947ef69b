"""Administration reads with 100,000 devices in the inventory, and the phones meanwhile.

A state directory is filled with --devices devices (each with a SIP PnP NOTIFY
and two files served: four events each) and an uploaded batch of 1,000 MACs;
`preprov serve` runs on it on loopback with its defaults (one event loop,
CPU 0). Then:

1. each administration read, five times, one at a time: the slowest answer;
2. wrk (CPU 1) fetches per-device files for --seconds alone, then again while
   a dashboard (`/api/status?since=`, `/api/summary`, `/api/batches` after each
   change) and a Prometheus scraper (`/metrics`) poll every 200 ms: the phones'
   p99 both ways, and the slowest poll.

    ./run bench admin_100k [--devices 100000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from dhcp4_kea import stop
from http_vs_nginx import free_port, pin, wait_port, wrk
from preprov.events import FileServed, PnpNotifyAcked, PnpNotifySent, device_fields
from preprov.ident import DeviceFacts
from preprov.inventory.sqlite import SQLiteStore

HERE = Path(__file__).resolve().parent
TOKEN = "bench-token"


def fill(state: Path, devices: int) -> None:
    store = SQLiteStore(state / "preprov.db")
    now = time.time() - 3600
    batch = []
    for i in range(devices):
        mac = f"0080F1{i:06X}"
        client = f"198.18.{i >> 8 & 255}.{i & 255}"
        pnp = device_fields("sip-pnp", DeviceFacts(mac, "KX-HDV130", "01.000", "Panasonic"), client)
        http = pnp | {"channel": "http"}
        batch += [
            PnpNotifySent(**pnp, ts=now, call_id=f"c{i}", rule="default", to="x",
                          url="http://198.18.0.1:8080/{MODEL}.cfg"),
            PnpNotifyAcked(**pnp, ts=now, call_id=f"c{i}", status=200, transmissions=1, ms=1.0),
            FileServed(**http, ts=now, path="/KX-HDV130.cfg", template="{MODEL}.cfg",
                       rule="default", size=900),
            FileServed(**http, ts=now, path=f"/Config{mac}.cfg", template="Config{MAC}.cfg",
                       rule="default", size=1200),
        ]  # fmt: skip
        if len(batch) >= 20_000:
            store.write(batch)
            batch = []
    if batch:
        store.write(batch)
    store.close()


def timed_get(url: str) -> tuple[float, bytes, dict[str, str]]:
    req = urllib.request.Request(url)
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
        return (time.perf_counter() - t) * 1000, body, dict(r.headers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="preprov-bench-"))
    state = tmp / "state"
    t0 = time.monotonic()
    fill(state, args.devices)
    print(f"inventory: {args.devices} devices, {args.devices * 4} events "
          f"({time.monotonic() - t0:.1f} s to write)")  # fmt: skip
    (tmp / "c.yaml").write_text(f"admin:\n  token: {TOKEN}\n")
    port, admin_port = free_port(), free_port()
    log = open(tmp / "preprov.log", "wb")  # noqa: SIM115
    pp = subprocess.Popen(
        [*pin(0), sys.executable, "-m", "preprov", "serve", "--config", str(tmp / "c.yaml"),
         "--http-port", str(port), "--admin-port", str(admin_port), "--state-dir", str(state),
         "--log-format", "json"], stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_port(port)
        wait_port(admin_port)
        admin = f"http://127.0.0.1:{admin_port}"
        step = max(args.devices // 1000, 1)
        manifest = "\n".join(f"0080F1{i:06X}" for i in range(0, args.devices, step))
        req = urllib.request.Request(
            f"{admin}/api/batches?name=bench", data=manifest.encode(), method="POST",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )  # fmt: skip
        urllib.request.urlopen(req, timeout=60).close()
        _, _, h = timed_get(f"{admin}/api/status?limit=1")
        cursor = int(h["X-Cursor"])
        reads = ["/api/status", f"/api/status?since={cursor - 100}", "/api/devices",
                 "/api/devices/0080F1000001", "/api/devices/0080F1000001/events", "/api/events",
                 "/api/leases", "/api/summary", "/api/batches", "/metrics", "/"]  # fmt: skip
        slowest = {}
        for path in reads:
            slowest[path] = max(timed_get(admin + path)[0] for _ in range(5))
            print(f"  {path:<40} {slowest[path]:8.1f} ms (slowest of 5)")
        worst = max(slowest.values())
        print(f"slowest administration read: {worst:.1f} ms   (target < 200 ms)")

        wrk(port, 2, 32, 1000)  # warm-up
        alone = wrk(port, args.seconds, 32, 1000)
        polling_done = threading.Event()
        polls: list[float] = []

        def poller() -> None:
            c = cursor
            while not polling_done.is_set():
                ms, _, h = timed_get(f"{admin}/api/status?since={c}")
                c = int(h["X-Cursor"])
                polls.append(ms)
                for path in ("/api/summary", "/api/batches", "/metrics"):
                    polls.append(timed_get(admin + path)[0])
                time.sleep(0.2)

        th = threading.Thread(target=poller)
        th.start()
        polled = wrk(port, args.seconds, 32, 1000)
        polling_done.set()
        th.join()
        print(f"phones alone:          {alone['rate']:8.0f} req/s  p99 {alone['p99_ms']:.2f} ms")
        print(f"phones while polled:   {polled['rate']:8.0f} req/s  p99 {polled['p99_ms']:.2f} ms"
              "   (target p99 < 50 ms)")  # fmt: skip
        print(f"polls: {len(polls)}, slowest {max(polls):.1f} ms")
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        (out / "admin_100k.json").write_text(json.dumps(
            {"args": vars(args), "reads_ms": slowest, "alone": alone, "polled": polled,
             "slowest_poll_ms": max(polls)}, indent=2))  # fmt: skip
        return 0
    finally:
        stop(pp)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
