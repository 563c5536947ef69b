"""`preprov demo`: the whole flow on one machine, in a lab of network namespaces.

A server namespace and one namespace per phone on a Linux bridge (addresses of
198.18.0.0/15 and fd00::/8 only); `preprov serve --interface eth0` with the
defaults in the first, `preprov phone` in the others, all at once; a table of
each phone's steps and timings; and the lab torn down again, whatever happens.
Phones take turns: one with a static address (SIP PnP), one without (DHCPv4
lease, then SIP PnP), one without and with SIP PnP switched off (DHCPv4
option 160), one in IPv6 mode (DHCPv6 option 17).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .lab import Lab, netns_unavailable
from .phone.personas import PERSONAS

DEMO_PHONES = [
    ("0080F0C571EB", "KX-HDV130"),
    ("0080F0C571EC", "KX-HDV230N"),
    ("0080F0C571ED", "KX-HDV430"),
    ("0080F0C571EE", "KX-TGP600"),
    ("0080F0C571EF", "KX-HDV330"),
]


def _wait_started(
    log: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"server.started"' in line:
                return dict(json.loads(line))
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"the server did not start within {timeout:g} s:\n{log.read_text()}")


# a MAC of each vendor's own OUI for its demo phone
VENDOR_OUIS = {key: p.oui for key, p in PERSONAS.items()}


def run_demo(phones: int, echo: Any = print, vendors: list[str] | None = None) -> int:
    """`vendors`: besides the Panasonic phones, one phone of each of these vendors
    (without an address: a DHCPv4 lease first, then its own channels)."""
    why = netns_unavailable()
    if why:
        echo(f"preprov demo builds network namespaces and {why}; run it as root.")
        return 2
    phones = max(1, min(phones, 250))
    work = Path(tempfile.mkdtemp(prefix="preprov-demo-"))
    with Lab() as lab:
        srv = lab.host("srv")
        more = f" and {len(vendors)} of other vendors" if vendors else ""
        echo(f"lab: server {srv.ipv4.ip} / {srv.ipv6.ip} on bridge {lab.net4}, {phones} "
             f"phone(s){more}")  # fmt: skip
        log = work / "server.log"
        with open(log, "wb") as f:
            server = subprocess.Popen(
                [*srv.prefix(), sys.executable, "-m", "preprov", "serve", "--interface", "eth0",
                 "--state-dir", str(work / "state"), "--log-format", "json"],
                stdout=f, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            started = _wait_started(log, server)
            for listener in started.get("listening", []):
                echo(f"server: {listener}")
            procs = []
            for i in range(phones):
                mac, model = DEMO_PHONES[i % len(DEMO_PHONES)]
                if i >= len(DEMO_PHONES):
                    mac = f"0080F0{0xD00000 + i:06X}"
                # 0: static address, 1: DHCPv4 then PnP, 2: DHCPv4 alone, 3: IPv6 mode
                kind = i % 4
                host = lab.host(f"ph{i}", addresses=kind == 0)
                extra = {2: ["--no-sippnp"], 3: ["--ip-mode", "ipv6"]}.get(kind, [])
                procs.append(
                    (mac, model, host.ipv4.ip if kind == 0 else "dhcp", subprocess.Popen(
                        [*host.prefix(), sys.executable, "-m", "preprov", "phone",
                         "--interface", "eth0", "--mac", mac, "--model", model, "--json", *extra],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    ))
                )  # fmt: skip
            for n, key in enumerate(vendors or []):
                host = lab.host(f"vd{n}", addresses=False)
                mac = f"{VENDOR_OUIS[key]}{0xDE0000 + n:06X}"
                procs.append(
                    (mac, key, "dhcp", subprocess.Popen(
                        [*host.prefix(), sys.executable, "-m", "preprov", "phone",
                         "--interface", "eth0", "--mac", mac, "--vendor", key, "--json"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    ))
                )  # fmt: skip
            rows = []
            for mac, model, ip, p in procs:
                out, err = p.communicate(timeout=120)
                try:
                    report = json.loads(out)
                    if model in VENDOR_OUIS:  # a vendor's phone: its model as it reported it
                        model = f"{model.capitalize()} {report.get('model', '')}"
                    rows.append((mac, model, ip, report))
                except ValueError:
                    rows.append((mac, model, ip, {"provisioned": False, "reason": err.strip()}))
        finally:
            server.terminate()
            server.wait(10)
    _print_table(rows, echo)
    ok = sum(1 for r in rows if r[3].get("provisioned"))
    echo(f"{ok} of {len(rows)} phones provisioned; server log and inventory in {work}")
    echo(f"see them with: preprov inventory --state-dir {work / 'state'}")
    return 0 if ok == len(rows) else 1


def _print_table(rows: list[tuple[str, str, Any, dict[str, Any]]], echo: Any) -> None:
    echo("")
    echo(f"{'MAC':<13} {'MODEL':<22} {'PHONE IP':<16} {'CHANNEL':<18} {'URL AT':>8} "
         f"{'FILES':>6} {'DONE':>8}  RESULT")  # fmt: skip
    for mac, model, ip, r in rows:
        steps = {s["step"]: s["t_ms"] for s in r.get("steps", [])}
        files = r.get("files", [])
        good = sum(1 for f in files if f.get("status") == 200)
        got_url = steps.get("pnp.notify", steps.get("dhcpv4.ack", steps.get("dhcpv6.reply")))
        done = steps.get("provisioned", steps.get("failed"))
        result = "provisioned" if r.get("provisioned") else f"FAILED: {r.get('reason')}"
        leased = r.get("ip") or r.get("ip6")
        shown_ip = f"{leased}*" if ip == "dhcp" and leased else ip
        echo(
            f"{mac:<13} {model:<22} {shown_ip!s:<16} {r.get('channel') or '-':<18} "
            f"{_ms(got_url):>8} {f'{good}/{len(files)}':>6} {_ms(done):>8}  {result}"
        )
    echo("(URL AT: time from boot to the NOTIFY or DHCP ACK that gave the URL; DONE: to the")
    echo(" last file fetched; * an address leased by DHCP, put on the phone's interface)")
    echo("")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}ms"
