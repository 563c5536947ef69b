"""`preprov storm`: many simulated phones booting at once from one namespace.

Each phone is a SimulatedPhone in this one process, with its own MAC and model,
started at `--rate` a second, in the IP mode the `--mix` draws for it, through
the real channels: SIP PnP from an IPv4 address of its own (`--ipv4-range`, by
default the lower half of the interface's subnet, put on the interface for the
run), so that a server's per-source limits meet it as they would a real
phone, on a SIP port of its own; HTTP from that address too (IPv4 phones);
DHCPv6 from a client port of its own (preprov's DHCPv6 server answers the port
a request came from; port 546 is one per namespace). A progress bar while
they boot; then how many were provisioned, the failures grouped by reason,
and the 50th/95th/99th percentile time to provisioned per channel.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import math
import random
import re
import statistics
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .net import Interface
from .phone.core import PhoneProfile, Report
from .phone.driver import SimulatedPhone, run_ip

MODELS = ["KX-HDV130", "KX-HDV230N", "KX-HDV330", "KX-HDV430", "KX-TGP600", "KX-HDV100"]


def parse_weights(text: str, check: Callable[[str], str | None]) -> dict[str, int]:
    """`a:70,b:30` -> {"a": 70, "b": 30}; `check` says why a name is refused (or None).
    Raises ValueError with the reason."""
    out: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.partition(":")
        name = name.strip().lower()
        why = check(name)
        if why:
            raise ValueError(why)
        if not weight.strip().isdigit():
            raise ValueError(f"weight of {name} must be a whole number")
        out[name] = int(weight)
    if not sum(out.values()):
        raise ValueError("the weights add up to 0")
    return out


def parse_mix(text: str) -> dict[str, int]:
    """`ipv4:70,ipv6:10,dual:20` -> {"ipv4": 70, ...}; raises ValueError with the reason."""
    return parse_weights(text, lambda mode: None if mode in ("ipv4", "ipv6", "dual")
                         else f"{mode!r} is not ipv4, ipv6 or dual")  # fmt: skip


def parse_vendors(text: str) -> dict[str, int]:
    """`panasonic:50,yealink:20,snom:30` -> weights; only vendors with SIP PnP (a storm's
    phones share one namespace, so one DHCPv4 client port: they take PnP's answer)."""
    from .phone.personas import PERSONAS

    def check(key: str) -> str | None:
        if key != "panasonic" and key not in PERSONAS:
            return f"unknown vendor {key!r} (known: panasonic, {', '.join(PERSONAS)})"
        if key != "panasonic" and PERSONAS[key].pnp_user is None:
            return (f"{key} phones have no SIP PnP: a storm cannot boot them (one namespace, "
                    "one DHCP client port); use preprov demo --vendors")  # fmt: skip
        return None

    return parse_weights(text, check)


@dataclass
class Result:
    mode: str
    report: Report
    seconds: float


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q % of the values at or below it."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))] if s else float("nan")


def parse_range(text: str) -> list[str]:
    """`198.18.0.100-198.18.0.199` -> the addresses; raises ValueError with the reason."""
    first, sep, last = text.partition("-")
    try:
        a, b = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address(last.strip())
    except ValueError as e:
        raise ValueError(f"--ipv4-range {text!r}: {e}") from None
    if not sep or b < a or int(b) - int(a) >= 4096:
        raise ValueError(f"--ipv4-range {text!r}: FIRST-LAST, at most 4,096 addresses")
    return [str(ipaddress.IPv4Address(i)) for i in range(int(a), int(b) + 1)]


def default_range(iface: Interface, count: int) -> list[str]:
    """Addresses of the lower half of the interface's subnet (a server's zero-config
    pool is the upper half), not its own and not the subnet's first host (the
    server's or the gateway's, commonly); at most one per phone."""
    net = iface.ipv4[0].network
    own = {i.ip for i in iface.ipv4}
    half = list(net.hosts())[: max(1, (net.num_addresses - 2) // 2)]
    picks = [str(a) for a in half[1:] if a not in own]
    return picks[: max(1, count)]


async def run_storm(
    iface: Interface, phones: int, rate: float, mix: dict[str, int], timeout: float,
    seed: int = 1, sources: list[str] | None = None, vendors: dict[str, int] | None = None,
) -> list[Result]:  # fmt: skip
    if not iface.ipv4:
        raise ValueError(f"{iface.name} has no IPv4 address: the storm needs its subnet")
    sources = sources or default_range(iface, phones)
    prefix = iface.ipv4[0].network.prefixlen
    own = {str(i.ip) for i in iface.ipv4}
    added = [a for a in sources if a not in own]
    for a in added:
        await run_ip("addr", "add", f"{a}/{prefix}", "dev", iface.name)
    try:
        return await _storm(iface, phones, rate, mix, timeout, seed, sources,
                            vendors or {"panasonic": 1})  # fmt: skip
    finally:
        for a in added:
            await run_ip("addr", "del", f"{a}/{prefix}", "dev", iface.name)


async def _storm(
    iface: Interface, phones: int, rate: float, mix: dict[str, int], timeout: float,
    seed: int, sources: list[str], vendor_mix: dict[str, int],
) -> list[Result]:  # fmt: skip
    from .phone.personas import PERSONAS

    ip6 = str(iface.ipv6[0].ip) if iface.ipv6 else None
    rng = random.Random(seed)
    modes = rng.choices(list(mix), weights=list(mix.values()), k=phones)
    makers = rng.choices(list(vendor_mix), weights=list(vendor_mix.values()), k=phones)
    results: list[Result] = []

    async def boot(i: int, mode: str, progress: Progress, task: Any) -> None:
        persona = PERSONAS.get(makers[i])
        mac = f"{persona.oui if persona else '0080F0'}{0xA00000 + i:06X}"
        ip = sources[i % len(sources)]
        if persona is not None:  # another vendor's phone: its persona, in IPv4
            mode = "ipv4"
            profile = PhoneProfile(mac=mac, model=persona.model, fwver=persona.fwver,
                                   ip=ip, ip_mode=mode, sip_port=20000 + i,
                                   vendor=persona.key)  # fmt: skip
        else:
            profile = PhoneProfile(mac=mac, model=MODELS[i % len(MODELS)], fwver="01.000",
                                   ip=ip, ip6=ip6, ip_mode=mode, sip_port=20000 + i)  # fmt: skip
        phone = SimulatedPhone(profile, iface.name, dhcp6_port=40000 + i,
                               http_source=ip if mode == "ipv4" else None)  # fmt: skip
        started = time.monotonic()
        try:
            report = await phone.run(timeout)
        except OSError as e:
            report = Report(mac, profile.model, profile.fwver, mode, reason=f"cannot start: {e}")
        results.append(Result(mode, report, time.monotonic() - started))
        progress.advance(task)

    columns = (TextColumn("booting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("phones", total=phones)
        tasks = []
        for i, mode in enumerate(modes):
            tasks.append(asyncio.create_task(boot(i, mode, progress, task)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    return results


_MAC_LIKE = re.compile(r"[0-9A-Fa-f]{12}")
_ADDR_LIKE = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


def failure_group(reason: str) -> str:
    """A failure's reason with what differs from phone to phone (MACs in URLs and
    messages, addresses) masked, so that one cause is one group."""
    return _ADDR_LIKE.sub("<address>", _MAC_LIKE.sub("<MAC>", reason))


def refusals(results: list[Result]) -> Counter[str]:
    """What the server refused or let go unanswered, as the phones saw it."""
    seen: Counter[str] = Counter()
    for r in results:
        for f in r.report.files:
            if f.status is not None and f.status >= 400:
                seen[f"HTTP {f.status}"] += 1
        for step in r.report.steps:
            if step["step"].endswith("gave-up"):
                seen[step["step"]] += 1
    return seen


_REFUSAL_LINE = re.compile(
    r'^preprov_refusals_total\{channel="(?P<channel>[^"]*)",kind="(?P<kind>[^"]*)"\} '
    r"(?P<n>[\d.e+]+)$"
)


def server_refusals(metrics_url: str) -> Counter[str]:
    """The server's own count of what it refused or ignored (its Prometheus metrics),
    by channel and kind: read before and after a storm, the difference is the storm's."""
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    out: Counter[str] = Counter()
    for line in text.splitlines():
        m = _REFUSAL_LINE.match(line)
        if m:
            out[f"{m['channel']} {m['kind']}"] = int(float(m["n"]))
    return out


def summary(
    results: list[Result], groups: int = 10, server: Counter[str] | None = None
) -> tuple[str, dict[str, list[float]]]:
    ok = [r for r in results if r.report.provisioned]
    lines = [f"{len(ok)} of {len(results)} phones provisioned"]
    reasons = Counter(failure_group(r.report.reason or "?") for r in results
                      if not r.report.provisioned)  # fmt: skip
    for reason, n in reasons.most_common(groups):
        lines.append(f"  failed x{n}: {reason}")
    if len(reasons) > groups:
        rest = sum(n for _, n in reasons.most_common()[groups:])
        lines.append(f"  and {len(reasons) - groups} more groups ({rest} phones)")
    refused = refusals(results)
    if refused:
        lines.append("refused or unanswered, as the phones saw it: "
                     + ", ".join(f"{k} x{n}" for k, n in refused.most_common()))  # fmt: skip
    if server is not None:
        lines.append("refused or ignored, as the server counted it (its metrics): "
                     + (", ".join(f"{k} x{n}" for k, n in server.most_common() if n > 0)
                        or "nothing"))  # fmt: skip
    by_channel: dict[str, list[float]] = {}
    for r in ok:
        by_channel.setdefault(r.report.channel or "?", []).append(r.seconds * 1000)
    lines.append(f"{'channel':<20} {'phones':>6} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
    for ch, ms in sorted(by_channel.items()):
        lines.append(f"{ch:<20} {len(ms):>6} {percentile(ms, 50):>9.1f} {percentile(ms, 95):>9.1f} "
                     f"{percentile(ms, 99):>9.1f}")  # fmt: skip
    return "\n".join(lines), by_channel


def html_report(
    path: Path, text: str, by_channel: dict[str, list[float]],
    settings: dict[str, object] | None = None, results: list[Result] | None = None,
) -> None:  # fmt: skip
    """A page with the run's settings, the summary, per channel a histogram of time to
    provisioned (axes labelled), and a table of every phone."""
    parts = ["<h1>preprov storm</h1>"]
    if settings:
        parts.append("<table>" + "".join(f"<tr><th align=left>{html.escape(str(k))}</th>"
                                         f"<td>{html.escape(str(v))}</td></tr>"
                                         for k, v in settings.items()) + "</table>")  # fmt: skip
    parts.append(f"<pre>{html.escape(text)}</pre>")
    for ch, ms in sorted(by_channel.items()):
        top = max(ms) or 1.0
        bins = 20
        counts = [0] * bins
        for v in ms:
            counts[min(bins - 1, int(v / top * bins))] += 1
        peak = max(counts) or 1
        bars = "".join(
            f'<rect x="{i * 30 + 40}" y="{200 - c / peak * 180:.0f}" width="26" '
            f'height="{c / peak * 180:.0f}" fill="#3a7"><title>{c} phones, '
            f"{i * top / bins:.0f}-{(i + 1) * top / bins:.0f} ms</title></rect>"
            for i, c in enumerate(counts)
        )
        parts.append(
            f"<h2>{html.escape(ch)}: {len(ms)} phones, median {statistics.median(ms):.1f} ms</h2>"
            f'<svg width="660" height="250"><line x1="40" y1="200" x2="640" y2="200" '
            f'stroke="#333"/><line x1="40" y1="20" x2="40" y2="200" stroke="#333"/>{bars}'
            f'<text x="40" y="220">0 ms</text><text x="560" y="220">{top:.0f} ms</text>'
            f'<text x="250" y="245">time to provisioned</text>'
            f'<text x="2" y="28">{peak}</text><text x="2" y="200">0</text>'
            f'<text x="2" y="110" transform="rotate(-90 12 110)">phones</text></svg>'
        )
    if results:
        rows = "".join(
            f"<tr><td>{r.report.mac}</td><td>{html.escape(r.report.model)}</td>"
            f"<td>{r.mode}</td><td>{html.escape(r.report.ip or r.report.ip6 or '')}</td>"
            f"<td>{html.escape(r.report.channel or '-')}</td><td>{r.seconds * 1000:.1f}</td>"
            f"<td>{'provisioned' if r.report.provisioned else 'failed'}</td>"
            f"<td>{html.escape(r.report.reason or '')}</td></tr>"
            for r in sorted(results, key=lambda r: r.report.mac)
        )
        parts.append("<h2>Phones</h2><table border=1 cellspacing=0><tr><th>MAC</th>"
                     "<th>model</th><th>mode</th><th>address</th><th>channel</th><th>ms</th>"
                     f"<th>result</th><th>reason</th></tr>{rows}</table>")  # fmt: skip
    head = "<!doctype html><meta charset=utf-8><title>preprov storm</title>"
    path.write_text(head + "<body style='font-family:sans-serif'>" + "".join(parts) + "</body>")
