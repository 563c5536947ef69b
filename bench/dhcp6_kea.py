"""DHCPv6 under load: perfdhcp -6 against preprov and against ISC Kea, in one run.

One namespace lab (fd00::/8 only): the server namespace runs preprov (`serve
--interface eth0`, inventory on) and then kea-dhcp6 (memfile lease file with
persist on), each pinned to CPU 0, each with the same pool and lifetimes and
option 17 (enterprise 258, sub-option 1, the URL) always sent; Kea logs at WARN,
preprov at its default level, with its per-source limit lifted (perfdhcp sends
every client from one address). perfdhcp -6, pinned to CPU 1 in a client namespace, runs SOLICIT,
ADVERTISE, REQUEST, REPLY exchanges from its link-local address to ff02::1:2
at rising rates. A rate is sustained when both exchanges drop at most 2.5 %.
Each rate's line gives the CPU the server and perfdhcp took (see dhcp4_kea).

    ./run bench dhcp6_kea [--step 5] [--clients 50000] [--rates ...] [--only preprov|kea]
                          [--multicast] [--no-pin] [--perfdhcp-threads single|multi]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import dhcp4_kea  # noqa: E402
from dhcp4_kea import pin, profiled, start_and_wait, stop, sweep  # noqa: E402
from preprov.lab import Lab, netns_unavailable  # noqa: E402

LIFETIME = 3600


def configs(lab: Lab, work: Path, server_ip: str, relayed: bool) -> tuple[str, dict[str, object]]:
    net = lab.net6
    # 2^19 addresses: with 65,536 the sweep's 50,000 clients nearly used the pool up,
    # and the overload run then measured offers taken back, for either server
    first, last = net[0x10000], net[0x8FFFF]
    url = f"http://[{server_ip}]:8080/{{MODEL}}.cfg"
    preprov = f"""
dhcp6:
  preferred_lifetime: {LIFETIME}
  valid_lifetime: {LIFETIME * 2}
  always_send: true
  # perfdhcp sends every client from one address: the per-source limit is lifted
  # for the run (as for pnp_sipp); relayed messages are not limited anyway
  rate_burst: 1000000
  rate_per_second: 1000000
  subnets:
    - {{prefix: '{net}', pool: ['{first}', '{last}']}}
dhcp4:
  enabled: false
pnp:
  enabled: false
log:
  format: json
"""
    kea = {
        "Dhcp6": {
            # relayed traffic arrives unicast: Kea hears it on the address named here
            "interfaces-config": {"interfaces": [f"eth0/{server_ip}" if relayed else "eth0"]},
            "server-id": {"type": "LL", "persist": False},
            "lease-database": {"type": "memfile", "persist": True, "lfc-interval": 0,
                               "name": str(work / "kea-leases6.csv")},
            "preferred-lifetime": LIFETIME, "valid-lifetime": LIFETIME * 2,
            "option-def": [{"name": "pana-url", "code": 1, "space": "vendor-258",
                            "type": "string"}],
            "subnet6": [{
                "id": 1, "subnet": str(net), **({} if relayed else {"interface": "eth0"}),
                "pools": [{"pool": f"{first} - {last}"}],
                "option-data": [
                    {"name": "vendor-opts", "data": "258", "always-send": True},
                    {"name": "pana-url", "space": "vendor-258", "data": url,
                     "always-send": True},
                ],
            }],
            "loggers": [{"name": "kea-dhcp6", "severity": "WARN",
                         "output_options": [{"output": str(work / "kea6.log")}]}],
        }
    }  # fmt: skip
    return preprov, kea


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--step", type=int, default=5, help="seconds at each rate")
    ap.add_argument("--clients", type=int, default=50000)
    ap.add_argument("--rates", default=dhcp4_kea.RATES)
    ap.add_argument("--only", choices=["preprov", "kea"])
    ap.add_argument("--profile", metavar="FILE",
                    help="py-spy samples preprov during its sweep (collapsed stacks)")
    ap.add_argument(
        "--multicast", action="store_true",
        help="perfdhcp as a client to ff02::1:2;"
        " default: as a relay (-A1), unicast to the server's address",
    )  # fmt: skip
    ap.add_argument("--no-pin", action="store_true",
                    help="no CPU pinning: servers and perfdhcp share both cores")
    dhcp4_kea.add_threads_option(ap)
    args = ap.parse_args()
    dhcp4_kea.PINNED = not args.no_pin
    dhcp4_kea.PERFDHCP_THREADS = args.perfdhcp_threads
    rates = [int(r) for r in args.rates.split(",")]
    why = netns_unavailable()
    if why:
        raise SystemExit(f"this benchmark builds network namespaces: {why}")
    for tool in ("perfdhcp", "kea-dhcp6"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: kea-admin, kea-dhcp6-server)")
    work = Path(tempfile.mkdtemp(prefix="preprov-bench-dhcp6-"))
    best_pp = best_kea = 0
    rows_pp: list[dict[str, float]] = []
    rows_kea: list[dict[str, float]] = []
    try:
        with Lab() as lab:
            srv = lab.host("srv")
            client = lab.host("perf", addresses=not args.multicast)
            server_ip = str(srv.ipv6.ip)
            preprov_cfg, kea_cfg = configs(lab, work, server_ip, relayed=not args.multicast)
            target, extra = ("all", ()) if args.multicast else (server_ip, ("-A1",))
            if args.only != "kea":
                (work / "preprov.yaml").write_text(preprov_cfg)
                print("preprov:", flush=True)
                pp = start_and_wait(
                    [*srv.prefix(), *pin(0), sys.executable, "-m", "preprov", "serve",
                     "--config", str(work / "preprov.yaml"), "--interface", "eth0",
                     "--state-dir", str(work / "state")],
                    work / "preprov.log", b"\x00", timeout=3.0,
                )  # fmt: skip
                try:
                    with profiled(pp.pid, args.profile):
                        best_pp, rows_pp = sweep(
                            client, target, rates, args.step, args.clients, "-6", extra, pp.pid
                        )
                finally:
                    stop(pp)
            if args.only != "preprov":
                print("kea-dhcp6 (memfile, persist on):", flush=True)
                (work / "kea6.json").write_text(json.dumps(kea_cfg))
                (work / "kea-run").mkdir()
                os.environ["KEA_PIDFILE_DIR"] = str(work / "kea-run")
                os.environ["KEA_LOCKFILE_DIR"] = str(work / "kea-run")
                kea = start_and_wait(
                    [*srv.prefix(), *pin(0), "kea-dhcp6", "-c", str(work / "kea6.json")],
                    work / "kea6.out",
                    b"\x00",
                    timeout=3.0,
                )
                try:
                    best_kea, rows_kea = sweep(
                        client, target, rates, args.step, args.clients, "-6", extra, kea.pid
                    )
                finally:
                    stop(kea)
        ratio = best_pp / best_kea if best_kea else float("nan")
        print(f"highest rate with <= 2.5 % drops: preprov {best_pp}/s, kea {best_kea}/s, "
              f"ratio {ratio:.2f} (target >= 0.5)")  # fmt: skip
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        (out / "dhcp6_kea.json").write_text(json.dumps(
            {"preprov": rows_pp, "kea": rows_kea, "best_preprov": best_pp, "best_kea": best_kea,
             "ratio": ratio}, indent=2))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
