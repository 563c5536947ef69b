"""Two servers on one segment sharing one PostgreSQL inventory (README, "Several
servers"): perfdhcp and ISC dhclient against both at once, one server killed with
SIGKILL, PostgreSQL restarted; no address is ever held by two clients."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from preprov.lab import Host, Lab
from serverproc import ServerProc, start_server
from test_dhcp4_netns import HERE, need, perf_figures

pytestmark = pytest.mark.netns


def serve(tmp: Path, host: Host, url: str, name: str) -> ServerProc:
    d = tmp / name
    d.mkdir()
    return start_server(d, "--interface", "eth0", "--database", url, "--name", name,
                        "--log-level", "info", netns=host.ns, port=8080)  # fmt: skip


def held_twice(url: str) -> dict[str, set[str]]:
    """Addresses bound to two clients at once in the shared event log (every server's
    lease events, in commit order), with no release between."""
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT data FROM events WHERE kind = 'dhcp4.lease' ORDER BY id")
        holder: dict[str, str] = {}
        twice: dict[str, set[str]] = {}
        for (data,) in rows:
            d = json.loads(data)
            if d["state"] == "bound":
                if d["ip"] in holder and holder[d["ip"]] != d["client_id"]:
                    twice.setdefault(d["ip"], set()).update({holder[d["ip"]], d["client_id"]})
                holder[d["ip"]] = d["client_id"]
            else:
                holder.pop(d["ip"], None)
    return twice


def dhclients(lab: Lab, tmp: Path, n: int, tag: str) -> list[subprocess.Popen[str]]:
    """n phones without addresses, each running ISC dhclient once (DORA, then it exits)."""
    need("dhclient")
    procs = []
    for i in range(n):
        phone = lab.host(f"{tag}{i}", addresses=False)
        lease = tmp / f"{tag}{i}.leases"
        procs.append(subprocess.Popen(
            [*phone.prefix(), "dhclient", "-1", "-v", "-cf", str(HERE / "dhclient.conf"),
             "-lf", str(lease), "-pf", str(tmp / f"{tag}{i}.pid"), "-sf", "/bin/true", "eth0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    return procs


def leased(tmp: Path, tag: str, n: int, procs: list[subprocess.Popen[str]]) -> dict[str, str]:
    """Each phone's address, from its lease file, once its dhclient is done."""
    out = {}
    for i, p in enumerate(procs):
        log, _ = p.communicate(timeout=90)
        pid = tmp / f"{tag}{i}.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], check=False)
        assert p.returncode == 0, log[-1500:]
        text = (tmp / f"{tag}{i}.leases").read_text()
        addr = [ln.split()[1].rstrip(";") for ln in text.splitlines() if "fixed-address" in ln]
        out[f"{tag}{i}"] = addr[-1]
    assert len(out) == n
    return out


PAGE_SCRIPT = r"""
import json, sys
from playwright.sync_api import sync_playwright
admin, mac = sys.argv[1], sys.argv[2]
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])
    page = b.new_page(viewport={"width": 1400, "height": 700})
    page.goto(admin + "/")
    page.wait_for_selector("#live:has-text('live')", timeout=10000)
    print("READY", flush=True)
    sys.stdin.readline()  # the test has the other server serve a phone now
    page.wait_for_selector(f"tr.device[data-mac='{mac}']", timeout=20000)
    servers = [o.get_attribute("value") for o in page.locator("#server option").all()]
    page.select_option("#server", "bench-b")
    shown = page.eval_on_selector_all("tr.device", "trs => trs.map(t => t.dataset.mac)")
    cells = page.eval_on_selector_all("tr.device td:nth-child(10)", "tds => tds.map(t => t.textContent)")
    print(json.dumps({"servers": servers, "shown": shown, "cells": cells}), flush=True)
    b.close()
"""


