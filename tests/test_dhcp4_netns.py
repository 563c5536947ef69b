"""DHCPv4 across namespaces: ISC dhclient, busybox udhcpc and a relay against preprov serve."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from preprov.files.lint import lint
from preprov.lab import Host, Lab
from serverproc import ServerProc, start_server

HERE = Path(__file__).parent / "dhcp"


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is not installed")
        pytest.skip(f"{tool} is not installed")


def dhclient(phone: Host, tmp: Path) -> str:
    need("dhclient")
    lease = tmp / "dhclient.leases"
    pid = tmp / "dhclient.pid"
    r = subprocess.run(
        [*phone.prefix(), "dhclient", "-1", "-v", "-cf", str(HERE / "dhclient.conf"),
         "-lf", str(lease), "-pf", str(pid), "-sf", "/bin/true", "eth0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if pid.exists():
        subprocess.run(["kill", pid.read_text().strip()], check=False)
    assert r.returncode == 0, r.stderr[-1500:]
    return lease.read_text()


def udhcpc(phone: Host, tmp: Path) -> dict[str, str]:
    need("udhcpc")
    out = tmp / "udhcpc.env"
    r = subprocess.run(
        [*phone.prefix(), "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-O", "159",
         "-O", "160", "-O", "tftp", "-O", "bootfile", "-s", str(HERE / "udhcpc-script.sh")],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, UDHCPC_OUT=str(out)),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-1000:]
    return dict(line.split("=", 1) for line in out.read_text().splitlines())


def option(lease: str, name: str) -> str:
    for line in lease.splitlines():
        line = line.strip()
        if line.startswith(f"option {name} "):
            return line[len(f"option {name} ") :].rstrip(";").strip('"')
    raise AssertionError(f"no option {name} in\n{lease}")


def events(sp: ServerProc, kind: str) -> list[dict[str, object]]:
    return [e for e in sp.events() if e.get("event") == kind]


def test_dhclient_gets_a_lease_and_the_exact_strings_and_the_url_serves(
    lab: Lab, tmp_path: Path
) -> None:
    srv = lab.host("srv")
    phone = lab.host("phone", addresses=False)
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        lease = dhclient(phone, tmp_path)
        base = f"http://{srv.ipv4.ip}:8080"
        assert option(lease, "pana-option-160") == base
        assert option(lease, "pana-option-159") == base
        assert option(lease, "tftp-server-name") == base + "/{MODEL}.cfg"
        assert option(lease, "bootfile-name") == "{MODEL}.cfg"
        ip = next(
            line.split()[1].rstrip(";") for line in lease.splitlines() if "fixed-address" in line
        )
        assert (
            ip.startswith(str(lab.net4.network_address)[:-1]) and int(ip.rsplit(".", 1)[1]) >= 128
        )
        # the phone appends {MODEL}.cfg to option 160: that URL serves the Panasonic file
        phone.exec("ip", "addr", "add", f"{ip}/{lab.net4.prefixlen}", "dev", "eth0")
        body = subprocess.run(
            [*phone.prefix(), "curl", "-sS", "--max-time", "5", "-A",
             "Panasonic_KX-HDV130/01.000 (0080f0c571eb)", base + "/KX-HDV130.cfg"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        assert lint(body) == [] and b"CFG_STANDARD_FILE_PATH" in body
        (ack,) = [e for e in events(sp, "dhcp4.answered") if e["message"] == "DHCPACK"]
        assert ack["ip"] == ip and ack["rule"] == "default"
        assert {66, 67, 159, 160} <= set(ack["options"])  # type: ignore[arg-type]
    finally:
        assert sp.stop() == 0


def test_udhcpc_gets_a_lease_and_the_exact_strings(lab: Lab, tmp_path: Path) -> None:
    srv = lab.host("srv")
    phone = lab.host("phone", addresses=False)
    # busybox checks option 66 as a host name and prints "bad" for a URL: the host form
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dhcp4:\n  options:\n    option66: host\n")
    sp = start_server(
        tmp_path, "--interface", "eth0", "--config", str(cfg), netns=srv.ns, port=8080
    )
    try:
        env = udhcpc(phone, tmp_path)
        base = f"http://{srv.ipv4.ip}:8080"
        assert bytes.fromhex(env["opt160"]).decode() == base
        assert bytes.fromhex(env["opt159"]).decode() == base
        assert env["tftp"] == str(srv.ipv4.ip)
        assert env["bootfile"] == "{MODEL}.cfg"
        assert env["serverid"] == str(srv.ipv4.ip) and env["router"] == str(srv.ipv4.ip)
        assert env["ip"] in {e["ip"] for e in events(sp, "dhcp4.lease")}
    finally:
        assert sp.stop() == 0


RELAY_SCRIPT = r"""
import socket, sys
from pydhcp.packet import DHCPMessage, DHCPMessageType, DHCPOpcode
server, relay_ip, giaddr = sys.argv[1], sys.argv[2], sys.argv[3]
m = DHCPMessage(DHCPOpcode.BOOTREQUEST, xid=0x5150, hops=1, giaddr=giaddr,
                chaddr=bytes.fromhex("0080f0aabbcc"))
