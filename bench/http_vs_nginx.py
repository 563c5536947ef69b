"""Rendered per-device config files: preprov against nginx serving the same bytes.

One run, same machine, loopback only. Each server gets one worker pinned to
CPU 0 (nginx: worker_processes 1; preprov: its one event loop, with the event
log and the inventory on), wrk runs pinned to CPU 1 with one thread and
--connections connections, cycling through --phones distinct per-device files
(`Config<MAC>.cfg`, each with its Panasonic User-Agent). The files nginx serves
are the bytes preprov rendered, fetched from it first and compared after.

    ./run bench http_vs_nginx [--seconds 10] [--connections 32] [--phones 1000] [--no-pin]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_paths.lua"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PINNED = True  # --no-pin: the servers and wrk share both cores, as a user runs them


def pin(cpu: int) -> list[str]:
    if PINNED and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def mac(i: int) -> str:
    return f"0080F0{i:06X}"


def get(url: str, ua: str) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": ua})
    with urllib.request.urlopen(req, timeout=5) as r:
        return bytes(r.read())


def wrk(port: int, seconds: int, connections: int, phones: int) -> dict[str, float]:
    env = dict(os.environ, PREPROV_MACS=str(phones))
    cmd = [*pin(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
           "-s", str(LUA), f"http://127.0.0.1:{port}/"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "rate": rate,
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--phones", type=int, default=1000)
    ap.add_argument("--no-pin", action="store_true", help="no CPU pinning")
    ap.add_argument("--profile", metavar="FILE",
                    help="py-spy samples preprov during its measured run: a flame graph if "
                         "FILE ends in .svg, else collapsed stacks")
    args = ap.parse_args()
    global PINNED
    PINNED = not args.no_pin
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (./run bench installs it as root)")

    tmp = Path(tempfile.mkdtemp(prefix="preprov-bench-"))
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # -- preprov, zero-config on loopback, JSON event log to a file, inventory on
        pp_port = free_port()
        pp_log = open(tmp / "preprov.log", "wb")  # noqa: SIM115
        pp = subprocess.Popen(
            [*pin(0), sys.executable, "-m", "preprov", "serve", "--http-port", str(pp_port),
             "--state-dir", str(tmp / "state"), "--log-format", "json"],
            stdout=pp_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(pp)
        wait_port(pp_port)

        # -- the same bytes, rendered by preprov, as static files for nginx
        www = tmp / "www"
        www.mkdir()
        files = {}
        for i in range(args.phones):
            m = mac(i)
            ua = f"Panasonic_KX-HDV130/01.000 ({m.lower()})"
            body = get(f"http://127.0.0.1:{pp_port}/Config{m}.cfg", ua)
            (www / f"Config{m}.cfg").write_bytes(body)
            files[m] = body
        ng_port = free_port()
        (tmp / "logs").mkdir()
        conf = tmp / "nginx.conf"
        conf.write_text(
            f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log {tmp}/logs/access.log;
  default_type text/plain;
  sendfile on;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{ng_port}; root {www}; }}
}}
"""
        )
        ng = subprocess.Popen([*pin(0), "nginx", "-c", str(conf)], stderr=subprocess.DEVNULL)
        procs.append(ng)
        wait_port(ng_port)

        for m in (mac(0), mac(args.phones - 1)):
            ua = f"Panasonic_KX-HDV130/01.000 ({m.lower()})"
            a = get(f"http://127.0.0.1:{pp_port}/Config{m}.cfg", ua)
            b = get(f"http://127.0.0.1:{ng_port}/Config{m}.cfg", ua)
            if a != b or a != files[m]:
                raise SystemExit(f"preprov and nginx serve different bytes for {m}")

        results = {}
        for name, port in (("preprov", pp_port), ("nginx", ng_port)):
            wrk(port, 2, args.connections, args.phones)  # warm-up
            spy = None
            if args.profile and name == "preprov":
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--threads",
                     "--pid", str(pp.pid), "--duration", str(args.seconds), "--output",
                     args.profile, "--format",
                     "flamegraph" if args.profile.endswith(".svg") else "raw"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            results[name] = wrk(port, args.seconds, args.connections, args.phones)
            if spy is not None:
                spy.wait(60)

        db = sqlite3.connect(tmp / "state" / "preprov.db")
        served = db.execute("SELECT count(*) FROM events WHERE kind = 'file.served'").fetchone()[0]
        db.close()
        ratio = results["preprov"]["rate"] / results["nginx"]["rate"]
        cpus = "servers on 0, wrk on 1" if PINNED else "not pinned"
        print(f"phones={args.phones} connections={args.connections} seconds={args.seconds} "
              f"cpu: {cpus}")  # fmt: skip
        for name, r in results.items():
            print(f"{name:8} {r['rate']:>10.0f} req/s   p99 {r['p99_ms']:.2f} ms   "
                  f"non-2xx {r['non_2xx']:.0f}")  # fmt: skip
        print(f"ratio preprov/nginx = {ratio:.3f}   (target >= 0.30)")
        print(f"files served in preprov's inventory (event log): {served}")
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        (out / "http_vs_nginx.json").write_text(
            json.dumps({"args": vars(args), "results": results, "ratio": ratio}, indent=2)
        )
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
