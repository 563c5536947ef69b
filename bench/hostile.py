"""preprov under hostile traffic: a million datagrams from many addresses of its segment.

A namespace lab (198.18.0.0/15 and fd00::/8 only): `preprov serve --interface
eth0` with its defaults in one namespace (CPU 0); an attacker namespace with
--sources IPv4 and a quarter as many IPv6 addresses of the segment runs
bench/hostile_flood.py (CPU 1): --count datagrams of garbage, SUBSCRIBEs,
DHCPv4 and DHCPv6 requests with made-up MACs and DUIDs, and TFTP read requests
never acknowledged, as fast as it can send them. Meanwhile simulated phones in
two more namespaces boot again and again: SIP PnP, DHCPINFORM and option 160,
DHCPv4 DORA and option 160, DHCPv6 and option 17, and a TFTP fetch.

Prints: the state directory's size (and the budget), the server's resident
memory before, at its peak and 40 s after the flood, the most descriptors
open, bytes sent per byte received per channel, internal errors (tracebacks),
and how many phone boots of each kind succeeded during the flood.

    ./run bench hostile [--count 1000000] [--sources 150] [--rate 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from dhcp4_kea import pin, start_and_wait, stop
from preprov.lab import Lab, netns_unavailable

HERE = Path(__file__).resolve().parent


def family(pid: int) -> list[int]:
    """The server and its children (its inventory's writer process)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(c) for c in children)]


def status(pid: int, key: str) -> int:
    """kB, summed over the server and its children (for VmHWM: each one's peak)."""
    total = 0
    for p in family(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--sources", type=int, default=150)
    ap.add_argument("--rate", type=float, default=0,
                    help="datagrams a second (default 0: as fast as the attacker can)")  # fmt: skip
    args = ap.parse_args()
    why = netns_unavailable()
    if why:
        raise SystemExit(f"this benchmark builds network namespaces: {why}")
    work = Path(tempfile.mkdtemp(prefix="preprov-bench-hostile-"))
    state = work / "state"
    results: dict[str, object] = {"args": vars(args)}
    with Lab() as lab:
        srv, flood = lab.host("srv"), lab.host("flood")
        phone, bare = lab.host("phone"), lab.host("bare", addresses=False)
        net4, net6 = srv.ipv4.network, srv.ipv6.network
        v4 = [str(net4[100 + i]) for i in range(min(args.sources, 150))]
        v6 = [str(net6[0x100 + i]) for i in range(max(1, args.sources // 4))]
        for a in v4:
            flood.exec("ip", "addr", "add", f"{a}/{net4.prefixlen}", "dev", "eth0")
        for a in v6:
            flood.exec("ip", "-6", "addr", "add", f"{a}/{net6.prefixlen}", "dev", "eth0", "nodad")
        log = work / "server.log"
        server = start_and_wait(
            [*srv.prefix(), *pin(0), sys.executable, "-m", "preprov", "serve",
             "--interface", "eth0", "--state-dir", str(state), "--log-format", "json"],
            log, b'"server.started"',
        )  # fmt: skip
        try:
            pid = server.pid
            before = Phones(phone, bare, srv)
            before.once()  # the baseline: every kind works before the flood
            phones = Phones(phone, bare, srv)
            rss_before = status(pid, "VmRSS")
            peak_fds = [0]
            watching = threading.Event()

            def watch() -> None:
                while not watching.is_set():
                    with contextlib.suppress(OSError):
                        fds = sum(len(list(Path(f"/proc/{p}/fd").iterdir()))
                                  for p in family(pid))  # fmt: skip
                        peak_fds[0] = max(peak_fds[0], fds)
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch)
            watcher.start()
            attack = [sys.executable, str(HERE / "hostile_flood.py"), str(srv.ipv4.ip),
                      str(srv.ipv6.ip), "eth0", str(args.count), str(args.rate),
                      *v4, "--", *v6]  # fmt: skip
            phones.start()
            r = subprocess.run([*flood.prefix(), *pin(1), *attack], capture_output=True, text=True)
            phones.stop()
            if r.returncode != 0:
                raise SystemExit(f"the flooder failed:\n{r.stderr[-3000:]}")
            flooded = json.loads(r.stdout.strip().splitlines()[-1])
            rss_peak = status(pid, "VmHWM")
            time.sleep(40)  # answered exchanges linger 32 s, offers 30 s
            watching.set()
            watcher.join()
            rss_after = status(pid, "VmRSS")
            # the same flood again: memory that plateaus is a high-water mark, memory
            # that grows again is held by the server
            again = subprocess.run(
                [*flood.prefix(), *pin(1), *attack], capture_output=True, text=True
            )
            time.sleep(40)
            rss_again = status(pid, "VmRSS")
            after = Phones(phone, bare, srv)
            after.once()
            alive = server.poll() is None and again.returncode == 0
        finally:
            stop(server)
    text = log.read_text(errors="replace")
    internal = text.count('"event":"internal.error"')
    tracebacks = text.count("Traceback")
    size = dir_bytes(state)
    print(f"flood: {sum(flooded['datagrams'].values()):,} datagrams in {flooded['seconds']} s "
          f"from {len(v4)} IPv4 and {len(v6)} IPv6 addresses of the segment")  # fmt: skip
    for ch in ("sip-pnp", "dhcpv4", "dhcpv6", "tftp"):
        sent, got = flooded["sent"][ch], flooded["received"][ch]
        print(f"  {ch:8} {flooded['datagrams'][ch]:>9,} datagrams, {sent:>12,} bytes in, "
              f"{got:>12,} bytes out: {got / max(sent, 1):.3f} out per byte in")  # fmt: skip
    print(f"state directory: {size / 2**20:.1f} MiB (budget 256 MiB, inventory.max_bytes)")
    print(f"resident memory (the server and its writer process): {rss_before / 1024:.0f} MiB "
          f"before, {rss_peak / 1024:.0f} MiB peak (the sum of each one's), "
          f"{rss_after / 1024:.0f} MiB 40 s after, {rss_again / 1024:.0f} MiB 40 s after the same "
          "flood again")  # fmt: skip
    print(f"descriptors: {peak_fds[0]} at most")
    print(f"internal errors: {internal}, tracebacks: {tracebacks}, server alive: {alive}")
    print("phones during the flood (provisioned / boots):")
    for kind, (ok, n) in phones.tally().items():
        print(f"  {kind:22} {ok} / {n}")
    for reason, n in phones.reasons.most_common(8):
        print(f"  failed x{n}: {reason}")
    print("phones before: " + ", ".join(f"{k} {ok}/{n}" for k, (ok, n) in before.tally().items()))
    print("phones after: " + ", ".join(f"{k} {ok}/{n}" for k, (ok, n) in after.tally().items()))
    results.update(flooded=flooded, state_bytes=size, peak_fds=peak_fds[0],
                   rss_kib=[rss_before, rss_peak, rss_after, rss_again],
                   internal_errors=internal, tracebacks=tracebacks,
                   phones=phones.tally(), after=after.tally(), alive=alive)  # fmt: skip
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "hostile.json").write_text(json.dumps(results, indent=2))
    if "PREPROV_BENCH_KEEP" in os.environ:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    ok = (
        alive
        and not internal
        and not tracebacks
        and all(n and ok for ok, n in after.tally().values())
    )
    return 0 if ok else 1


class Phones:
    """Simulated phones booting again and again, one of each kind at a time."""

    KINDS = {
        "sip-pnp": ("phone", ["--no-option160", "--no-option159", "--no-option66"]),
        "dhcpinform-option-160": ("phone", ["--no-sippnp"]),
        "dhcpv4-dora-option-160": ("bare", ["--no-sippnp"]),
        "dhcpv6-option-17": ("phone", ["--ip-mode", "ipv6"]),
    }

    def __init__(self, phone: object, bare: object, srv: object) -> None:
        self.hosts = {"phone": phone, "bare": bare}
        self.srv = srv
        self.results: dict[str, list[bool]] = {k: [] for k in [*self.KINDS, "tftp"]}
        self.reasons: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def boot(self, kind: str, n: int) -> bool:
        if kind == "tftp":
            host = self.hosts["phone"]
            cmd = [*host.prefix(), "tftp", str(self.srv.ipv4.ip), "-m", "binary",  # type: ignore[attr-defined]
                   "-c", "get", "KX-HDV130.cfg", f"/tmp/preprov-hostile-{n}.cfg"]  # fmt: skip
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            return r.returncode == 0 and "Error" not in r.stdout + r.stderr
        where, flags = self.KINDS[kind]
        host = self.hosts[where]
        mac = f"0080F0{0xE0000 + n:06X}"
        r = subprocess.run([*host.prefix(), *pin(1), sys.executable, "-m", "preprov", "phone",  # type: ignore[attr-defined]
                            "--interface", "eth0", "--mac", mac, "--json", *flags],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        if r.returncode != 0:
            try:
                reason = json.loads(r.stdout).get("reason") or r.stderr[-200:]
            except ValueError:
                reason = (r.stdout + r.stderr)[-200:]
            self.reasons[f"{kind}: {reason}"] += 1
        return r.returncode == 0

    def once(self) -> None:
        for i, kind in enumerate(self.results):
            self.results[kind].append(self.boot(kind, i))

    def start(self) -> None:
        def loop(kinds: tuple[str, ...], base: int) -> None:
            n = base
            while not self._stop.is_set():
                kind = kinds[n % len(kinds)]
                self.results[kind].append(self.boot(kind, n))
                n += 1

        # one `preprov phone` at a time per namespace (ports 5060, 68 and 546 are one
        # per namespace): the phone with an address cycles through PnP, DHCPINFORM and
        # DHCPv6; the one without leases by DORA; tftp-hpa fetches beside them
        for i, kinds in enumerate((("sip-pnp", "dhcpinform-option-160", "dhcpv6-option-17"),
                                   ("dhcpv4-dora-option-160",), ("tftp",))):  # fmt: skip
            t = threading.Thread(target=loop, args=(kinds, 1000 * (i + 1)))
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def tally(self) -> dict[str, tuple[int, int]]:
        return {k: (sum(v), len(v)) for k, v in self.results.items()}


if __name__ == "__main__":
    sys.exit(main())