m.options[53] = DHCPMessageType.DHCPDISCOVER
m.options[55] = bytes([1, 3, 66, 67, 159, 160])
m.options[82] = bytes([1, 4]) + b"port" + bytes([2, 3]) + b"sw1"
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rx.bind((giaddr, 67))
rx.settimeout(5)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tx.bind((relay_ip, 67))
tx.sendto(m.encode(), (server, 67))
data, addr = rx.recvfrom(4096)
sys.stdout.write(data.hex() + " " + addr[0] + " " + str(addr[1]))
"""


def test_relayed_discover_gets_an_offer_from_the_relay_subnet(lab: Lab, tmp_path: Path) -> None:
    from scapy.layers.dhcp import BOOTP, DHCP

    srv = lab.host("srv")
    relay = lab.host("relay")
    remote = "198.19.7"  # the relay's far subnet (benchmarking range)
    relay.exec("ip", "addr", "add", f"{remote}.1/24", "dev", "eth0")
    srv.exec("ip", "route", "add", f"{remote}.0/24", "via", str(relay.ipv4.ip))
    cfg = tmp_path / "relay.yaml"
    local = lab.net4
    cfg.write_text(
        "dhcp4:\n  subnets:\n"
        f"    - {{subnet: {local}, pool: [{local[200]}, {local[250]}]}}\n"
        f"    - {{subnet: {remote}.0/24, pool: [{remote}.100, {remote}.199], router: {remote}.1}}\n"
    )
    sp = start_server(
        tmp_path, "--interface", "eth0", "--config", str(cfg), netns=srv.ns, port=8080
    )
    try:
        r = subprocess.run(
            [*relay.prefix(), sys.executable, "-c", RELAY_SCRIPT, str(srv.ipv4.ip),
             str(relay.ipv4.ip), f"{remote}.1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-1500:]
        wire_hex, src, sport = r.stdout.split()
        assert (src, sport) == (str(srv.ipv4.ip), "67")
        # decoded by scapy, independently of the codec that built it
        pkt = BOOTP(bytes.fromhex(wire_hex))
        opts = {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple)}
        assert opts["message-type"] == 2  # OFFER
        assert (
            pkt.yiaddr.startswith(remote + ".") and 100 <= int(pkt.yiaddr.rsplit(".", 1)[1]) <= 199
        )
        assert pkt.giaddr == f"{remote}.1"
        assert opts["router"] == f"{remote}.1"
        assert opts["relay_agent_information"] == bytes([1, 4]) + b"port" + bytes([2, 3]) + b"sw1"
        # scapy names 160 and 159 by their IANA meanings; the payloads are the plain URLs
        base = f"http://{srv.ipv4.ip}:8080".encode()
        assert opts["v4-captive-portal"] == base and opts["v4-portparams"] == base
        assert opts["tftp_server_name"] == base + b"/{MODEL}.cfg"
        assert opts["boot-file-name"] == b"{MODEL}.cfg"
        (offer,) = events(sp, "dhcp4.answered")
        assert offer["to"] == f"{remote}.1:67" and offer["client"] == pkt.yiaddr
    finally:
        assert sp.stop() == 0


def boot_phone(phone: Host, *flags: str) -> tuple[int, dict[str, object], str]:
    r = subprocess.run(
        [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface", "eth0",
         "--mac", "0080F0C571EB", "--json", *flags],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}, r.stderr


def test_simulated_phone_follows_160_then_159_then_66(lab: Lab, tmp_path: Path) -> None:
    srv = lab.host("srv")
    phone = lab.host("phone", addresses=False)
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        for flags, channel in [
            ((), "dhcpv4-option-160"),
            (("--no-option160",), "dhcpv4-option-159"),
            (("--no-option160", "--no-option159"), "dhcpv4-option-66"),
        ]:
            rc, report, err = boot_phone(phone, "--no-sippnp", *flags)
            assert rc == 0, err + json.dumps(report)[-1500:]
            assert report["channel"] == channel and report["provisioned"]
            assert str(report["ip"]).startswith(str(lab.net4.network_address)[:-1])
            files = report["files"]
            assert [f["status"] for f in files] == [200, 200, 200, 200]  # type: ignore[index]
            # the leased address was put on the interface and taken off again
            assert "inet " not in phone.exec("ip", "-4", "addr", "show", "dev", "eth0").stdout
        # with a static address the phone asks with DHCPINFORM
        phone.exec("ip", "addr", "add", f"{lab.net4[77]}/{lab.net4.prefixlen}", "dev", "eth0")
        rc, report, err = boot_phone(phone, "--no-sippnp")
        assert rc == 0, err
        steps = [s["step"] for s in report["steps"]]  # type: ignore[union-attr]
        assert "dhcpv4.inform-sent" in steps and report["channel"] == "dhcpv4-option-160"
    finally:
        assert sp.stop() == 0


def test_simulated_phone_without_address_boots_dhcp_then_pnp(lab: Lab, tmp_path: Path) -> None:
    srv = lab.host("srv")
    phone = lab.host("phone", addresses=False)
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        rc, report, err = boot_phone(phone)
        assert rc == 0, err
        steps = [s["step"] for s in report["steps"]]  # type: ignore[union-attr]
        assert steps.index("dhcpv4.ack") < steps.index("pnp.subscribe-sent")
        assert report["channel"] == "sip-pnp"
    finally:
        assert sp.stop() == 0


def perfdhcp(client: Host, server: str, rate: int, clients: int, seconds: int) -> str:
    need("perfdhcp")
    r = subprocess.run(
        [*client.prefix(), "perfdhcp", "-4", "-r", str(rate), "-R", str(clients), "-p", str(seconds),
         "-l", "eth0", server],
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    return r.stdout + r.stderr


def perf_figures(out: str) -> list[dict[str, int]]:
    """sent, received, drops and non unique addresses of DISCOVER-OFFER and REQUEST-ACK."""
    blocks = out.split("***Statistics for: ")[1:]
    figures = []
    for b in blocks:
        f = {}
        for key in ("sent packets", "received packets", "drops", "non unique addresses"):
            line = next(line for line in b.splitlines() if line.startswith(key + ":"))
            f[key] = int(line.split(":")[1].split()[0])
        figures.append(f)
    return figures


def addresses_given_twice(state: Path) -> dict[str, set[str]]:
    """Addresses bound to more than one client in the event log, with no release between."""
    import sqlite3

    db = sqlite3.connect(state / "preprov.db")
    rows = db.execute(
        "SELECT json_extract(data, '$.ip'), json_extract(data, '$.client_id'), "
        "json_extract(data, '$.state') FROM events WHERE kind = 'dhcp4.lease' ORDER BY id"
    ).fetchall()
    db.close()
    holder: dict[str, str] = {}
    twice: dict[str, set[str]] = {}
    for ip, client, state_ in rows:
        if state_ == "bound":
            if ip in holder and holder[ip] != client:
                twice.setdefault(ip, set()).update({holder[ip], client})
            holder[ip] = client
        else:
            holder.pop(ip, None)
    return twice


def test_perfdhcp_at_a_moderate_rate_no_drops_no_address_twice(lab: Lab, tmp_path: Path) -> None:
    srv = lab.host("srv")
    client = lab.host("perf")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        out = perfdhcp(client, str(srv.ipv4.ip), rate=200, clients=100, seconds=5)
    finally:
        assert sp.stop() == 0
    do, ra = perf_figures(out)
    assert do["sent packets"] >= 900 and do["drops"] == 0 and ra["drops"] == 0, out[-2000:]
    assert do["non unique addresses"] == 0 and ra["non unique addresses"] == 0
    assert addresses_given_twice(sp.state_dir) == {}


def test_kill_9_during_perfdhcp_then_restart_gives_no_address_twice(
    lab: Lab, tmp_path: Path
) -> None:
    import signal
    import time

    need("perfdhcp")
    srv = lab.host("srv")
    client = lab.host("perf")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    perf = subprocess.Popen(
        [*client.prefix(), "perfdhcp", "-4", "-r", "300", "-R", "120", "-p", "6", "-l", "eth0",
         str(srv.ipv4.ip)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(2.0)
    sp.proc.send_signal(signal.SIGKILL)
    sp.proc.wait()
    before = addresses_given_twice(sp.state_dir)
    import sqlite3

    db = sqlite3.connect(sp.state_dir / "preprov.db")
    (bound_before,) = db.execute("SELECT count(*) FROM leases WHERE state = 'bound'").fetchone()
    db.close()
    assert bound_before >= 100, (
        "the server should have bound most of the 120 clients before the kill"
    )
    sp2 = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        perf.communicate(timeout=60)
        out = perfdhcp(client, str(srv.ipv4.ip), rate=200, clients=120, seconds=3)
    finally:
        assert sp2.stop() == 0
    assert before == {}
    assert addresses_given_twice(sp.state_dir) == {}
    _, ra = perf_figures(out)
    assert ra["received packets"] > 0 and ra["non unique addresses"] == 0, out[-1500:]
