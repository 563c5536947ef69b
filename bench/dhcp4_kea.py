"""DHCPv4 under load: perfdhcp against preprov and against ISC Kea, in one run.

One namespace lab on 198.19.0.0/16 (benchmarking range): the server namespace
runs preprov (`serve --interface eth0`, inventory and event log on) and then
kea-dhcp4 (memfile lease file with persist on), each pinned to CPU 0, each
with the same pool (198.19.1.0-198.19.255.254), lease time and the same
provisioning options always sent (66, 67, 159, 160); Kea logs at WARN (its
per-lease lines are INFO), preprov at its default level (`--log-level`: a
summary line a second, no line per packet) and stores every event and lease in
its inventory before answering.
perfdhcp, pinned to CPU 1 in a client namespace, runs full DORA exchanges at rising rates for --step
seconds each, from --clients distinct MACs. A rate is sustained when both
DISCOVER-OFFER and REQUEST-ACK drop at most 2.5 %. Prints the highest rate each
sustains and the ratio.

Each rate's line also gives the CPU the server (preprov: with its writer process)
and perfdhcp took, in % of one core: on a 2-core machine the load generator's
share is the servers' loss. perfdhcp receives in a second thread by default
(`-g multi` on more than one CPU); `--perfdhcp-threads single` runs it in one.

Then preprov's resident memory with 100,000 bound leases loaded from its store.

    ./run bench dhcp4_kea [--step 5] [--clients 50000] [--rates 1000,2000,...] [--log-level]
                          [--no-pin] [--perfdhcp-threads single|multi]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from preprov.lab import Host, Lab, netns_unavailable  # noqa: E402

POOL = ("198.19.1.0", "198.19.255.254")
URL = "http://198.19.0.1:8080"
LEASE_TIME = 3600

PREPROV_CONFIG = f"""
dhcp4:
  lease_time: {LEASE_TIME}
  subnets:
    - {{subnet: 198.19.0.0/16, pool: [{POOL[0]}, {POOL[1]}], router: 198.19.0.1}}
  options:
    always_send: [66, 67, 159, 160]
pnp:
  enabled: false
log:
  format: json
