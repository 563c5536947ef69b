"""SIP PnP under a boot storm: sipp boots distinct phones at a fixed rate.

A namespace lab (198.18.0.0/15 only): `preprov serve --interface eth0` in the
server namespace, pinned to CPU 0; sipp in a phone namespace, pinned to CPU 1,
runs the Panasonic scenario (tests/sipp/panasonic.xml) at --rate new phones a
second for --seconds, each with its own MAC and Call-ID: multicast SUBSCRIBE,
200, NOTIFY with the URL, 200. A phone counts as complete when all four
happened, the NOTIFY within 5 s (the phone's window). Prints the share
complete and the 50th/99th percentile time from SUBSCRIBE to NOTIFY, taken
from a capture on the phones' interface (dumpcap, microsecond timestamps:
sipp's own response times count whole milliseconds).

All phones come from one address, so the server's per-source rate limit is
lifted for the run (pnp.rate_burst, pnp.rate_per_second); everything else is
the default (pnp.max_transactions 10,000 open exchanges, 5,000 new answers a
second), log at its default level, inventory on.

    ./run bench pnp_sipp [--rate 2000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from preprov.lab import Lab, netns_unavailable  # noqa: E402
from sipp import SCENARIOS, injection  # noqa: E402

CONFIG = """
pnp:
  rate_burst: 1000000
  rate_per_second: 1000000
log:
  format: json
"""


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []


def subscribe_to_notify_ms(pcap: Path, phone_ip: str) -> list[float]:
    """From a classic pcap: per Call-ID, the first SUBSCRIBE the phones sent to the
    first NOTIFY they received, in milliseconds."""
    data = pcap.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    off = 24
    sent: dict[bytes, float] = {}
    got: dict[bytes, float] = {}
    phone = socket.inet_aton(phone_ip)
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(endian + "IIII", data[off : off + 16])
        pkt = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ts = sec + frac / (1e9 if nano else 1e6)
        if len(pkt) < 42 or pkt[12:14] != b"\x08\x00":
            continue
        ihl = (pkt[14] & 0x0F) * 4
        src = pkt[26:30]
        payload = pkt[14 + ihl + 8 :]
        m = re.search(rb"\r\nCall-ID:\s*([^\r]+)", payload, re.IGNORECASE)
        if not m:
            continue
        cid = m.group(1).strip()
        if payload.startswith(b"SUBSCRIBE ") and src == phone:
            sent.setdefault(cid, ts)
        elif payload.startswith(b"NOTIFY ") and src != phone:
            got.setdefault(cid, ts)
    return [(got[c] - sent[c]) * 1000 for c in got if c in sent]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=int, default=2000, help="new phones a second")
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    why = netns_unavailable()
    if why:
        raise SystemExit(f"this benchmark builds network namespaces: {why}")
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (Debian package sip-tester)")
    total = args.rate * args.seconds
    work = Path(tempfile.mkdtemp(prefix="preprov-bench-pnp-"))
    (work / "bench.yaml").write_text(CONFIG)
    macs = [f"0080F0{i:06X}" for i in range(total)]
    inf = injection(work / "phones.csv", macs)
    with Lab() as lab:
        srv = lab.host("srv")
        phone = lab.host("phones")
        log = work / "server.log"
        with open(log, "wb") as f:
            server = subprocess.Popen(
                [*srv.prefix(), *pin(0), sys.executable, "-m", "preprov", "serve",
                 "--config", str(work / "bench.yaml"), "--interface", "eth0",
                 "--state-dir", str(work / "state")],
                stdout=f, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 15
            while b'"server.started"' not in log.read_bytes():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start:\n{log.read_text()}")
                time.sleep(0.05)
            pcap = work / "phones.pcap"
            cap = subprocess.Popen(
                [*phone.prefix(), "dumpcap", "-i", "eth0", "-f", "udp port 5060", "-P",
                 "-B", "64", "-w", str(pcap)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + 10
            while not pcap.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            started = time.monotonic()
            r = subprocess.run(
                [*phone.prefix(), *pin(1), "sipp", "-sf", str(SCENARIOS / "panasonic.xml"),
                 "224.0.1.75:5060", "-i", str(phone.ipv4.ip), "-p", "5060",
                 "-r", str(args.rate), "-m", str(total), "-l", str(args.rate * 6),
                 "-inf", str(inf), "-recv_timeout", "5000", "-timeout", f"{args.seconds + 30}s",
                 "-nostdin"],
                cwd=work, capture_output=True, text=True,
            )  # fmt: skip
            elapsed = time.monotonic() - started
            time.sleep(0.5)
            cap.send_signal(signal.SIGINT)
            _, cap_err = cap.communicate(timeout=30)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    times = subscribe_to_notify_ms(pcap, str(phone.ipv4.ip))
    dropped = re.search(r"Packets dropped: (\d+)|(\d+) \(\d+\.\d+%\) dropped", cap_err or "")

    ok = re.search(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", r.stdout)
    failed = re.search(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", r.stdout)
    successful = int(ok.group(1)) if ok else 0
    # from the inventory: at its default level the log has a summary, not a line each
    db = sqlite3.connect(work / "state" / "preprov.db")
    acked = db.execute("SELECT count(*) FROM events WHERE kind = 'pnp.notify-acked'").fetchone()[0]
    db.close()
    share = successful / total
    p50, p99 = percentile(times, 50), percentile(times, 99)
    print(f"phones={total} rate={args.rate}/s seconds={args.seconds} (sipp ran {elapsed:.1f} s)")
    nfailed = failed.group(1) if failed else "?"
    print(f"complete (SUBSCRIBE, 200, NOTIFY, 200): {successful} = {share * 100:.3f}%   "
          f"failed: {nfailed}   server saw {acked} NOTIFY answered")  # fmt: skip
    print(f"SUBSCRIBE -> NOTIFY: p50 {p50:.2f} ms   p99 {p99:.2f} ms   (n={len(times)}, "
          f"mean {statistics.fmean(times) if times else float('nan'):.2f} ms)")  # fmt: skip
    print(f"capture: {len(times)} SUBSCRIBE/NOTIFY pairs; dumpcap said: "
          f"{(dropped.group(0) if dropped else 'no drops reported')}")  # fmt: skip
    print("target: >= 99.9% complete and p99 < 100 ms at 2,000 phones/s")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "pnp_sipp.json").write_text(json.dumps(
        {"args": vars(args), "complete": successful, "total": total, "share": share,
         "p50_ms": p50, "p99_ms": p99}, indent=2))  # fmt: skip
    if r.returncode not in (0, 1):
        print(r.stdout[-3000:], r.stderr[-2000:])
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
