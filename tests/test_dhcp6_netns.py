"""DHCPv6 across namespaces: ISC dhclient -6 (stateful and stateless) and a relay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from preprov.lab import Host, Lab
from serverproc import ServerProc, start_server
from test_dhcp4_netns import HERE, need


def dhclient6(phone: Host, tmp: Path, stateless: bool) -> dict[str, str]:
    """Run dhclient -6 once; what its script was handed, as new_<option> variables."""
    need("dhclient")
    out = tmp / f"dhclient6-{'S' if stateless else 'N'}.env"
    script = tmp / "dhclient-script.sh"
    # dhclient gives its script an environment of its own making: the path is written in
    script.write_text(f"#!/bin/sh\nenv | grep -E '^(reason|new_)' >> {out}\nexit 0\n")
    script.chmod(0o755)
    pid = tmp / "dhclient6.pid"
    r = subprocess.run(
        [*phone.prefix(), "dhclient", "-6", "-1", "-v", *(["-S"] if stateless else []),
         "-cf", str(HERE / "dhclient6.conf"), "-lf", str(tmp / "dhclient6.leases"),
         "-pf", str(pid), "-sf", str(script), "eth0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if pid.exists():
        subprocess.run(["kill", pid.read_text().strip()], check=False)
    assert r.returncode == 0, r.stderr[-1500:]
    env: dict[str, str] = {}
    for line in out.read_text().splitlines():
        k, _, v = line.partition("=")
        env[k] = v.strip("'\"")
    return env


def events(sp: ServerProc, kind: str) -> list[dict[str, object]]:
    return [e for e in sp.events() if e.get("event") == kind]


def test_dhclient6_stateful_and_stateless_get_the_exact_option_17(lab: Lab, tmp_path: Path) -> None:
    srv = lab.host("srv")
    phone = lab.host("phone", addresses=False)
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    url = f"http://[{srv.ipv6.ip}]:8080/{{MODEL}}.cfg"
    try:
        stateful = dhclient6(phone, tmp_path, stateless=False)
        assert stateful["new_pana_url"] == url
        ip = stateful["new_ip6_address"]
        assert ip.startswith(str(lab.net6.network_address).rstrip(":") + ":")
        assert int(ip.rsplit(":", 1)[1], 16) >= 0x1000
        stateless = dhclient6(phone, tmp_path, stateless=True)
        assert stateless["new_pana_url"] == url and "new_ip6_address" not in stateless
        # that URL, with the model, serves the Panasonic file over IPv6
        phone.exec("ip", "-6", "addr", "add", f"{ip}/64", "dev", "eth0", "nodad")
        body = subprocess.run(
            [*phone.prefix(), "curl", "-sS", "-g", "--max-time", "5", "-A",
             "Panasonic_KX-HDV130/01.000 (0080f0c571eb)", url.replace("{MODEL}", "KX-HDV130")],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        assert b"CFG_STANDARD_FILE_PATH" in body
        answers = events(sp, "dhcp6.answered")
        assert [a["request"] for a in answers] == ["SOLICIT", "REQUEST", "INFORMATION-REQUEST"]
        assert [e["ip"] for e in events(sp, "dhcp6.lease")] == [ip]
    finally:
        assert sp.stop() == 0
    duid = (sp.state_dir / "server-duid6").read_text().strip()
    assert duid.startswith("0004") and len(duid) == 36  # DUID-UUID, kept for the next start


def test_simulated_phone_ipv6_and_dual_modes(lab: Lab, tmp_path: Path) -> None:
    srv = lab.host("srv")
    phone = lab.host("phone", addresses=False)
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        for flags in (["--ip-mode", "ipv6"],
                      ["--ip-mode", "dual", "--no-sippnp", "--no-option160", "--no-option159",
                       "--no-option66"]):  # fmt: skip
            r = subprocess.run(
                [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface", "eth0",
                 "--mac", "0080F0C571EB", "--json", *flags],
                capture_output=True, text=True, timeout=90,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr + r.stdout[-2000:]
            report = json.loads(r.stdout)
            assert report["channel"] == "dhcpv6-option-17" and report["provisioned"]
            assert [f["status"] for f in report["files"]] == [200, 200, 200, 200]
    finally:
        assert sp.stop() == 0
