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


RELAY6_SCRIPT = r"""
import ipaddress, socket, sys
from preprov.dhcp6 import codec as c
server, relay_ip, link = sys.argv[1], sys.argv[2], sys.argv[3]
duid = b"\x00\x03\x00\x01\x00\x80\xf0\xaa\xbb\xcc"
inner = c.encode(c.Message(c.SOLICIT, 0x5150, [(c.CLIENTID, duid), (c.ORO, b"\x00\x11"),
                 (c.RAPID_COMMIT, b""), (c.IA_NA, c.IaNa(1, 0, 0).encode())]))
forw = c.Relay(c.RELAY_FORW, 0, ipaddress.IPv6Address(link), ipaddress.IPv6Address("fe80::99"),
               [(c.INTERFACE_ID, b"sw1-port7"), (c.RELAY_MSG, inner)])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((relay_ip, 547))
s.settimeout(5)
s.sendto(c.encode(forw), (server, 547))
data, addr = s.recvfrom(4096)
sys.stdout.write(data.hex() + " " + addr[0] + " " + str(addr[1]))
"""


def test_handcrafted_relay_forw_gets_a_relay_repl(lab: Lab, tmp_path: Path) -> None:
    import ipaddress

    from preprov.dhcp6 import codec as c

    srv = lab.host("srv")
    relay = lab.host("relay")
    cfg = tmp_path / "relay6.yaml"
    cfg.write_text(
        "dhcp6:\n  subnets:\n"
        f"    - {{prefix: '{lab.net6}', pool: ['{lab.net6[0x1000]}', '{lab.net6[0x1FFF]}']}}\n"
        "    - {prefix: 'fd00:77::/64', pool: ['fd00:77::100', 'fd00:77::1ff']}\n"
    )
    sp = start_server(
        tmp_path, "--interface", "eth0", "--config", str(cfg), netns=srv.ns, port=8080
    )
    try:
        r = subprocess.run(
            [*relay.prefix(), sys.executable, "-c", RELAY6_SCRIPT, str(srv.ipv6.ip),
             str(relay.ipv6.ip), "fd00:77::1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-1500:]
        wire, src, port = r.stdout.split()
        assert (src, port) == (str(srv.ipv6.ip), "547")
        repl = c.decode(bytes.fromhex(wire))
        assert isinstance(repl, c.Relay) and repl.msg_type == c.RELAY_REPL
        assert repl.link_address == ipaddress.IPv6Address("fd00:77::1")
        assert repl.get(c.INTERFACE_ID) == b"sw1-port7"
        inner = c.decode(repl.get(c.RELAY_MSG) or b"")
        assert isinstance(inner, c.Message) and inner.msg_type == c.REPLY
        (addr,) = c.IaNa.decode(inner.get(c.IA_NA) or b"").addresses
        assert addr.address in ipaddress.IPv6Network("fd00:77::/64")
        enterprise, subs = c.decode_vendor_opts(inner.get(c.VENDOR_OPTS) or b"")
        assert (enterprise, dict(subs)[1]) == (
            258,
            f"http://[{srv.ipv6.ip}]:8080/{{MODEL}}.cfg".encode(),
        )
        (ev,) = events(sp, "dhcp6.answered")
        assert ev["relayed"] == 1
    finally:
        assert sp.stop() == 0


def test_kill_9_keeps_dhcpv6_bindings(lab: Lab, tmp_path: Path) -> None:
    """A binding answered before a kill -9 is in the store, and the restarted
    server neither hands its address to another client nor takes it from its own."""
    import signal
    import sqlite3

    srv = lab.host("srv")
    first, second = lab.host("phone1", addresses=False), lab.host("phone2", addresses=False)
    (tmp_path / "p1").mkdir()
    (tmp_path / "p2").mkdir()
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    ip = dhclient6(first, tmp_path / "p1", stateless=False)["new_ip6_address"]
    sp.proc.send_signal(signal.SIGKILL)
    sp.proc.wait()
    db = sqlite3.connect(sp.state_dir / "preprov.db")
    rows = db.execute("SELECT state FROM leases WHERE ip = ?", (ip,)).fetchall()
    db.close()
    assert rows == [("bound",)], f"binding for {ip} after kill -9: {rows}"
    sp2 = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        other = dhclient6(second, tmp_path / "p2", stateless=False)["new_ip6_address"]
        again = dhclient6(first, tmp_path / "p1", stateless=False)
    finally:
        assert sp2.stop() == 0
    assert other != ip, "the restarted server gave a bound address to another client"
    assert again["new_ip6_address"] == ip, again