"""


def kea_config(work: Path) -> dict[str, object]:
    def hexs(s: str) -> str:
        return s.encode().hex()

    return {
        "Dhcp4": {
            "interfaces-config": {"interfaces": ["eth0"], "dhcp-socket-type": "udp"},
            "lease-database": {
                "type": "memfile", "persist": True, "lfc-interval": 0,
                "name": str(work / "kea-leases4.csv"),
            },
            "valid-lifetime": LEASE_TIME,
            "subnet4": [{
                "id": 1, "subnet": "198.19.0.0/16",
                "pools": [{"pool": f"{POOL[0]} - {POOL[1]}"}],
                "option-data": [
                    {"name": "routers", "data": "198.19.0.1"},
                    {"code": 160, "csv-format": False, "data": hexs(URL), "always-send": True},
                    {"code": 159, "csv-format": False, "data": hexs(URL), "always-send": True},
                    {"name": "tftp-server-name", "data": URL + "/{MODEL}.cfg", "always-send": True},
                    {"name": "boot-file-name", "data": "{MODEL}.cfg", "always-send": True},
                ],
            }],
            "loggers": [{
                "name": "kea-dhcp4", "severity": "WARN",
                "output_options": [{"output": str(work / "kea.log")}],
            }],
        }
    }  # fmt: skip


PINNED = True  # --no-pin: the servers (and preprov's writer process) on any CPU
# --perfdhcp-threads: perfdhcp's -g (None: its own default, "multi" on more than one CPU,
# where a second thread receives; it then takes a core's worth more of a 2-core machine)
PERFDHCP_THREADS: str | None = None


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if PINNED and shutil.which("taskset") else []


# offered exchanges/s, swept in order up to the first not sustained; high enough that
# Kea with a single-threaded perfdhcp (24,000 on this machine kind) is not capped
RATES = "2000,4000,5000,6000,7000,8000,9000,10000,12000,14000,16000,20000,24000,28000,32000"


def perfdhcp(
    client: Host, server: str, rate: int, seconds: int, clients: int, family: str = "-4",
    extra: tuple[str, ...] = (),
) -> dict[str, float]:  # fmt: skip
    threads = ("-g", PERFDHCP_THREADS) if PERFDHCP_THREADS else ()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    r = subprocess.run(
        [*client.prefix(), *pin(1), "perfdhcp", family, *threads, *extra, "-r", str(rate),
         "-R", str(clients), "-p", str(seconds), "-l", "eth0", server],
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # perfdhcp's CPU (the netns and taskset prefixes exec it: it is the child reaped)
    spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    load_cpu = 100 * spent / (time.monotonic() - started)
    out = r.stdout
    achieved = re.search(r"Rate: ([\d.]+) 4-way exchanges/second", out)
    drops = [float(x) for x in re.findall(r"drops ratio: ([\d.]+) %", out)]
    sent = [int(x) for x in re.findall(r"sent packets: (\d+)", out)]
    if not achieved or len(drops) < 2:
        return {"rate": rate, "achieved": 0.0, "drops_do": 100.0, "drops_ra": 100.0, "sent": 0,
                "perfdhcp_cpu": load_cpu}  # fmt: skip
    return {"rate": rate, "achieved": float(achieved.group(1)), "drops_do": drops[0],
            "drops_ra": drops[1], "sent": sent[0] if sent else 0,
            "perfdhcp_cpu": load_cpu}  # fmt: skip


def cpu_ticks(pid: int | None) -> int:
    """CPU time (clock ticks) of a process and its children (preprov's writer)."""
    if pid is None:
        return 0
    total = 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for p in (pid, *map(int, children)):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except OSError:
        pass
    return total


def server_step(
    pid: int | None, client: Host, server: str, rate: int, seconds: int, clients: int,
    family: str, extra: tuple[str, ...],
) -> dict[str, float]:  # fmt: skip
    """One perfdhcp run, with the server's CPU (its processes, % of one core) meanwhile."""
    t0, w0 = cpu_ticks(pid), time.monotonic()
    row = perfdhcp(client, server, rate, seconds, clients, family, extra)
    hz = os.sysconf("SC_CLK_TCK")
    if pid is not None:
        row["server_cpu"] = 100 * (cpu_ticks(pid) - t0) / hz / (time.monotonic() - w0)
    return row


def sweep(
    client: Host, server: str, rates: list[int], step: int, clients: int, family: str = "-4",
    extra: tuple[str, ...] = (), pid: int | None = None,
) -> tuple[int, list[dict[str, float]]]:  # fmt: skip
    """`pid`: the server's, for its CPU share at each rate (beside perfdhcp's)."""
    best = 0
    rows = []

    def cpu(row: dict[str, float]) -> str:
        server = f"server {row['server_cpu']:.0f} %, " if "server_cpu" in row else ""
        return f"CPU: {server}perfdhcp {row['perfdhcp_cpu']:.0f} % of a core"

    for rate in rates:
        row = server_step(pid, client, server, rate, step, clients, family, extra)
        rows.append(row)
        ok = row["drops_do"] <= 2.5 and row["drops_ra"] <= 2.5 and row["achieved"] >= 0.95 * rate
        verdict = "ok" if ok else "NOT sustained"
        print(
            f"  rate {rate:>6}/s: achieved {row['achieved']:>8.0f}/s, "
            f"drops DO {row['drops_do']:.2f} %, RA {row['drops_ra']:.2f} %  {verdict}; {cpu(row)}",
            flush=True,
        )
        if not ok:
            break
        best = rate
    if best:  # steady past capacity: twice the sustained rate, what is still answered
        row = server_step(pid, client, server, 2 * best, step, clients, family, extra)
        row["overload"] = 1.0
        rows.append(row)
        print(f"  overload: offered {2 * best}/s (twice the sustained rate), answered "
              f"{row['achieved']:.0f}/s = {100 * row['achieved'] / best:.0f} % of the sustained "
              f"rate (target >= 90 %); {cpu(row)}", flush=True)  # fmt: skip
    return best, rows


def start_and_wait(
    cmd: list[str], log: Path, ready: bytes, timeout: float = 20.0
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready in log.read_bytes():
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc  # Kea says little at WARN: it is given the time and probed by perfdhcp


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def store_with_leases(state: Path, n: int) -> None:
    """A state directory whose store holds n bound leases."""
    from preprov.inventory.sqlite import SQLiteStore

    state.mkdir()
    SQLiteStore(state / "preprov.db").close()
    db = sqlite3.connect(state / "preprov.db")
    base = int(ipaddress.IPv4Address("198.19.1.0"))
    now = time.time()
    db.executemany(
        "INSERT INTO leases (ip, client_id, mac, state, expires, hostname, updated)"
        " VALUES (?, ?, ?, 'bound', ?, NULL, ?)",
        ((str(ipaddress.IPv4Address(base + i)), f"{i:012X}", f"{i:012X}", now + 86400, now)
         for i in range(n)),
    )  # fmt: skip
    db.commit()
    db.close()


def rss_mib(pid: int) -> float:
    """The server's resident memory and its children's (its inventory's writer)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    total = 0
    for p in (pid, *children):
        status = Path(f"/proc/{p}/status").read_text()
        total += int(status.split("VmRSS:")[1].split()[0])
    return total / 1024


@contextlib.contextmanager
def profiled(pid: int, out: str | None) -> Iterator[None]:
    """py-spy samples the process meanwhile (`--profile FILE`: collapsed stacks)."""
    if not out:
        yield
        return
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
         "--format", "raw", "--output", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


def add_threads_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--perfdhcp-threads", choices=["single", "multi"],
                    help="perfdhcp's -g (default: its own, multi on more than one CPU; "
                         "single leaves the servers more of a 2-core machine)")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--step", type=int, default=5, help="seconds at each rate")
    ap.add_argument("--clients", type=int, default=50000)
    ap.add_argument("--rates", default=RATES)
    ap.add_argument("--only", choices=["preprov", "kea"], help="run one server only")
    ap.add_argument("--profile", metavar="FILE",
                    help="py-spy samples preprov during its sweep (collapsed stacks)")
    ap.add_argument("--log-level", choices=["info", "warning"], default="info",
                    help="preprov's log level (info, its default)")  # fmt: skip
    ap.add_argument("--no-pin", action="store_true",
                    help="no CPU pinning: servers and perfdhcp share both cores")
    add_threads_option(ap)
    args = ap.parse_args()
    global PINNED, PERFDHCP_THREADS
    PINNED = not args.no_pin
    PERFDHCP_THREADS = args.perfdhcp_threads
    rates = [int(r) for r in args.rates.split(",")]
    why = netns_unavailable()
    if why:
        raise SystemExit(f"this benchmark builds network namespaces: {why}")
    for tool in ("perfdhcp", "kea-dhcp4"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: kea-admin, kea-dhcp4-server)")
    work = Path(tempfile.mkdtemp(prefix="preprov-bench-dhcp4-"))
    results: dict[str, object] = {}
    try:
        with Lab(wide=True) as lab:
            srv = lab.host("srv")
            client = lab.host("perf")
            server_ip = str(srv.ipv4.ip)
            (work / "preprov.yaml").write_text(PREPROV_CONFIG + f"  level: {args.log_level}\n")
            print("preprov:", flush=True)
            pp = start_and_wait(
                [*srv.prefix(), *pin(0), sys.executable, "-m", "preprov", "serve", "--config",
                 str(work / "preprov.yaml"), "--interface", "eth0", "--state-dir",
                 str(work / "state")], work / "preprov.log", b'"server.started"',
            )  # fmt: skip
            try:
                best_pp, rows_pp = (0, [])
                if args.only != "kea":
                    with profiled(pp.pid, args.profile):
                        best_pp, rows_pp = sweep(client, server_ip, rates, args.step,
                                                 args.clients, pid=pp.pid)  # fmt: skip
            finally:
                stop(pp)
            if args.only == "preprov":
                return 0
            print("kea-dhcp4 (memfile, persist on):", flush=True)
            (work / "kea.json").write_text(json.dumps(kea_config(work)))
            env_dir = work / "kea-run"
            env_dir.mkdir()
            os.environ["KEA_PIDFILE_DIR"] = str(env_dir)
            os.environ["KEA_LOCKFILE_DIR"] = str(env_dir)
            kea = start_and_wait(
                [*srv.prefix(), *pin(0), "kea-dhcp4", "-c", str(work / "kea.json")],
                work / "kea.out",
                b"\x00",
                timeout=3.0,
            )
            try:
                best_kea, rows_kea = sweep(client, server_ip, rates, args.step, args.clients,
                                           pid=kea.pid)  # fmt: skip
            finally:
                stop(kea)
            # preprov started on a store of 100,000 bound leases: its resident memory
            state = work / "state-100k"
            store_with_leases(state, 100_000)
            (work / "preprov-info.yaml").write_text(PREPROV_CONFIG)
            big = start_and_wait(
                [*srv.prefix(), sys.executable, "-m", "preprov", "serve", "--config",
                 str(work / "preprov-info.yaml"), "--interface", "eth0", "--state-dir", str(state)],
                work / "preprov-100k.log", b'"server.started"', timeout=120,
            )  # fmt: skip
            try:
                rss = rss_mib(big.pid)
            finally:
                stop(big)
        ratio = best_pp / best_kea if best_kea else float("nan")
        print(f"highest rate with <= 2.5 % drops: preprov {best_pp}/s, kea {best_kea}/s, "
              f"ratio {ratio:.2f} (target >= 0.5)")  # fmt: skip
        print(f"preprov resident memory with 100,000 leases (with its writer process): "
              f"{rss:.0f} MiB (target <= 250)")
        results = {"preprov": rows_pp, "kea": rows_kea, "best_preprov": best_pp,
                   "best_kea": best_kea, "ratio": ratio, "rss_mib_100k": rss}  # fmt: skip
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        (out / "dhcp4_kea.json").write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