def live_page(host: Host, sp: ServerProc, mac: str) -> subprocess.Popen[str]:
    """Server A's dashboard in chromium, open before the other server serves `mac`."""
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("chromium is not installed")
    page = subprocess.Popen([*host.prefix(), sys.executable, "-c", PAGE_SCRIPT, sp.admin, mac],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert page.stdout is not None and page.stdout.readline().strip() == "READY"
    return page


def summary(sp: ServerProc, host: Host) -> dict[str, Any]:
    # the admin listener is on the server's loopback, inside its namespace
    r = subprocess.run([*host.prefix(), "curl", "-s", f"{sp.admin}/api/status"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return {"rows": rows, "servers": {row["server"] for row in rows}}


def test_two_servers_one_database_perfdhcp_and_dhclient(
    lab: Lab, tmp_path: Path, pg_url: str
) -> None:
    need("perfdhcp")
    a_host, b_host, perf = lab.host("srva"), lab.host("srvb"), lab.host("perf")
    a = serve(tmp_path, a_host, pg_url, "bench-a")
    b = serve(tmp_path, b_host, pg_url, "bench-b")
    try:
        run = subprocess.Popen(
            [*perf.prefix(), "perfdhcp", "-4", "-r", "50", "-R", "60", "-p", "6", "-l", "eth0",
             "all"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        procs = dhclients(lab, tmp_path, 12, "p")
        got = leased(tmp_path, "p", 12, procs)
        out, _ = run.communicate(timeout=60)
        rows = summary(a, a_host)
        # A's dashboard, open, sees a phone B serves, live (LISTEN/NOTIFY), with B's name
        page = live_page(a_host, a, "0080F0B0B0B0")
        fetch = subprocess.run(
            [*perf.prefix(), "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-A",
             "Panasonic_KX-HDV130/01.000 (0080f0b0b0b0)",
             f"http://{b_host.ipv4.ip}:8080/Config0080F0B0B0B0.cfg"],
            capture_output=True, text=True)  # fmt: skip
        seen, _ = page.communicate("go\n", timeout=60)
    finally:
        assert a.stop() == 0 and b.stop() == 0
    assert len(set(got.values())) == 12, got  # every dhclient served, no address twice
    _, ra = perf_figures(out)
    assert ra["non unique addresses"] == 0 and ra["received packets"] > 0, out[-2000:]
    assert held_twice(pg_url) == {}
    # both servers answered, and either one's API shows the whole inventory with names
    with psycopg.connect(pg_url) as db:
        servers = {s for (s,) in db.execute("SELECT DISTINCT server FROM leases")}
    assert servers == {"bench-a", "bench-b"}
    assert rows["servers"] == {"bench-a", "bench-b"}
    assert fetch.stdout == "200"
    view = json.loads(seen)
    assert {"bench-a", "bench-b"} <= set(view["servers"])
    assert "0080F0B0B0B0" in view["shown"] and set(view["cells"]) == {"bench-b"}


def test_one_server_killed_and_postgres_restarted_the_other_keeps_serving(
    lab: Lab, tmp_path: Path, pg_url: str, pg_cluster: Any
) -> None:
    """Mid-run, under perfdhcp: server a killed with SIGKILL, then PostgreSQL stopped
    (immediate, as a crash) and started again. Server b keeps serving files while the
    database is away, recovers by itself, and no address is ever bound twice."""
    import signal

    need("perfdhcp")
    a_host, b_host, perf = lab.host("srva"), lab.host("srvb"), lab.host("perf")
    a = serve(tmp_path, a_host, pg_url, "bench-a")
    b = serve(tmp_path, b_host, pg_url, "bench-b")
    try:
        first = leased(tmp_path, "p", 6, dhclients(lab, tmp_path, 6, "p"))
        with psycopg.connect(pg_url) as db:
            committed = db.execute("SELECT count(*) FROM leases WHERE state = 'bound'").fetchone()
        run = subprocess.Popen(
            [*perf.prefix(), "perfdhcp", "-4", "-r", "40", "-R", "40", "-p", "9", "-l", "eth0",
             "all"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        time.sleep(2.0)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        time.sleep(1.5)
        pg_cluster.stop("immediate")
        time.sleep(1.0)
        # while the database is away: no lease is answered, files still are
        page = subprocess.run([*b_host.prefix(), "curl", "-s", "-o", "/dev/null", "-w",
                               "%{http_code}", f"http://{b_host.ipv4.ip}:8080/KX-HDV130.cfg"],
                              capture_output=True, text=True)  # fmt: skip
        time.sleep(1.0)
        pg_cluster.start()
        out, _ = run.communicate(timeout=60)
        second = leased(tmp_path, "r", 6, dhclients(lab, tmp_path, 6, "r"))
        b.wait_event("inventory.recovered", timeout=20)
    finally:
        b.stop()
    assert committed is not None and committed[0] >= 6
    everyone = {**first, **second}
    assert len(set(everyone.values())) == 12, everyone
    assert page.stdout == "200"
    assert b.wait_event("inventory.unavailable")["reason"]
    _, ra = perf_figures(out)
    assert ra["non unique addresses"] == 0 and ra["received packets"] > 0, out[-2000:]
    with psycopg.connect(pg_url) as db:
        after = db.execute("SELECT count(*) FROM leases WHERE state = 'bound'").fetchone()
        by_b = db.execute("SELECT count(*) FROM leases WHERE server = 'bench-b'").fetchone()
    assert after is not None and after[0] >= committed[0] + 6  # nothing committed was lost
    assert by_b is not None and by_b[0] >= 6
    assert held_twice(pg_url) == {}


def ghost_server(lab: Lab, tmp_path: Path, pg_url: str, family: int) -> tuple[ServerProc, str]:
    """A server whose pool is two addresses, the first of them bound a moment ago by
    another server (in the database, its notification never sent): the server, and
    that address. Its name makes its pool walk start at that address."""
    import zlib

    host = lab.host("srva")
    first = lab.net4[200] if family == 4 else lab.net6[0x2000]
    name = next(f"bench-{i}" for i in range(100) if zlib.crc32(f"bench-{i}".encode()) % 2 == 0)
    section = (f"dhcp4: {{subnets: [{{subnet: '{lab.net4}', " if family == 4
               else f"dhcp6: {{subnets: [{{prefix: '{lab.net6}', ")  # fmt: skip
    config = tmp_path / "lab.yaml"
    config.write_text(f"server: {{interfaces: [eth0]}}\ninventory: {{database: '{pg_url}'}}\n"
                      f"{section}pool: ['{first}', '{first + 1}']}}]}}\n")  # fmt: skip
    (tmp_path / name).mkdir()
    sp = start_server(tmp_path / name, "--config", str(config), "--name", name,
                      netns=host.ns, port=8080)  # fmt: skip
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("INSERT INTO leases VALUES (%s, 'ghost/1', '0080F0FFFFFF', 'bound', %s,"
                   " NULL, %s, 'elsewhere')", (str(first), time.time() + 600, time.time()))
    return sp, str(first)


def test_a_lost_claim_is_a_nak_and_dhclient_gets_the_next_address(
    lab: Lab, tmp_path: Path, pg_url: str
) -> None:
    """Another server bound the first address of the pool a moment ago (it is in the
    database, its notification not yet here): this server offers it, the claim in the
    database fails, the ACK becomes a NAK, dhclient starts again and gets the next one."""
    sp, first = ghost_server(lab, tmp_path, pg_url, 4)
    try:
        got = leased(tmp_path, "p", 1, dhclients(lab, tmp_path, 1, "p"))
        nak = sp.wait_event("dhcp4.nak")
    finally:
        sp.stop()
    nxt = str(ipaddress.IPv4Address(first) + 1)
    assert got == {"p0": nxt}
    assert nak["ip"] == first and "bound by another server first" in str(nak["reason"])
    assert held_twice(pg_url) == {}
    with psycopg.connect(pg_url) as db:
        rows = db.execute("SELECT ip, client_id, server FROM leases ORDER BY ip").fetchall()
    assert rows[0] == (first, "ghost/1", "elsewhere") and rows[1][0] == nxt


def test_two_servers_one_database_dhcpv6(lab: Lab, tmp_path: Path, pg_url: str) -> None:
    """DHCPv6 on the shared inventory: six dhclient -6 at once against two servers on
    the link; every phone gets an address, no address is bound to two of them."""
    from concurrent.futures import ThreadPoolExecutor

    from test_dhcp6_netns import dhclient6

    a_host, b_host = lab.host("srva"), lab.host("srvb")
    a = serve(tmp_path, a_host, pg_url, "bench-a")
    b = serve(tmp_path, b_host, pg_url, "bench-b")
    phones = [lab.host(f"v{i}", addresses=False) for i in range(6)]
    for i in range(6):
        (tmp_path / f"v{i}").mkdir()
    try:
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda i: dhclient6(phones[i], tmp_path / f"v{i}", False)
                                ["new_ip6_address"], range(6)))  # fmt: skip
    finally:
        assert a.stop() == 0 and b.stop() == 0
    assert len(set(got)) == 6, got
    with psycopg.connect(pg_url) as db:
        rows = db.execute("SELECT data FROM events WHERE kind = 'dhcp6.lease' ORDER BY id")
        holder: dict[str, str] = {}
        for (data,) in rows:
            d = json.loads(data)
            if d["state"] == "bound":
                assert holder.get(d["ip"], d["client_id"]) == d["client_id"], d
                holder[d["ip"]] = d["client_id"]
            else:
                holder.pop(d["ip"], None)
        servers = {s for (s,) in db.execute("SELECT DISTINCT server FROM leases")}
    assert set(got) <= set(holder) and servers <= {"bench-a", "bench-b"}


def test_a_lost_dhcpv6_claim_is_not_answered_and_dhclient6_gets_the_next_address(
    lab: Lab, tmp_path: Path, pg_url: str
) -> None:
    """As the DHCPv4 one: another server bound the pool's first address a moment ago;
    this server's REPLY for it is not sent, dhclient -6 asks again and is given the
    next address."""
    from test_dhcp6_netns import dhclient6

    sp, first = ghost_server(lab, tmp_path, pg_url, 6)
    phone = lab.host("v0", addresses=False)
    (tmp_path / "v0").mkdir()
    try:
        got = dhclient6(phone, tmp_path / "v0", stateless=False)["new_ip6_address"]
        lost = sp.wait_event("dhcp6.ignored")
    finally:
        sp.stop()
    assert got == str(ipaddress.IPv6Address(first) + 1)
    assert "bound by another server first" in str(lost["reason"])
