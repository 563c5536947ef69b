"""One device, one record: what a phone's DHCP request said decides its HTTP fetch too."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from pydhcp.packet import DHCPMessageType

from preprov.dhcp4.leases import LeaseTable, Subnet, default_subnet
from preprov.dhcp4.server import Dhcp4Policy, Dhcp4Server
from preprov.events import Dhcp4Answered, FileRefused, FileServed
from preprov.files.service import FileRequest, fetch
from preprov.ident import Directory
from preprov.runtime import Runtime
from test_dhcp4_core import PRL, T, msg, reply

RULES = [
    {"name": "by-option-60", "match": {"vendor_class": ["Panasonic"]},
     "url": "http://${server}:${http_port}/{MODEL}.cfg"},
    {"name": "by-relay", "match": {"relay": ["198.18.7.1"]},
     "url": "http://${server}:${http_port}/{MODEL}.cfg"},
]  # fmt: skip
MAC = "0080f0c571eb"
UA = "Panasonic_KX-HDV130/01.000 (0080f0c571eb)"


def lab(make_runtime: Callable[..., Runtime]) -> tuple[Runtime, Directory, Dhcp4Server]:
    rt = make_runtime(rules=RULES)
    directory = Directory()
    for site in rt.sites:
        site.rules.known = site.rules6.known = directory.known
    local = default_subnet(ipaddress.IPv4Interface("198.18.0.1/24"))
    far = Subnet(ipaddress.IPv4Network("198.18.7.0/24"), ipaddress.IPv4Address("198.18.7.100"),
                 ipaddress.IPv4Address("198.18.7.200"), ipaddress.IPv4Address("198.18.7.1"))  # fmt: skip
    policy = Dhcp4Policy(server_ip=ipaddress.IPv4Address("198.18.0.1"), rules=rt.site.rules,
                         local=local)  # fmt: skip
    return rt, directory, Dhcp4Server(policy, LeaseTable([local, far]))


def boot(directory: Directory, server: Dhcp4Server, mac: str, **opts: object) -> Dhcp4Answered:
    out = server.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, mac, PRL, **opts),
                                   ("0.0.0.0", 68), T)  # fmt: skip
    assert reply(out)
    for ev in out.events:
        directory(ev)
    (answered,) = [e for e in out.events if isinstance(e, Dhcp4Answered)]
    return answered


def http(rt: Runtime, directory: Directory, mac: str, ua: str) -> FileServed | FileRefused:
    req = FileRequest("http", "198.18.0.50", "/KX-HDV130.cfg", user_agent=ua)
    ans = fetch(rt, req, holder=directory.holder)
    directory(ans.event)
    return ans.event  # type: ignore[return-value]


def test_a_rule_on_option_60_decides_the_same_on_dhcp_and_on_http(
    make_runtime: Callable[..., Runtime],
) -> None:
    rt, directory, server = lab(make_runtime)
    # before any DHCP request, the HTTP fetch alone carries no option 60: refused
    before = http(rt, directory, MAC, UA)
    assert isinstance(before, FileRefused) and "option 60 '(none)'" in before.reason
    dhcp = boot(directory, server, MAC, o60=b"Panasonic KX-HDV130")
    assert dhcp.rule == "by-option-60" and dhcp.url
    after = http(rt, directory, MAC, UA)
    assert isinstance(after, FileServed) and after.rule == "by-option-60"
    # another phone that sent no option 60 is still refused, with the reason
    other = http(rt, directory, "0080f0c571ec", UA.replace("71eb", "71ec"))
    assert isinstance(other, FileRefused) and "contains none of its strings" in other.reason


def test_a_rule_on_the_relay_decides_the_same_on_dhcp_and_on_http(
    make_runtime: Callable[..., Runtime],
) -> None:
    rt, directory, server = lab(make_runtime)
    dhcp = boot(directory, server, MAC, giaddr=ipaddress.IPv4Address("198.18.7.1").packed)
    assert dhcp.rule == "by-relay" and dhcp.relay == "198.18.7.1"
    served = http(rt, directory, MAC, UA)
    assert isinstance(served, FileServed) and served.rule == "by-relay"


def test_a_request_naming_no_mac_is_the_address_holders(
    make_runtime: Callable[..., Runtime],
) -> None:
    """No MAC in the path or the User-Agent: the device holding the source address."""
    rt, directory, server = lab(make_runtime)
    boot(directory, server, MAC, o60=b"Panasonic")
    directory.bind("198.18.0.50", MAC.upper())
    served = http(rt, directory, MAC, "curl/8.0")
    assert isinstance(served, FileServed)
    assert served.mac == MAC.upper() and served.rule == "by-option-60"


def test_what_devices_told_is_remembered_after_a_restart(tmp_path: Path) -> None:
    """A phone's option 60 was seen before the server restarted: its next fetch is decided
    by the rule on option 60 at once, from the stored events."""
    import subprocess
    import time

    from preprov.events import Dhcp4Answered as Answered
    from preprov.inventory.sqlite import SQLiteStore
    from serverproc import start_server

    store = SQLiteStore(tmp_path / "state" / "preprov.db")
    store.write([Answered(channel="dhcpv4", client=None, mac=MAC.upper(), message="DHCPACK",
                          request="DHCPREQUEST", xid="1", vendor_class="Panasonic KX-HDV130",
                          rule="by-option-60", url="u")])  # fmt: skip
    store.close()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rules:\n  - name: by-option-60\n    match: {vendor_class: [Panasonic]}\n"
                   "    url: http://${server}:${http_port}/{MODEL}.cfg\n")
    sp = start_server(tmp_path, "--config", str(cfg))
    try:
        deadline, code = time.monotonic() + 10, ""
        while time.monotonic() < deadline and code != "200":
            code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-A",
                                   UA, f"{sp.base}/KX-HDV130.cfg"], capture_output=True,
                                  text=True).stdout  # fmt: skip
            time.sleep(0.1)
        assert code == "200"
        other = subprocess.run(["curl", "-s", "-A", UA.replace("71eb", "71ec"),
                                f"{sp.base}/KX-HDV130.cfg"], capture_output=True, text=True)  # fmt: skip
        assert "option 60 '(none)'" in other.stdout  # a phone never seen: refused
    finally:
        assert sp.stop() == 0


def test_the_directory_learns_from_each_kind_of_event_only_what_it_tells() -> None:
    """What each event teaches the directory (docs/design.md §3): a bound lease its
    address, a released one its loss; a SUBSCRIBE and a served file the model,
    firmware and vendor, and the SUBSCRIBE its source; a DHCP answer option 60, the
    relay and the subnet, and a DHCPINFORM its source; a refusal nothing."""
    from preprov.events import Dhcp4Lease, Dhcp6Lease, PnpSubscribe

    d = Directory()
    m = MAC.upper()
    d(Dhcp4Lease(channel="dhcpv4", mac=m, ip="198.18.0.9", client_id="c", state="bound",
                 expires=1.0))  # fmt: skip
    assert d.holder("198.18.0.9") == m
    d(Dhcp4Lease(channel="dhcpv4", mac=m, ip="198.18.0.9", client_id="c", state="released",
                 expires=1.0))  # fmt: skip
    assert d.holder("198.18.0.9") is None
    d(Dhcp6Lease(channel="dhcpv6", mac=m, ip="fd00::9", client_id="c", state="bound",
                  expires=1.0))  # fmt: skip
    assert d.holder("fd00::9") == m
    d(Dhcp4Answered(channel="dhcpv4", client="198.18.0.7", mac=m, message="DHCPOFFER",
                    request="DHCPDISCOVER", xid="1", vendor_class="Panasonic", relay="",
                    network="198.18.0.0/24"))  # fmt: skip
    assert d.holder("198.18.0.7") is None  # an offer's address is not the device's yet
    assert (d.known(m).vendor_class, d.known(m).relay) == ("Panasonic", None)
    d(Dhcp4Answered(channel="dhcpv4", client="198.18.0.8", mac=m, message="DHCPACK",
                    request="DHCPINFORM", xid="2"))  # fmt: skip
    assert d.holder("198.18.0.8") == m and d.known(m).network == "198.18.0.0/24"
    d(PnpSubscribe(channel="pnp", client="198.18.0.10", mac=m, model="KX-HDV130",
                   call_id="x"))  # fmt: skip
    assert d.holder("198.18.0.10") == m and d.known(m).model == "KX-HDV130"
    d(FileServed(channel="http", client="198.18.0.11", mac=m, fwver="1.2", path="/a",
                 template="a", rule=None, size=1))  # fmt: skip
    facts = d.known(m)
    assert d.holder("198.18.0.11") is None and (facts.model, facts.fwver) == ("KX-HDV130", "1.2")
    assert facts.vendor_class == "Panasonic"  # what a later event did not say is kept
    version = d.version
    d(FileRefused(channel="http", client="198.18.0.12", mac=m, model="KX-UT670", path="/b",
                  status=403, reason="no"))  # fmt: skip
    d(FileServed(channel="http", client="198.18.0.13", mac=m, model="KX-HDV130", path="/a",
                 template="a", rule=None, size=1))  # fmt: skip
    assert d.known(m).model == "KX-HDV130" and d.version == version  # nothing new
    d(FileServed(channel="http", client="198.18.0.13", mac=None, model="KX-UT670", path="/a",
                 template="a", rule=None, size=1))  # fmt: skip
    assert d.version == version  # no MAC: nothing to learn


def test_the_directory_hears_every_event_class_that_teaches() -> None:
    """The directory dispatches by an event's exact type: a class deriving from one it
    learns from would be passed over without a word. None may."""
    from preprov.events import Event

    taught = set(Directory()._told)
    seen: list[type] = []
    todo: list[type] = [Event]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    assert len(seen) > 20
    for cls in seen:
        assert not any(issubclass(cls, t) and cls is not t for t in taught), cls
