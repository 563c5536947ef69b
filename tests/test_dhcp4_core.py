"""The DHCPv4 server core with bytes and a fake clock; pydhcp builds the clients' messages."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pydhcp.packet import DHCPFlags, DHCPMessage, DHCPMessageType, DHCPOpcode

from preprov.config import Dhcp4Options, Rule
from preprov.dhcp4.leases import LeaseTable, Subnet, default_subnet
from preprov.dhcp4.server import Dhcp4Policy, Dhcp4Server
from preprov.events import (
    Dhcp4Answered,
    Dhcp4Ignored,
    Dhcp4Lease,
    Dhcp4Nak,
    Dhcp4Refused,
    RequestMalformed,
)
from preprov.rules import RuleSet
from preprov.safety import AllowList

IFACE = ipaddress.IPv4Interface("198.18.0.1/24")
SERVER = IFACE.ip
RULES = RuleSet([Rule(name="d", url="http://${server}:${http_port}/{MODEL}.cfg")],
                {"server": "198.18.0.1", "http_port": "8080"})  # fmt: skip
MAC = "0080f0c571eb"
PRL = bytes([1, 3, 6, 15, 42, 66, 67, 159, 160])
T = 1_000_000.0


def server(**kw: object) -> Dhcp4Server:
    sub = default_subnet(IFACE)
    table = LeaseTable([sub], kw.pop("reservations", None))  # type: ignore[arg-type]
    return Dhcp4Server(Dhcp4Policy(server_ip=SERVER, rules=RULES, local=sub, **kw), table)  # type: ignore[arg-type]


def msg(mtype: DHCPMessageType, mac: str = MAC, prl: bytes | None = PRL, **opts: object) -> bytes:
    fields = {k: v for k, v in opts.items() if k in ("ciaddr", "giaddr", "flags", "xid")}
    m = DHCPMessage(DHCPOpcode.BOOTREQUEST, chaddr=bytes.fromhex(mac), **fields)  # type: ignore[arg-type]
    m.options[53] = mtype
    if prl is not None:
        m.options[55] = prl
    for k, v in opts.items():
        if k.startswith("o"):
            m.options[int(k[1:])] = v  # type: ignore[assignment]
    return m.encode()


def reply(out: object) -> DHCPMessage:
    (send,) = out.sends  # type: ignore[attr-defined]
    return DHCPMessage.decode(send.data)


def opt(m: DHCPMessage, code: int) -> bytes | None:
    return bytes(m.options[code]) if code in m.options else None


def option_codes(wire: bytes) -> list[int]:
    """The option codes in the options field, in order, as they are on the wire."""
    codes, i = [], 240
    while i < len(wire) and wire[i] != 255:
        if wire[i] == 0:
            i += 1
            continue
        codes.append(wire[i])
        i += 2 + wire[i + 1]
    return codes


def dora(s: Dhcp4Server, mac: str = MAC, now: float = T) -> ipaddress.IPv4Address:
    offer = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, mac), ("0.0.0.0", 68), now))
    out = s.datagram_received(
        msg(DHCPMessageType.DHCPREQUEST, mac, o54=SERVER.packed, o50=offer.yiaddr.packed),
        ("0.0.0.0", 68), now,
    )  # fmt: skip
    ack = reply(out)
    assert opt(ack, 53) == b"\x05"
    return ack.yiaddr


def test_discover_offer_with_provisioning_options_and_addressing() -> None:
    out = server().datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T)
    offer = reply(out)
    assert out.sends[0].addr == ("255.255.255.255", 68)
    assert offer.op == DHCPOpcode.BOOTREPLY and offer.yiaddr == ipaddress.IPv4Address(
        "198.18.0.128"
    )
    assert opt(offer, 53) == b"\x02" and opt(offer, 54) == SERVER.packed
    assert opt(offer, 51) == (3600).to_bytes(4, "big") and opt(offer, 58) == (1800).to_bytes(
        4, "big"
    )
    assert opt(offer, 1) == bytes([255, 255, 255, 0]) and opt(offer, 3) == SERVER.packed
    assert opt(offer, 160) == b"http://198.18.0.1:8080" == opt(offer, 159)
    assert opt(offer, 66) == b"http://198.18.0.1:8080/{MODEL}.cfg"
    assert opt(offer, 67) == b"{MODEL}.cfg"
    (ev,) = out.events
    assert isinstance(ev, Dhcp4Answered) and ev.message == "DHCPOFFER" and ev.note is None
    assert ev.mac == "0080F0C571EB" and ev.vendor == "Panasonic"


def test_request_binds_and_the_lease_event_comes_before_the_ack() -> None:
    s = server()
    offer = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T))
    out = s.datagram_received(
        msg(DHCPMessageType.DHCPREQUEST, o54=SERVER.packed, o50=offer.yiaddr.packed),
        ("0.0.0.0", 68),
        T + 1,
    )
    assert [type(e) for e in out.events] == [Dhcp4Lease, Dhcp4Answered]
    lease = out.events[0]
    assert (
        isinstance(lease, Dhcp4Lease) and lease.state == "bound" and lease.expires == T + 1 + 3600
    )
    assert reply(out).yiaddr == offer.yiaddr


def test_an_address_another_server_bound_first_is_answered_with_a_nak_then_avoided() -> None:
    """Two servers sharing the inventory offered one address to two clients; the other
    server's client committed first: our ACK is replaced by a NAK, and the address is
    not offered again while the other holds it."""
    s = server()
    offer = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T))
    out = s.datagram_received(
        msg(DHCPMessageType.DHCPREQUEST, o54=SERVER.packed, o50=offer.yiaddr.packed),
        ("0.0.0.0", 68), T,
    )  # fmt: skip
    assert out.if_lost is not None and opt(reply(out), 53) == b"\x05"
    nak = out.if_lost(frozenset({str(offer.yiaddr)}))
    assert opt(reply(nak), 53) == b"\x06" and b"another server" in (opt(reply(nak), 56) or b"")
    (ev,) = nak.events
    assert isinstance(ev, Dhcp4Nak) and ev.ip == str(offer.yiaddr)
    again = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T + 1))
    assert again.yiaddr != offer.yiaddr
    # what another server bound, learnt from the inventory's notifications, is not offered
    s.leases.learn(again.yiaddr, "c9", "0080F0000009", "bound", T + 3600)
    third = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T + 2))
    assert third.yiaddr not in (offer.yiaddr, again.yiaddr)


def test_selecting_another_server_frees_our_offer() -> None:
    s = server()
    first = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T)).yiaddr
    out = s.datagram_received(
        msg(DHCPMessageType.DHCPREQUEST, o54=bytes([198, 18, 0, 9]), o50=first.packed),
        ("0.0.0.0", 68),
        T,
    )
    assert out.sends == [] and isinstance(out.events[0], Dhcp4Ignored)
    assert "selected server 198.18.0.9" in out.events[0].reason
    # the held address is free again for another client
    assert s.leases.free(first, "other", "0080F0000002", s.policy.local, T + 1)  # type: ignore[arg-type]


def test_init_reboot_renew_rebind_and_naks() -> None:
    s = server()
    ip = dora(s)
    # INIT-REBOOT with the right address: ACK; with a wrong subnet: NAK, broadcast
    ok = s.datagram_received(
        msg(DHCPMessageType.DHCPREQUEST, o50=ip.packed), ("0.0.0.0", 68), T + 10
    )
    assert opt(reply(ok), 53) == b"\x05"
    bad = s.datagram_received(
        msg(DHCPMessageType.DHCPREQUEST, o50=bytes([10, 0, 0, 5])), ("0.0.0.0", 68), T + 10
    )
    nak = reply(bad)
    assert opt(nak, 53) == b"\x06" and bad.sends[0].addr == ("255.255.255.255", 68)
    assert isinstance(bad.events[0], Dhcp4Nak) and "is not on 198.18.0.0/24" in bad.events[0].reason
    # RENEWING: unicast from ciaddr, answered to ciaddr:68, lease extended
    out = s.datagram_received(msg(DHCPMessageType.DHCPREQUEST, ciaddr=ip), (str(ip), 68), T + 1800)
    assert out.sends[0].addr == (str(ip), 68)
    assert out.events[0].expires == T + 1800 + 3600  # type: ignore[attr-defined]
    # a client asking for someone else's address is refused
    s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, "0080f0000002"), ("0.0.0.0", 68), T)
    theirs = s.datagram_received(
        msg(DHCPMessageType.DHCPREQUEST, "0080f0000003", o50=ip.packed), ("0.0.0.0", 68), T
    )
    assert "leased to another client" in theirs.events[0].reason  # type: ignore[attr-defined]


def test_decline_quarantines_and_release_frees() -> None:
    s = server(quarantine=600.0)
    ip = dora(s)
    out = s.datagram_received(
        msg(DHCPMessageType.DHCPDECLINE, o54=SERVER.packed, o50=ip.packed), ("0.0.0.0", 68), T
    )
    assert out.sends == [] and out.events[0].state == "declined"  # type: ignore[attr-defined]
    # nobody gets it during the quarantine, the next client gets it after
    assert dora(s, "0080f0000002", T + 1) != ip
    assert not s.leases.free(ip, "other", "0080F0000003", s.policy.local, T + 599)  # type: ignore[arg-type]
    assert s.leases.free(ip, "other", "0080F0000003", s.policy.local, T + 601)  # type: ignore[arg-type]
    ip2 = dora(s, "0080f0000004", T + 2)
    rel = s.datagram_received(
        msg(DHCPMessageType.DHCPRELEASE, "0080f0000004", ciaddr=ip2, o54=SERVER.packed),
        (str(ip2), 68),
        T + 3,
    )
    assert rel.sends == [] and rel.events[0].state == "released"  # type: ignore[attr-defined]
    assert s.leases.free(ip2, "x", "AABBCCDDEEFF", s.policy.local, T + 4)  # type: ignore[arg-type]


def test_decline_and_release_only_from_the_holder() -> None:
    s = server()
    ip = dora(s)  # held by MAC
    thief = "0080f0000066"
    for mtype, extra in ((DHCPMessageType.DHCPDECLINE, {"o50": ip.packed}),
                         (DHCPMessageType.DHCPRELEASE, {"ciaddr": ip})):  # fmt: skip
        out = s.datagram_received(msg(mtype, thief, o54=SERVER.packed, **extra), ("0.0.0.0", 68), T)
        assert out.sends == []
        (ev,) = out.events
        assert isinstance(ev, (Dhcp4Refused, Dhcp4Ignored)) and str(ip) in ev.reason
    # the holder renews and keeps its address
    out = s.datagram_received(msg(DHCPMessageType.DHCPREQUEST, ciaddr=ip), (str(ip), 68), T + 10)
    assert opt(reply(out), 53) == b"\x05" and reply(out).yiaddr == ip


def test_a_flood_of_discovers_does_not_starve_a_phone() -> None:
    """Offers to made-up MACs that never REQUEST: a used-up pool gives the oldest offer
    to the next DISCOVER, and the first REQUEST for an offered address wins."""
    sub = Subnet(IFACE.network, ipaddress.IPv4Address("198.18.0.130"),
                 ipaddress.IPv4Address("198.18.0.133"), SERVER)  # fmt: skip
    s = Dhcp4Server(Dhcp4Policy(server_ip=SERVER, rules=RULES, local=sub), LeaseTable([sub]))
    for i in range(100):
        s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, f"02aa{i:08x}"), ("0.0.0.0", 68), T)
    offer = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T))
    # more of the flood, which takes the phone's offered address for another MAC
    for i in range(100, 110):
        s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, f"02aa{i:08x}"), ("0.0.0.0", 68), T)
    out = s.datagram_received(
        msg(DHCPMessageType.DHCPREQUEST, o54=SERVER.packed, o50=offer.yiaddr.packed),
        ("0.0.0.0", 68), T + 0.01,
    )  # fmt: skip
    assert opt(reply(out), 53) == b"\x05" and reply(out).yiaddr == offer.yiaddr
    # the made-up MAC that was offered it last is told no
    for i in range(100, 110):
        o = s.datagram_received(msg(DHCPMessageType.DHCPREQUEST, f"02aa{i:08x}", o54=SERVER.packed,
                                    o50=offer.yiaddr.packed), ("0.0.0.0", 68), T + 0.02)  # fmt: skip
        assert opt(reply(o), 53) == b"\x06"


def test_blind_requests_bind_nothing() -> None:
    """A REQUEST for an address nobody was offered (SELECTING), or from a client the
    server has no record of (INIT-REBOOT: RFC 2131 §4.3.2, silence), binds nothing."""
    s = server()
    ip = ipaddress.IPv4Address("198.18.0.200")
    out = s.datagram_received(msg(DHCPMessageType.DHCPREQUEST, "02bb00000001",
                                  o54=SERVER.packed, o50=ip.packed), ("0.0.0.0", 68), T)  # fmt: skip
    assert opt(reply(out), 53) == b"\x06"
    out = s.datagram_received(msg(DHCPMessageType.DHCPREQUEST, "02bb00000002", o50=ip.packed),
                              ("0.0.0.0", 68), T)  # fmt: skip
    assert out.sends == [] and "no record" in out.events[0].reason  # type: ignore[attr-defined]
    # nor an address offered to another client
    offered = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T))
    out = s.datagram_received(msg(DHCPMessageType.DHCPREQUEST, "02bb00000003", o54=SERVER.packed,
                                  o50=offered.yiaddr.packed), ("0.0.0.0", 68), T)  # fmt: skip
    assert opt(reply(out), 53) == b"\x06"
    assert not [x for x in s.leases.by_ip.values() if x.state == "bound"]


def test_inform_gets_options_and_no_lease() -> None:
    out = server().datagram_received(
        msg(DHCPMessageType.DHCPINFORM, ciaddr="198.18.0.77"), ("198.18.0.77", 68), T
    )
    ack = reply(out)
    assert opt(ack, 53) == b"\x05" and ack.yiaddr == ipaddress.IPv4Address("0.0.0.0")
    assert opt(ack, 51) is None and opt(ack, 160) == b"http://198.18.0.1:8080"
    assert out.sends[0].addr == ("198.18.0.77", 68)
    assert not any(isinstance(e, Dhcp4Lease) for e in out.events)
    # an INFORM's ACK and a lease's ACK, same subnet, rule and asked list: each its own
    s = server()
    dora(s)
    inform = reply(s.datagram_received(msg(DHCPMessageType.DHCPINFORM, ciaddr="198.18.0.77"),
                                       ("198.18.0.77", 68), T))  # fmt: skip
    assert opt(inform, 51) is None
    other = "0080f0c571ec"
    offer = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, other), ("0.0.0.0", 68), T))
    ack = reply(s.datagram_received(
        msg(DHCPMessageType.DHCPREQUEST, other, o54=SERVER.packed, o50=offer.yiaddr.packed),
        ("0.0.0.0", 68), T))  # fmt: skip
    assert opt(ack, 53) == b"\x05" and opt(ack, 51) is not None


def test_options_only_when_asked_unless_always_sent() -> None:
    out = server().datagram_received(
        msg(DHCPMessageType.DHCPDISCOVER, prl=bytes([1, 3])), ("0.0.0.0", 68), T
    )
    offer = reply(out)
    assert all(opt(offer, c) is None for c in (66, 67, 159, 160))
    assert out.events[0].note == "the client asked for none of options 66, 67, 159, 160"  # type: ignore[attr-defined]
    always = server(options=Dhcp4Options(always_send=[160], option66="host"))
    offer = reply(
        always.datagram_received(
            msg(DHCPMessageType.DHCPDISCOVER, prl=bytes([1, 66])), ("0.0.0.0", 68), T
        )
    )
    assert opt(offer, 160) == b"http://198.18.0.1:8080" and opt(offer, 66) == b"198.18.0.1"
    assert opt(offer, 159) is None
    # always sent to a client that asked for none of them: provisioned, no warning
    out = always.datagram_received(
        msg(DHCPMessageType.DHCPDISCOVER, prl=bytes([1, 3])), ("0.0.0.0", 68), T
    )
    assert opt(reply(out), 160) == b"http://198.18.0.1:8080" and opt(reply(out), 66) is None
    assert [e.kind for e in out.events] == ["dhcp4.answered"]
    assert out.events[0].note is None  # type: ignore[attr-defined]


def test_long_option_is_split_and_a_reply_that_cannot_fit_is_refused() -> None:
    long_rules = RuleSet([Rule(name="long", url="http://h/" + "p" * 300 + "/{MODEL}.cfg")], {})
    sub = default_subnet(IFACE)
    s = Dhcp4Server(Dhcp4Policy(server_ip=SERVER, rules=long_rules, local=sub), LeaseTable([sub]))
    out = s.datagram_received(
        msg(DHCPMessageType.DHCPDISCOVER, prl=bytes([160]), o57=(1500).to_bytes(2, "big")),
        ("0.0.0.0", 68),
        T,
    )
    data = out.sends[0].data
    assert option_codes(data).count(160) == 2  # option 160 in two parts (RFC 3396)
    assert opt(DHCPMessage.decode(data), 160) == b"http://h/" + b"p" * 300
    # with the default 576-octet limit 160, 159 and 66 (each over 300 octets) cannot fit
    out = s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, "0080f0000009"), ("0.0.0.0", 68), T)
    assert out.sends == [] and isinstance(out.events[0], Dhcp4Refused)
    assert "does not fit in 576 octets" in out.events[0].reason


def test_reservations_pools_and_exhaustion() -> None:
    s = server(reservations={"0080F0000042": ipaddress.IPv4Address("198.18.0.42")})
    assert dora(s, "0080f0000042") == ipaddress.IPv4Address("198.18.0.42")
    small = Subnet(IFACE.network, ipaddress.IPv4Address("198.18.0.200"), ipaddress.IPv4Address("198.18.0.201"),
                   exclude=frozenset({SERVER}))  # fmt: skip
    t = Dhcp4Server(Dhcp4Policy(server_ip=SERVER, rules=RULES, local=small), LeaseTable([small]))
    assert {dora(t, "0080f0000001"), dora(t, "0080f0000002")} == {
        ipaddress.IPv4Address("198.18.0.200"),
        ipaddress.IPv4Address("198.18.0.201"),
    }
    out = t.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, "0080f0000003"), ("0.0.0.0", 68), T)
    assert (
        out.sends == [] and out.events[0].reason == "no free address in 198.18.0.200-198.18.0.201"
    )  # type: ignore[attr-defined]
    # an expired lease is free again
    assert dora(t, "0080f0000003", T + 3601) in {
        ipaddress.IPv4Address("198.18.0.200"),
        ipaddress.IPv4Address("198.18.0.201"),
    }


def test_allow_list_and_dry_run() -> None:
    only = server(allow=AllowList.build([], ["000413"], []))
    out = only.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T)
    assert out.sends == [] and out.events[0].reason == "MAC 0080F0C571EB is not in the allow-list"  # type: ignore[attr-defined]
    dry = server(dry_run=True)
    out = dry.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T)
    assert out.sends == [] and out.events[0].dry_run and out.events[0].ip == "198.18.0.128"  # type: ignore[attr-defined]


def test_same_client_keeps_its_address_and_two_clients_never_share() -> None:
    s = server()
    a = dora(s, "0080f0000001")
    assert dora(s, "0080f0000001", T + 5) == a
    ips = {dora(s, f"0080f00001{i:02x}") for i in range(50)}
    assert len(ips) == 50 and a not in ips


def test_lease_table_survives_a_restart() -> None:
    s = server()
    ip = dora(s)
    bound = [lease for lease in s.leases.by_ip.values() if lease.state == "bound"]
    fresh = server()
    fresh.leases.load(bound)
    other = dora(fresh, "0080f0000077")
    assert other != ip and dora(fresh, MAC) == ip


def test_relay_subnet_chosen_by_giaddr_and_broadcast_flag_on_nak() -> None:
    local = default_subnet(IFACE)
    far = Subnet(ipaddress.IPv4Network("198.19.7.0/24"), ipaddress.IPv4Address("198.19.7.100"),
                 ipaddress.IPv4Address("198.19.7.199"), ipaddress.IPv4Address("198.19.7.1"))  # fmt: skip
    s = Dhcp4Server(
        Dhcp4Policy(server_ip=SERVER, rules=RULES, local=local), LeaseTable([local, far])
    )
    out = s.datagram_received(
        msg(DHCPMessageType.DHCPDISCOVER, giaddr="198.19.7.1", o82=b"\x01\x01x"),
        ("198.19.7.1", 67),
        T,
    )
    offer = reply(out)
    assert out.sends[0].addr == ("198.19.7.1", 67) and offer.yiaddr in far.network
    assert opt(offer, 82) == b"\x01\x01x" and opt(offer, 3) == bytes([198, 19, 7, 1])
    unknown = s.datagram_received(
        msg(DHCPMessageType.DHCPDISCOVER, giaddr="198.19.9.1"), ("198.19.9.1", 67), T
    )
    assert unknown.events[0].reason == "no subnet configured for relay 198.19.9.1"  # type: ignore[attr-defined]
    nak = s.datagram_received(
        msg(DHCPMessageType.DHCPREQUEST, giaddr="198.19.7.1", o50=bytes([10, 0, 0, 1])),
        ("198.19.7.1", 67),
        T,
    )
    assert reply(nak).flags & DHCPFlags.BROADCAST


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=700))
def test_garbage_never_raises(data: bytes) -> None:
    out = server().datagram_received(data, ("198.18.0.9", 68), T)
    for e in out.events:
        assert isinstance(
            e, (RequestMalformed, Dhcp4Answered, Dhcp4Ignored, Dhcp4Refused, Dhcp4Lease, Dhcp4Nak)
        )


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_requests_never_raise(data: st.DataObject) -> None:
    raw = bytearray(
        msg(DHCPMessageType.DHCPREQUEST, o54=SERVER.packed, o50=bytes([198, 18, 0, 130]))
    )
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))  # header fields and options alike
        raw[i] = data.draw(st.integers(0, 255))
    out = server().datagram_received(bytes(raw), ("0.0.0.0", 68), T)  # raises on a bug
    for e in out.events:
        assert isinstance(
            e, (RequestMalformed, Dhcp4Answered, Dhcp4Ignored, Dhcp4Refused, Dhcp4Lease, Dhcp4Nak)
        )


class LeaseMachine(RuleBasedStateMachine):
    """Any sequence of DHCPv4 messages from a few clients, and time passing: an
    address is never ACKed to a client while another client's ACK for it runs."""

    MACS = [f"0080f00000{i:02x}" for i in range(6)]

    def __init__(self) -> None:
        super().__init__()
        sub = Subnet(IFACE.network, ipaddress.IPv4Address("198.18.0.130"),
                     ipaddress.IPv4Address("198.18.0.133"), SERVER)  # fmt: skip  # 4 for 6
        self.s = Dhcp4Server(
            Dhcp4Policy(server_ip=SERVER, rules=RULES, local=sub, lease_time=60, offer_hold=5,
                        quarantine=30), LeaseTable([sub]),
        )  # fmt: skip
        self.now = T
        self.acked: dict[ipaddress.IPv4Address, tuple[str, float]] = {}  # ip -> (mac, until)
        self.offered: dict[str, ipaddress.IPv4Address] = {}

    def send(self, data: bytes, src: str = "0.0.0.0") -> None:
        out = self.s.datagram_received(data, (src, 68), self.now)
        for send in out.sends:
            m = DHCPMessage.decode(send.data)
            mac = bytes(m.chaddr)[:6].hex()
            t = bytes(m.options[53])[0]
            if t == 2:
                self.offered[mac] = m.yiaddr
            elif t == 5 and m.yiaddr != ipaddress.IPv4Address(0):
                holder = self.acked.get(m.yiaddr)
                assert holder is None or holder[0] == mac or holder[1] <= self.now, (
                    f"{m.yiaddr} ACKed to {mac} while {holder[0]} holds it until {holder[1]}"
                )
                for ip, (other, _) in list(self.acked.items()):
                    if other == mac:  # one binding per client
                        del self.acked[ip]
                self.acked[m.yiaddr] = (mac, self.now + 60)

    @rule(i=st.integers(0, 5))
    def discover(self, i: int) -> None:
        self.send(msg(DHCPMessageType.DHCPDISCOVER, self.MACS[i]))

    @rule(i=st.integers(0, 5))
    def select(self, i: int) -> None:
        ip = self.offered.get(self.MACS[i])
        if ip is not None:
            self.send(msg(DHCPMessageType.DHCPREQUEST, self.MACS[i], o54=SERVER.packed,
                          o50=ip.packed))  # fmt: skip

    @rule(i=st.integers(0, 5), j=st.integers(130, 133), renew=st.booleans())
    def request_any(self, i: int, j: int, renew: bool) -> None:
        ip = ipaddress.IPv4Address(f"198.18.0.{j}")
        if renew:
            self.send(msg(DHCPMessageType.DHCPREQUEST, self.MACS[i], ciaddr=ip), str(ip))
        else:  # INIT-REBOOT
            self.send(msg(DHCPMessageType.DHCPREQUEST, self.MACS[i], o50=ip.packed))

    @rule(i=st.integers(0, 5), j=st.integers(130, 133))
    def release(self, i: int, j: int) -> None:
        ip = ipaddress.IPv4Address(f"198.18.0.{j}")
        self.send(msg(DHCPMessageType.DHCPRELEASE, self.MACS[i], ciaddr=ip, o54=SERVER.packed))
        holder = self.acked.get(ip)
        if holder is not None and holder[0] == self.MACS[i]:
            del self.acked[ip]

    @rule(i=st.integers(0, 5), j=st.integers(130, 133))
    def decline(self, i: int, j: int) -> None:
        ip = ipaddress.IPv4Address(f"198.18.0.{j}")
        self.send(msg(DHCPMessageType.DHCPDECLINE, self.MACS[i], o50=ip.packed, o54=SERVER.packed))
        holder = self.acked.get(ip)
        if holder is not None and holder[0] == self.MACS[i]:
            del self.acked[ip]

    @rule(seconds=st.sampled_from([1, 4, 6, 31, 61]))
    def wait(self, seconds: int) -> None:
        self.now += seconds

    @invariant()
    def one_holder_per_address_in_the_table(self) -> None:
        bound = [x for x in self.s.leases.by_ip.values()
                 if x.state == "bound" and x.expires > self.now]  # fmt: skip
        assert len({x.ip for x in bound}) == len(bound)


LeaseMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_lease_state_machine = LeaseMachine.TestCase


def test_an_answer_without_a_url_is_a_warning_with_the_reason() -> None:
    """A lease but no provisioning URL (no rule matched, or none of the options asked
    for): a dhcp4.no-url warning, which the inventory keeps as the last error."""
    from preprov.events import Dhcp4Unprovisioned, is_refusal

    picky = RuleSet([Rule(name="yealink", match={"oui": ["001565"]},  # type: ignore[arg-type]
                          url="http://${server}/{MODEL}.cfg")], {"server": "198.18.0.1"})  # fmt: skip
    sub = default_subnet(IFACE)
    s = Dhcp4Server(Dhcp4Policy(server_ip=SERVER, rules=picky, local=sub), LeaseTable([sub]))
    out = s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T)
    (miss,) = [e for e in out.events if isinstance(e, Dhcp4Unprovisioned)]
    assert miss.message == "DHCPOFFER" and miss.reason.startswith("no rule matched (yealink: OUI")
    assert is_refusal(miss) and miss.level == "warning"
    s = server()
    out = s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, prl=bytes([1, 3, 6])),
                              ("0.0.0.0", 68), T)  # fmt: skip
    (miss,) = [e for e in out.events if isinstance(e, Dhcp4Unprovisioned)]
    assert "asked for none of options 66, 67, 159, 160" in miss.reason
    out = s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, mac="0080f0000002"),
                              ("0.0.0.0", 68), T)  # fmt: skip
    assert not [e for e in out.events if isinstance(e, Dhcp4Unprovisioned)]


def test_answers_options_follow_a_reload_and_each_clients_own_list() -> None:
    """The options of answers are kept encoded per subnet, rule, vendor and asked list:
    a new policy (a reload) is in the next answer, and each list gets its own."""
    s = server(lease_time=3600)
    first = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T))
    assert opt(first, 51) == (3600).to_bytes(4, "big") and opt(first, 160) is not None
    other = "0080f0c571ec"
    bare = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, other, prl=bytes([1, 3])),
                                     ("0.0.0.0", 68), T))  # fmt: skip
    assert opt(bare, 160) is None and opt(bare, 1) is not None
    rules = RuleSet([Rule(name="e", url="http://198.18.0.9:8080/{MODEL}.cfg")],
                    {"server": "198.18.0.1", "http_port": "8080"})  # fmt: skip
    s.policy = Dhcp4Policy(server_ip=SERVER, rules=rules, local=s.policy.local, lease_time=600)
    again = reply(s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER), ("0.0.0.0", 68), T + 1))
    assert opt(again, 51) == (600).to_bytes(4, "big")
    assert opt(again, 160) == b"http://198.18.0.9:8080"
