"""preprov storm: many simulated phones from one namespace against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from preprov.lab import Lab
from preprov.phone.core import Report
from preprov.storm import Result, failure_group, parse_mix, percentile, summary
from serverproc import start_server


def test_mix_and_percentiles() -> None:
    assert parse_mix("ipv4:70,ipv6:10,dual:20") == {"ipv4": 70, "ipv6": 10, "dual": 20}
    for bad, why in [("ipv5:1", "not ipv4"), ("ipv4:x", "whole number"), ("ipv4:0", "add up to 0")]:
        with pytest.raises(ValueError, match=why):
            parse_mix(bad)
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile(list(map(float, range(1, 101))), 99) == 99.0


def test_failures_are_grouped_by_cause() -> None:
    def failed(mac: str, reason: str) -> Result:
        return Result("ipv4", Report(mac, "KX-HDV130", "01.000", "ipv4", reason=reason), 1.0)

    results = [
        failed(f"0080F0{i:06X}", f"http://198.18.0.1:8080/Config0080F0{i:06X}.cfg: HTTP 403: "
               f"0080F0{i:06X}'s own file: the User-Agent names no MAC, 198.18.0.{i} is held by "
               "no device")
        for i in range(30)
    ] + [failed(f"0080F1{i:06X}", f"cause number {i}") for i in range(12)]  # fmt: skip
    assert failure_group(results[0].report.reason or "") == (
        "http://<address>:8080/Config<MAC>.cfg: HTTP 403: <MAC>'s own file: the User-Agent "
        "names no MAC, <address> is held by no device"
    )
    text, _ = summary(results, groups=5)
    assert "failed x30: http://<address>:8080/Config<MAC>.cfg: HTTP 403" in text
    assert "and 8 more groups (8 phones)" in text


def test_storm_provisions_every_phone_and_writes_the_report(lab: Lab, tmp_path: Path) -> None:
    srv = lab.host("srv")
    storm = lab.host("storm")
    # a server with its defaults: each phone comes from an address of its own, so the
    # per-source limits meet the storm as they would a lab of real phones
    addr = str(srv.ipv4.ip)
    sp = start_server(tmp_path, "--interface", "eth0", "--admin-listen", addr, "--admin-port",
                      "8081", netns=srv.ns, port=8080)  # fmt: skip
    report = tmp_path / "storm.html"
    try:
        r = subprocess.run(
            [*storm.prefix(), sys.executable, "-m", "preprov", "storm", "--interface", "eth0",
             "--phones", "40", "--rate", "100", "--mix", "ipv4:70,ipv6:10,dual:20",
             "--report", str(report), "--metrics", f"http://{addr}:8081/metrics",
             "--vendors", "panasonic:70,yealink:10,grandstream:10,snom:10"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "40 of 40 phones provisioned" in r.stdout
        vendors = {e.get("vendor") for e in sp.events() if e.get("event") == "pnp.subscribe"}
        assert {"Panasonic", "Yealink", "Grandstream", "Snom"} <= vendors  # a mixed lab
        assert "refused or ignored, as the server counted it (its metrics): " in r.stdout
        assert "sip-pnp" in r.stdout and "dhcpv6-option-17" in r.stdout
        page = report.read_text()
        assert page.count("<svg") == 2 and "40 of 40 phones provisioned" in page
        assert "time to provisioned" in page and page.count("<td>provisioned</td>") == 40
        assert "<th align=left>phones</th><td>40</td>" in page
        sources = {e["client"] for e in sp.events() if e.get("event") == "pnp.subscribe"}
        assert len(sources) >= 20  # not one address for all
        assert not [e for e in sp.events() if "rate limit" in str(e.get("reason", ""))]
        # the addresses it put on the interface are gone again
        left = storm.exec("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        assert left.count(" inet ") == 1
    finally:
        assert sp.stop() == 0


def test_vendor_mix_refuses_what_a_storm_cannot_boot() -> None:
    from preprov.storm import parse_vendors

    assert parse_vendors("panasonic:50,yealink:20") == {"panasonic": 50, "yealink": 20}
    for bad, why in (("poly:1", "no SIP PnP"), ("nokia:1", "unknown vendor"),
                     ("yealink:x", "whole number"), ("snom:0", "add up to 0")):  # fmt: skip
        try:
            parse_vendors(bad)
            raise AssertionError(bad)
        except ValueError as e:
            assert why in str(e)
