"""DHCPv4 with the shared PostgreSQL inventory against ISC Kea with its PostgreSQL
lease backend: one database server (a throw-away cluster of Debian's PostgreSQL,
started here), one run.

The lab of dhcp4_kea (198.19.0.0/16, the same pool, lease time and provisioning
options always sent; perfdhcp full DORA exchanges at rising rates, a rate is
sustained when both exchanges drop at most 2.5 %), with these servers in turn:

1. one preprov, `serve --interface eth0 --database postgresql://...` (defaults
   otherwise: log level info, every event and lease committed before the answer);
2. two preprov servers on the segment, one database, each loaded by its own
   perfdhcp at the same rate (the figure is the sum both sustain);
3. kea-dhcp4 with `lease-database: postgresql` on the same cluster (schema by
   `kea-admin db-init pgsql`), logging at WARN.

The servers are pinned to CPU 0, perfdhcp to CPU 1 (two perfdhcp share it in
step 2); PostgreSQL runs wherever the kernel puts it, the same for all.

    ./run bench dhcp4_pg [--step 5] [--clients 50000] [--rates 500,1000,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import pg  # noqa: E402
from dhcp4_kea import (  # noqa: E402
    PREPROV_CONFIG,
    kea_config,
    perfdhcp,
    pin,
    start_and_wait,
    stop,
    sweep,
)
from preprov.lab import Lab, netns_unavailable  # noqa: E402


def kea_pg_config(work: Path, cluster: pg.Cluster, db: str) -> dict[str, object]:
    config = kea_config(work)
    config["Dhcp4"]["lease-database"] = {  # type: ignore[index]
        "type": "postgresql", "name": db, "host": str(cluster.dir), "port": pg.PORT,
        "user": "postgres",
    }  # fmt: skip
    return config


def both(clients: list[object], servers: list[str], rates: list[int], step: int, n: int) -> int:
    """Two perfdhcp at once, each against its server: the highest rate both sustain,
    summed."""
    best = 0
    for rate in rates:
        with ThreadPoolExecutor(2) as pool:
            rows = list(pool.map(
                lambda i, rate=rate: perfdhcp(clients[i], servers[i], rate, step, n // 2,  # type: ignore[arg-type, misc]
                                              extra=("-b", f"mac={2 + 4 * i:02x}:00:00:00:00:00")),
                (0, 1)))  # fmt: skip
        ok = all(r["drops_do"] <= 2.5 and r["drops_ra"] <= 2.5 and r["achieved"] >= 0.95 * rate
                 for r in rows)  # fmt: skip
        total = sum(r["achieved"] for r in rows)
        print(f"  rate 2 x {rate:>5}/s: achieved {total:>8.0f}/s, drops DO "
              f"{rows[0]['drops_do']:.2f}/{rows[1]['drops_do']:.2f} %, RA "
              f"{rows[0]['drops_ra']:.2f}/{rows[1]['drops_ra']:.2f} %  "
              f"{'ok' if ok else 'NOT sustained'}", flush=True)  # fmt: skip
        if not ok:
            break
        best = 2 * rate
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--step", type=int, default=5, help="seconds at each rate")
    ap.add_argument("--clients", type=int, default=50000)
    ap.add_argument("--rates", default="500,1000,1500,2000,3000,4000,5000,6000,8000")
    ap.add_argument("--only", choices=["preprov", "kea"], help="run one server only")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    why = netns_unavailable() or pg.unavailable()
    if why:
        raise SystemExit(f"this benchmark needs network namespaces and PostgreSQL: {why}")
    for tool in ("perfdhcp", "kea-dhcp4", "kea-admin"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: kea-admin, kea-dhcp4-server)")
    work = Path(tempfile.mkdtemp(prefix="preprov-bench-dhcp4pg-"))
    cluster = pg.Cluster()
    try:
        cluster.start()
        with Lab(wide=True) as lab:
            srv, client = lab.host("srv"), lab.host("perf")
            srv2, client2 = lab.host("srv2"), lab.host("perf2")
            (work / "preprov.yaml").write_text(PREPROV_CONFIG + "  level: info\n")

            def preprov(host: object, name: str, url: str) -> subprocess.Popen[bytes]:
                (work / name).mkdir()
                return start_and_wait(
                    [*host.prefix(), *pin(0), sys.executable, "-m", "preprov", "serve",  # type: ignore[attr-defined]
                     "--config", str(work / "preprov.yaml"), "--interface", "eth0",
                     "--state-dir", str(work / name / "state"), "--database", url,
                     "--name", name], work / f"{name}.log", b'"server.started"',
                )  # fmt: skip

            best_one, rows_one, best_two = 0, [], 0
            if args.only != "kea":
                print("one preprov, PostgreSQL inventory:", flush=True)
                url = cluster.new_database()
                pp = preprov(srv, "bench-1", url)
                try:
                    best_one, rows_one = sweep(client, str(srv.ipv4.ip), rates, args.step,
                                               args.clients)  # fmt: skip
                finally:
                    stop(pp)
                print("two preprov on one segment, one database, a perfdhcp each:", flush=True)
                url = cluster.new_database()
                a, b = preprov(srv, "bench-a", url), preprov(srv2, "bench-b", url)
                try:
                    best_two = both([client, client2], [str(srv.ipv4.ip), str(srv2.ipv4.ip)],
                                    rates, args.step, args.clients)  # fmt: skip
                finally:
                    stop(a)
                    stop(b)
                if args.only == "preprov":
                    return 0
            print("kea-dhcp4, PostgreSQL lease backend:", flush=True)
            kea_db = urlparse(cluster.new_database()).path.lstrip("/")
            subprocess.run(["kea-admin", "db-init", "pgsql", "-u", "postgres", "-n", kea_db,
                            "-h", str(cluster.dir), "-P", str(pg.PORT)], check=True,
                           capture_output=True)  # fmt: skip
            (work / "kea.json").write_text(json.dumps(kea_pg_config(work, cluster, kea_db)))
            run_dir = work / "kea-run"
            run_dir.mkdir()
            os.environ["KEA_PIDFILE_DIR"] = os.environ["KEA_LOCKFILE_DIR"] = str(run_dir)
            kea = start_and_wait([*srv.prefix(), *pin(0), "kea-dhcp4", "-c",
                                  str(work / "kea.json")], work / "kea.out", b"\x00",
                                 timeout=3.0)  # fmt: skip
            try:
                best_kea, rows_kea = sweep(client, str(srv.ipv4.ip), rates, args.step,
                                           args.clients)  # fmt: skip
            finally:
                stop(kea)
        r1 = best_one / best_kea if best_kea else float("nan")
        r2 = best_two / best_kea if best_kea else float("nan")
        print(f"highest rate with <= 2.5 % drops, PostgreSQL leases: preprov {best_one}/s, "
              f"two preprov {best_two}/s, kea {best_kea}/s; ratio {r1:.2f} (one), {r2:.2f} (two); "
              "target >= 0.5")  # fmt: skip
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        (out / "dhcp4_pg.json").write_text(json.dumps({
            "preprov": rows_one, "kea": rows_kea, "best_preprov": best_one,
            "best_two_preprov": best_two, "best_kea": best_kea, "ratio": r1, "ratio_two": r2,
        }, indent=2))  # fmt: skip
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
