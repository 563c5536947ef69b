"""The simulated phone's core with bytes and a fake clock, also against the responder core."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from sipmessage import Message, Request

from preprov.config import Rule
from preprov.files.lint import HEADER
from preprov.phone.core import PNP_GROUP, PhoneCore, PhoneProfile
from preprov.rules import RuleSet
from preprov.sip.pnp import PnpPolicy, PnpResponder

PHONE_IP = "198.18.0.2"
SERVER = ("198.18.0.1", 5060)
PROFILE = PhoneProfile(mac="0080F0C571EB", model="KX-HDV130N", fwver="01.000", ip=PHONE_IP)
RULES = RuleSet([Rule(name="d", url="http://${server}:${http_port}/{MODEL}.cfg")],
                {"server": "198.18.0.1", "http_port": "8080"})  # fmt: skip


def pre_file() -> bytes:
    return (HEADER + b"\r\n"
            b'CFG_STANDARD_FILE_PATH="http://198.18.0.1:8080/Config{MAC}.cfg"\r\n'
            b'CFG_PRODUCT_FILE_PATH="http://198.18.0.1:8080/Config{MODEL}.cfg"\r\n'
            b'CFG_MASTER_FILE_PATH="http://198.18.0.1:8080/ConfigCommon.cfg"\r\n'
            b'SIP_PRXY_ADDR_1="pre"\r\n')  # fmt: skip


def test_subscribe_is_panasonic_style() -> None:
    phone = PhoneCore(PROFILE, random.Random(1))
    (send,) = phone.start(0.0).sends
    assert send.addr == PNP_GROUP
    msg = Message.parse(send.data)
    assert isinstance(msg, Request) and msg.method == "SUBSCRIBE"
    assert send.data.startswith(b"SUBSCRIBE sip:MAC%3a0080F0C571EB@224.0.1.75 SIP/2.0\r\n")
    assert msg.headers["Event"] == (
        'ua-profile;profile-type="device";vender="Panasonic";model="KX-HDV130N";version="01.000"'
    )
    assert msg.headers["Accept"] == "application/url"
    assert msg.headers["Contact"] == "<sip:198.18.0.2:5060>"
    assert msg.headers["User-Agent"] == "Panasonic_KX-HDV130N/01.000 (0080f0c571eb)"


def test_no_answer_resends_on_t1_and_gives_up_after_5_s() -> None:
    phone = PhoneCore(PROFILE, random.Random(1))
    phone.start(100.0)
    resent: dict[tuple[str, int], list[float]] = {}
    while (t := phone.next_timer()) is not None:
        for send in phone.timer_expired(t).sends:
            resent.setdefault(send.addr, []).append(round(t - 100.0, 3))
    assert resent[PNP_GROUP] == [0.5, 1.5, 3.5]
    # then DHCPv4 (an INFORM: the phone has an address), resent after 1 and 2 s more
    assert resent[("255.255.255.255", 67)] == [5.0, 6.0, 8.0]
    assert phone.done and not phone.report.provisioned
    assert phone.report.channels_tried["sip-pnp"] == "no answer within 5 s"
    steps = {s["step"]: s["t_ms"] for s in phone.report.steps}
    assert steps["pnp.gave-up"] == 5000.0 and steps["dhcpv4.inform-sent"] == 5000.0
    assert steps["dhcpv4.gave-up"] == 12000.0
    assert "dhcpv4-option-160: no DHCPv4 server answered" in (phone.report.reason or "")


def test_against_the_responder_core_then_the_chain_first_wins() -> None:
    phone = PhoneCore(PROFILE, random.Random(1))
    server = PnpResponder(SERVER, PnpPolicy(rules=RULES), random.Random(2))
    sub = phone.start(0.0).sends[0]
    out = server.datagram_received(sub.data, (PHONE_IP, 5060), 0.001)
    ok, notify = out.sends
    assert phone.datagram_received(ok.data, SERVER, 0.002).sends == []
    acts = phone.datagram_received(notify.data, SERVER, 0.003)
    (reply,) = acts.sends
    assert reply.addr == SERVER
    ack = server.datagram_received(reply.data, (PHONE_IP, 5060), 0.004)
    assert [e.kind for e in ack.events] == ["pnp.notify-acked"]
    # the macros are expanded before the fetch: model with its region suffix
    assert [f.url for f in acts.fetches] == ["http://198.18.0.1:8080/KX-HDV130N.cfg"]
    acts = phone.fetch_done("http://198.18.0.1:8080/KX-HDV130N.cfg", 200, pre_file(), None, 0.01)
    assert [f.url for f in acts.fetches] == ["http://198.18.0.1:8080/Config0080F0C571EB.cfg"]
    body = HEADER + b'\r\nSIP_PRXY_ADDR_1="per-device"\r\nDISPLAY_NAME_1="A"\r\n'
    acts = phone.fetch_done(acts.fetches[0].url, 200, body, None, 0.02)
    assert [f.url for f in acts.fetches] == ["http://198.18.0.1:8080/ConfigKX-HDV130N.cfg"]
    acts = phone.fetch_done(
        acts.fetches[0].url, 200, HEADER + b'\r\nDISPLAY_NAME_1="B"\r\n', None, 0.03
    )
    acts = phone.fetch_done(
        acts.fetches[0].url, 200, HEADER + b'\r\nCFG_CYCLIC_INTVL="60"\r\n', None, 0.04
    )
    assert acts.fetches == [] and phone.done
    r = phone.report
    assert (
        r.provisioned and r.channel == "sip-pnp" and r.url == "http://198.18.0.1:8080/{MODEL}.cfg"
    )
    # the first occurrence of a parameter wins, in fetch order
    assert r.settings["SIP_PRXY_ADDR_1"] == "pre"
    assert r.settings["DISPLAY_NAME_1"] == "A"
    assert r.settings["CFG_CYCLIC_INTVL"] == "60"
    assert [s["step"] for s in r.steps][:4] == [
        "boot",
        "pnp.subscribe-sent",
        "pnp.200",
        "pnp.notify",
    ]


def test_retransmitted_notify_is_answered_again() -> None:
    phone = PhoneCore(PROFILE, random.Random(1))
    server = PnpResponder(SERVER, PnpPolicy(rules=RULES), random.Random(2))
    sub = phone.start(0.0).sends[0]
    notify = server.datagram_received(sub.data, (PHONE_IP, 5060), 0.0).sends[1]
    first = phone.datagram_received(notify.data, SERVER, 0.0)
    again = phone.datagram_received(notify.data, SERVER, 0.5)
    assert [s.data for s in again.sends] == [s.data for s in first.sends] and again.fetches == []


def test_failures_name_the_file_and_the_reason() -> None:
    phone = PhoneCore(PROFILE, random.Random(1))
    server = PnpResponder(SERVER, PnpPolicy(rules=RULES), random.Random(2))
    notify = server.datagram_received(phone.start(0.0).sends[0].data, (PHONE_IP, 5060), 0.0).sends[
        1
    ]
    url = phone.datagram_received(notify.data, SERVER, 0.0).fetches[0].url
    phone.fetch_done(url, 404, b"no template matches /KX-HDV130N.cfg\n", None, 0.1)
    assert phone.done and not phone.report.provisioned
    assert phone.report.reason == (  # the server's reason, from the body
        "http://198.18.0.1:8080/KX-HDV130N.cfg: HTTP 404: no template matches /KX-HDV130N.cfg"
    )


def test_a_file_breaking_the_format_fails_the_boot() -> None:
    phone = PhoneCore(PROFILE, random.Random(1))
    server = PnpResponder(SERVER, PnpPolicy(rules=RULES), random.Random(2))
    notify = server.datagram_received(phone.start(0.0).sends[0].data, (PHONE_IP, 5060), 0.0).sends[
        1
    ]
    url = phone.datagram_received(notify.data, SERVER, 0.0).fetches[0].url
    phone.fetch_done(url, 200, b"not a panasonic file\n", None, 0.1)
    assert not phone.report.provisioned and "first line must start with" in (
        phone.report.reason or ""
    )


def test_switched_off_pnp_and_ipv6_mode() -> None:
    off = PhoneCore(PhoneProfile(mac="0080F0C571EB", ip="198.18.0.2", channels=frozenset()))
    assert off.start(0.0).sends == [] and off.done
    assert off.report.channels_tried["sip-pnp"] == "switched off"
    # IPv6 mode: DHCPv6 alone, a SOLICIT with IA_NA and ORO 17 when there is no address
    from preprov.dhcp6 import codec

    v6 = PhoneCore(PhoneProfile(mac="0080F0C571EB", ip_mode="ipv6"))
    (send,) = v6.start(0.0).sends
    assert send.addr == ("ff02::1:2", 547)
    m = codec.decode(send.data)
    assert isinstance(m, codec.Message) and m.msg_type == codec.SOLICIT
    assert codec.decode_oro(m.get(codec.ORO) or b"") == {17} and m.get(codec.IA_NA) is not None
    # with an address: INFORMATION-REQUEST
    stateless = PhoneCore(PhoneProfile(mac="0080F0C571EB", ip_mode="ipv6", ip6="fd00::9"))
    m = codec.decode(stateless.start(0.0).sends[0].data)
    assert isinstance(m, codec.Message) and m.msg_type == codec.INFORMATION_REQUEST


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=5), st.data())
def test_phone_core_survives_garbage(datagrams: list[bytes], data: st.DataObject) -> None:
    phone = PhoneCore(PROFILE, random.Random(1))
    server = PnpResponder(SERVER, PnpPolicy(rules=RULES), random.Random(2))
    notify = server.datagram_received(phone.start(0.0).sends[0].data, (PHONE_IP, 5060), 0.0).sends[
        1
    ]
    # mutated NOTIFYs and random bytes, in any order, never raise
    fetches = []
    for d in datagrams:
        fetches += phone.datagram_received(d, SERVER, 0.1).fetches
        mutated = bytearray(notify.data)
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
        fetches += phone.datagram_received(bytes(mutated), SERVER, 0.2).fetches
    while (t := phone.next_timer()) is not None:
        fetches += phone.timer_expired(t).fetches
    # and whatever it fetched answers garbage
    while fetches:
        f = fetches.pop()
        fetches += phone.fetch_done(
            f.url, 200, data.draw(st.binary(max_size=300)), None, 6.0
        ).fetches
    assert phone.done


def dhcp_pair(options: dict[str, object] | None = None) -> tuple[PhoneCore, object]:
    import ipaddress

    from preprov.config import Dhcp4Options
    from preprov.dhcp4.leases import LeaseTable, default_subnet
    from preprov.dhcp4.server import Dhcp4Policy, Dhcp4Server

    iface = ipaddress.IPv4Interface("198.18.0.1/24")
    sub = default_subnet(iface)
    policy = Dhcp4Policy(
        server_ip=iface.ip, rules=RULES, local=sub, options=Dhcp4Options(**(options or {}))
    )
    return PhoneCore, Dhcp4Server(policy, LeaseTable([sub]))


def run_dhcp(phone: PhoneCore, server: object) -> list[str]:
    """Carry datagrams between the two cores until the phone asks to fetch; return the URLs."""
    acts = phone.start(0.0)
    for _ in range(6):
        if acts.fetches:
            return [f.url for f in acts.fetches]
        replies = []
        for s in acts.sends:
            if s.addr[1] == 67:
                replies += server.datagram_received(s.data, ("0.0.0.0", 68), 1000.0).sends  # type: ignore[attr-defined]
        if not replies:
            return []
        acts = phone.datagram_received(replies[0].data, ("198.18.0.1", 67), 0.01)
    return []


def test_phone_without_address_leases_one_then_takes_160_159_66_in_order() -> None:
    channels = {"dhcpv4-option-160", "dhcpv4-option-159", "dhcpv4-option-66"}
    for off, want_channel, want_url in [
        (set(), "dhcpv4-option-160", "http://198.18.0.1:8080/{MODEL}.cfg"),
        ({"dhcpv4-option-160"}, "dhcpv4-option-159", "http://198.18.0.1:8080/{MODEL}.cfg"),
        (
            {"dhcpv4-option-160", "dhcpv4-option-159"},
            "dhcpv4-option-66",
            "http://198.18.0.1:8080/{MODEL}.cfg",
        ),
    ]:
        _, server = dhcp_pair()
        phone = PhoneCore(
            PhoneProfile(mac="0080F0C571EB", channels=frozenset(channels - off)), random.Random(3)
        )
        urls = run_dhcp(phone, server)
        assert urls == ["http://198.18.0.1:8080/KX-HDV130.cfg"], off
        assert phone.report.channel == want_channel and phone.report.url == want_url
        assert phone.ip == "198.18.0.128"
        for code in off:
            assert phone.report.channels_tried[code] == "switched off"


def test_choose_url_forms_of_66_and_67() -> None:
    from preprov.phone.dhcp4 import choose_url

    on = {"dhcpv4-option-160", "dhcpv4-option-159", "dhcpv4-option-66"}
    assert choose_url({160: b"http://h", 67: b"pana/{MAC}.cfg"}, on) == (
        "dhcpv4-option-160",
        "http://h/pana/{MAC}.cfg",
    )
    assert choose_url({159: b"https://u:p@h:8443/x/"}, on) == (
        "dhcpv4-option-159",
        "https://u:p@h:8443/x/{MODEL}.cfg",
    )
    assert choose_url({66: b"198.18.0.1"}, on) == (
        "dhcpv4-option-66",
        "tftp://198.18.0.1/{MODEL}.cfg",
    )
    assert choose_url({66: b"http://h/d/"}, on) == ("dhcpv4-option-66", "http://h/d/{MODEL}.cfg")
    assert choose_url({66: b"http://h/d/f.cfg"}, on) == ("dhcpv4-option-66", "http://h/d/f.cfg")
    assert choose_url({160: b"http://h"}, {"dhcpv4-option-66"}) is None
