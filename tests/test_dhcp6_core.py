"""The DHCPv6 codec (against scapy, and round trips) and the server core, with bytes."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptOptReq,
)

from preprov.config import Rule
from preprov.dhcp6 import codec as c
from preprov.dhcp6.server import (
    Dhcp6Policy,
    Dhcp6Server,
    Leases6,
    Pool6,
    default_pool,
    mac_of_duid,
    text,
)
from preprov.events import (
    Dhcp6Answered,
    Dhcp6Ignored,
    Dhcp6Lease,
    Dhcp6Unprovisioned,
    RequestMalformed,
)
from preprov.rules import RuleSet
from preprov.safety import RateLimiter

SERVER_DUID = b"\x00\x04" + bytes(range(16))
IFACE = ipaddress.IPv6Interface("fd00:1::1/64")
RULES6 = RuleSet([Rule(name="d", url="http://${server}:${http_port}/{MODEL}.cfg")],
                 {"server": "[fd00:1::1]", "http_port": "8080"})  # fmt: skip
URL = b"http://[fd00:1::1]:8080/{MODEL}.cfg"
DUID = b"\x00\x03\x00\x01\x00\x80\xf0\xc5\x71\xeb"
CLIENT = ("fe80::280:f0ff:fec5:71eb", 546)
T = 1_000_000.0


def server(pools: list[Pool6] | None = None, **kw: object) -> Dhcp6Server:
    pools = pools or [default_pool(IFACE)]
    leases = Leases6(pools)
    return Dhcp6Server(Dhcp6Policy(duid=SERVER_DUID, rules=RULES6, local=pools[0], **kw), leases)  # type: ignore[arg-type]


def msg(
    t: int,
    *opts: tuple[int, bytes],
    xid: int = 0x123456,
    oro: bool = True,
    duid: bytes | None = DUID,
) -> bytes:
    options: c.Options = []
    if duid is not None:
        options.append((c.CLIENTID, duid))
    if oro:
        options.append((c.ORO, (17).to_bytes(2, "big")))
    options += list(opts)
    return c.encode(c.Message(t, xid, options))


def ia(iaid: int = 7, *addrs: str) -> tuple[int, bytes]:
    return (
        c.IA_NA,
        c.IaNa(iaid, 0, 0, [c.IaAddress(ipaddress.IPv6Address(a), 0, 0) for a in addrs]).encode(),
    )


def answer(out: object) -> c.Message:
    (send,) = out.sends  # type: ignore[attr-defined]
    m = c.decode(send.data)
    assert isinstance(m, c.Message)
    return m


def vendor_url(m: c.Message) -> bytes | None:
    payload = m.get(c.VENDOR_OPTS)
    if payload is None:
        return None
    enterprise, subs = c.decode_vendor_opts(payload)
    assert enterprise == 258
    return dict(subs)[1]


# -- codec ---------------------------------------------------------------------------


def test_scapy_solicit_decodes_and_re_encodes_byte_for_byte() -> None:
    pkt = (DHCP6_Solicit(trid=0xABCDEF) / DHCP6OptClientId(duid=DUID_LL(lladdr="00:80:f0:c5:71:eb"))
           / DHCP6OptOptReq(reqopts=[17]) / DHCP6OptElapsedTime() / DHCP6OptIA_NA(iaid=7))  # fmt: skip
    raw = bytes(pkt)
    m = c.decode(raw)
    assert isinstance(m, c.Message) and (m.msg_type, m.transaction_id) == (c.SOLICIT, 0xABCDEF)
    assert m.get(c.CLIENTID) == DUID and c.decode_oro(m.get(c.ORO) or b"") == {17}
    assert c.IaNa.decode(m.get(c.IA_NA) or b"").iaid == 7
    assert c.encode(m) == raw


def test_scapy_reads_our_advertise() -> None:
    out = server().datagram_received(msg(c.SOLICIT, ia()), CLIENT, T)
    pkt = DHCP6_Advertise(out.sends[0].data)
    assert pkt.trid == 0x123456
    ia_na = pkt.getlayer(DHCP6OptIA_NA)
    assert ia_na.iaid == 7 and ia_na.ianaopts[0].addr == "fd00:1::1000"
    assert bytes(pkt).find(URL) > 0


options = st.lists(st.tuples(st.integers(0, 65535), st.binary(max_size=40)), max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(c.NAMES)[:11]), st.integers(0, 2**24 - 1), options)
def test_message_round_trip(t: int, xid: int, opts: c.Options) -> None:
    m = c.Message(t, xid, opts)
    assert c.decode(c.encode(m)) == m


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 255),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    options,
)
def test_relay_round_trip(hops: int, link: bytes, peer: bytes, opts: c.Options) -> None:
    r = c.Relay(c.RELAY_FORW, hops, ipaddress.IPv6Address(link), ipaddress.IPv6Address(peer), opts)
    assert c.decode(c.encode(r)) == r


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises(data: bytes) -> None:
    out = server().datagram_received(data, CLIENT, T)
    for e in out.events:
        # an INFORMATION-REQUEST without an ORO is answered without option 17, and said so
        allowed = (RequestMalformed, Dhcp6Answered, Dhcp6Ignored, Dhcp6Lease, Dhcp6Unprovisioned)
        assert isinstance(e, allowed)


# -- server --------------------------------------------------------------------------


def test_solicit_advertise_request_reply() -> None:
    s = server()
    out = s.datagram_received(msg(c.SOLICIT, ia()), CLIENT, T)
    adv = answer(out)
    assert (
        adv.msg_type == c.ADVERTISE
        and adv.get(c.SERVERID) == SERVER_DUID
        and adv.get(c.CLIENTID) == DUID
    )
    (addr,) = c.IaNa.decode(adv.get(c.IA_NA) or b"").addresses
    assert str(addr.address) == "fd00:1::1000" and (addr.preferred, addr.valid) == (3600, 7200)
    assert vendor_url(adv) == URL
    assert out.sends[0].addr == CLIENT and not any(isinstance(e, Dhcp6Lease) for e in out.events)
    said = next(e for e in out.events if isinstance(e, Dhcp6Answered))
    assert (said.message, said.to, said.relayed) == ("ADVERTISE", f"[{CLIENT[0]}]:546", 0)
    out = s.datagram_received(
        msg(c.REQUEST, (c.SERVERID, SERVER_DUID), ia(7, "fd00:1::1000")), CLIENT, T + 1
    )
    rep = answer(out)
    assert rep.msg_type == c.REPLY and vendor_url(rep) == URL
    lease = next(e for e in out.events if isinstance(e, Dhcp6Lease))
    assert (lease.ip, lease.state, lease.mac) == ("fd00:1::1000", "bound", "0080F0C571EB")
    # another server's REQUEST is not ours to answer
    other = s.datagram_received(
        msg(c.REQUEST, (c.SERVERID, b"\x00\x04" + bytes(16)), ia()), CLIENT, T
    )
    assert other.sends == [] and isinstance(other.events[0], Dhcp6Ignored)


def test_an_address_another_server_bound_first_is_not_answered_then_avoided() -> None:
    """Two servers sharing the inventory: the other's client committed this address
    first. Our REPLY is not sent, and the client's next REQUEST gets another address."""
    s = server()
    req = msg(c.REQUEST, (c.SERVERID, SERVER_DUID), ia(7, "fd00:1::1000"))
    out = s.datagram_received(req, CLIENT, T)
    assert out.if_lost is not None and answer(out).msg_type == c.REPLY
    lost = out.if_lost(frozenset({"fd00:1::1000"}))
    assert lost.sends == [] and isinstance(lost.events[0], Dhcp6Ignored)
    assert "bound by another server first" in lost.events[0].reason
    again = answer(s.datagram_received(req, CLIENT, T + 1))
    (addr,) = c.IaNa.decode(again.get(c.IA_NA) or b"").addresses
    assert str(addr.address) != "fd00:1::1000"


def test_rapid_commit_binds_at_once_unless_disabled() -> None:
    out = server().datagram_received(msg(c.SOLICIT, ia(), (c.RAPID_COMMIT, b"")), CLIENT, T)
    rep = answer(out)
    assert rep.msg_type == c.REPLY and rep.get(c.RAPID_COMMIT) == b""
    assert any(isinstance(e, Dhcp6Lease) for e in out.events)
    off = server(rapid_commit=False).datagram_received(
        msg(c.SOLICIT, ia(), (c.RAPID_COMMIT, b"")), CLIENT, T
    )
    assert answer(off).msg_type == c.ADVERTISE


def test_renew_rebind_release_decline_confirm() -> None:
    s = server()
    s.datagram_received(msg(c.SOLICIT, ia(), (c.RAPID_COMMIT, b"")), CLIENT, T)
    renew = s.datagram_received(
        msg(c.RENEW, (c.SERVERID, SERVER_DUID), ia(7, "fd00:1::1000")), CLIENT, T + 100
    )
    assert next(e for e in renew.events if isinstance(e, Dhcp6Lease)).expires == T + 100 + 7200
    unknown = answer(
        s.datagram_received(
            msg(c.RENEW, (c.SERVERID, SERVER_DUID), ia(9, "fd00:1::1000")), CLIENT, T
        )
    )
    assert c.IaNa.decode(unknown.get(c.IA_NA) or b"").status == (
        c.NO_BINDING,
        "no binding for this IA",
    )
    rebind = answer(s.datagram_received(msg(c.REBIND, ia(7, "fd00:1::1000")), CLIENT, T + 200))
    assert c.IaNa.decode(rebind.get(c.IA_NA) or b"").addresses[0].valid == 7200
    ok = answer(s.datagram_received(msg(c.CONFIRM, ia(7, "fd00:1::1000")), CLIENT, T))
    assert c.decode_status(ok.get(c.STATUS_CODE) or b"")[0] == c.SUCCESS
    off = answer(s.datagram_received(msg(c.CONFIRM, ia(7, "fd00:9::5")), CLIENT, T))
    assert c.decode_status(off.get(c.STATUS_CODE) or b"")[0] == c.NOT_ON_LINK
    rel = s.datagram_received(
        msg(c.RELEASE, (c.SERVERID, SERVER_DUID), ia(7, "fd00:1::1000")), CLIENT, T + 300
    )
    assert c.decode_status(answer(rel).get(c.STATUS_CODE) or b"")[0] == c.SUCCESS
    assert next(e for e in rel.events if isinstance(e, Dhcp6Lease)).state == "released"
    s.datagram_received(msg(c.SOLICIT, ia(8), (c.RAPID_COMMIT, b"")), CLIENT, T + 400)
    dec = s.datagram_received(
        msg(c.DECLINE, (c.SERVERID, SERVER_DUID), ia(8, "fd00:1::1001")), CLIENT, T + 401
    )
    assert next(e for e in dec.events if isinstance(e, Dhcp6Lease)).state == "declined"


def test_information_request_is_stateless_and_option_17_follows_the_oro() -> None:
    s = server()
    rep = answer(s.datagram_received(msg(c.INFORMATION_REQUEST), CLIENT, T))
    assert rep.msg_type == c.REPLY and rep.get(c.IA_NA) is None and vendor_url(rep) == URL
    out = s.datagram_received(msg(c.INFORMATION_REQUEST, oro=False), CLIENT, T)
    assert vendor_url(answer(out)) is None
    assert out.events[0].note == "the client's ORO does not ask for option 17"  # type: ignore[attr-defined]
    always = server(always_send=True, enterprise=4242, suboption=9)
    rep = answer(always.datagram_received(msg(c.INFORMATION_REQUEST, oro=False), CLIENT, T))
    assert c.decode_vendor_opts(rep.get(c.VENDOR_OPTS) or b"") == (4242, [(9, URL)])


def test_no_addresses_left() -> None:
    tiny = Pool6(
        IFACE.network, ipaddress.IPv6Address("fd00:1::10"), ipaddress.IPv6Address("fd00:1::10")
    )
    s = server([tiny])
    s.datagram_received(msg(c.SOLICIT, ia(), (c.RAPID_COMMIT, b"")), CLIENT, T)
    rep = answer(s.datagram_received(msg(c.SOLICIT, ia(), duid=DUID[:-1] + b"\x00"), CLIENT, T))
    assert c.IaNa.decode(rep.get(c.IA_NA) or b"").status == (
        c.NO_ADDRS_AVAIL,
        "the pool is exhausted",
    )


def test_a_nearly_full_pool_gives_back_expired_offers_not_other_clients_offers() -> None:
    """Bound addresses everywhere but a few offers that expired, far apart: each new
    client gets one of those at once, none takes back the offer another client is
    about to request (the walk from the cursor alone crossed only bound addresses,
    and at twice its rate the server answered 59-63 % of it)."""
    first = ipaddress.IPv6Address("fd00:1::1:0")
    pool = Pool6(IFACE.network, first, first + 2999)
    leases = Leases6([pool])
    for n in range(3000):
        b = leases.allocate(f"c{n}", None, pool, None, T, 30.0)
        assert b is not None
        if n % 300:
            leases.bind(b, T, 7200)
    later = T + 40  # the ten offers never requested have expired
    got = [leases.allocate(f"new{n}", None, pool, None, later, 30.0) for n in range(10)]
    assert all(b is not None for b in got)
    ips = [b.ip for b in got if b is not None]
    assert len(set(ips)) == 10 and {int(ip) - int(first) for ip in ips} == set(range(0, 3000, 300))
    for n, b in enumerate(got):  # each still holds its own
        assert leases.current(f"new{n}", later) is b


def test_relay_forw_nested_gets_relay_repl_with_interface_ids() -> None:
    far = Pool6(ipaddress.IPv6Network("fd00:9::/64"), ipaddress.IPv6Address("fd00:9::100"),
                ipaddress.IPv6Address("fd00:9::1ff"))  # fmt: skip
    s = server([default_pool(IFACE), far])
    inner = msg(c.SOLICIT, ia(), (c.RAPID_COMMIT, b""))
    relay1 = c.Relay(c.RELAY_FORW, 0, ipaddress.IPv6Address("fd00:9::1"), ipaddress.IPv6Address("fe80::2"),
                     [(c.INTERFACE_ID, b"port-7"), (c.RELAY_MSG, inner)])  # fmt: skip
    relay2 = c.Relay(c.RELAY_FORW, 1, ipaddress.IPv6Address("::"), ipaddress.IPv6Address("fd00:1::9"),
                     [(c.INTERFACE_ID, b"uplink"), (c.RELAY_MSG, c.encode(relay1))])  # fmt: skip
    out = s.datagram_received(c.encode(relay2), ("fd00:1::9", 547), T)
    assert out.sends[0].addr == ("fd00:1::9", 547)
    outer = c.decode(out.sends[0].data)
    assert isinstance(outer, c.Relay) and outer.msg_type == c.RELAY_REPL and outer.hop_count == 1
    assert outer.get(c.INTERFACE_ID) == b"uplink" and str(outer.peer_address) == "fd00:1::9"
    mid = c.decode(outer.get(c.RELAY_MSG) or b"")
    assert isinstance(mid, c.Relay) and mid.get(c.INTERFACE_ID) == b"port-7"
    rep = c.decode(mid.get(c.RELAY_MSG) or b"")
    assert isinstance(rep, c.Message) and rep.msg_type == c.REPLY
    # the address comes from the innermost relay's link
    assert str(c.IaNa.decode(rep.get(c.IA_NA) or b"").addresses[0].address) == "fd00:9::100"
    said = next(e for e in out.events if isinstance(e, Dhcp6Answered))
    assert (said.to, said.relayed) == ("[fd00:1::9]:547", 2)  # the outer relay, two hops


def test_mac_from_duid() -> None:
    assert mac_of_duid(DUID) == "0080F0C571EB"
    assert (
        mac_of_duid(b"\x00\x01\x00\x01" + bytes(4) + bytes.fromhex("0080f0c571eb"))
        == "0080F0C571EB"
    )
    assert mac_of_duid(SERVER_DUID) is None


def test_bindings_survive_a_restart() -> None:
    s = server()
    out = s.datagram_received(msg(c.SOLICIT, ia(), (c.RAPID_COMMIT, b"")), CLIENT, T)
    lease = next(e for e in out.events if isinstance(e, Dhcp6Lease))
    # what serve loads from the store at start (server.py, _start_dhcp6)
    from preprov.dhcp6.server import Binding

    fresh = server()
    fresh.leases.load(
        [
            Binding(
                ipaddress.IPv6Address(lease.ip),
                lease.client_id,
                lease.mac,
                lease.state,
                lease.expires,
            )
        ]
    )
    other = answer(
        fresh.datagram_received(msg(c.SOLICIT, ia(), duid=DUID[:-1] + b"\x01"), CLIENT, T + 1)
    )
    assert str(c.IaNa.decode(other.get(c.IA_NA) or b"").addresses[0].address) != lease.ip
    again = answer(fresh.datagram_received(msg(c.SOLICIT, ia()), CLIENT, T + 2))
    assert str(c.IaNa.decode(again.get(c.IA_NA) or b"").addresses[0].address) == lease.ip


def test_a_flood_of_solicits_does_not_starve_a_phone() -> None:
    net = IFACE.network
    small = Pool6(net, net[0x1000], net[0x1003], frozenset({IFACE.ip}))
    s = server([small], rapid_commit=False)
    for i in range(50):
        duid = b"\x00\x03\x00\x01\x02\xaa" + i.to_bytes(4, "big")
        s.datagram_received(msg(c.SOLICIT, ia(1), duid=duid), CLIENT, T)
    adv = answer(s.datagram_received(msg(c.SOLICIT, ia(7)), CLIENT, T))
    addr = c.IaNa.decode(adv.get(c.IA_NA) or b"").addresses
    assert len(addr) == 1 and addr[0].address in small.prefix  # not NoAddrsAvail
    rep = answer(s.datagram_received(msg(c.REQUEST, ia(7, str(addr[0].address)),
                                         (c.SERVERID, SERVER_DUID)), CLIENT, T + 0.01))  # fmt: skip
    assert rep.msg_type == c.REPLY and c.IaNa.decode(rep.get(c.IA_NA) or b"").addresses


def test_rate_limit_per_source_not_for_relays() -> None:
    s = server(limiter=RateLimiter(5, 1), rapid_commit=False)
    answered = sum(bool(s.datagram_received(msg(c.SOLICIT, ia(i)), CLIENT, T).sends)
                   for i in range(50))  # fmt: skip
    assert answered == 5
    relay = c.encode(c.Relay(c.RELAY_FORW, 0, IFACE.ip, ipaddress.IPv6Address("fe80::9"),
                             [(c.RELAY_MSG, msg(c.SOLICIT, ia(1)))]))  # fmt: skip
    assert all(s.datagram_received(relay, ("fd00:1::99", 547), T).sends for _ in range(20))


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**128 - 1))
def test_address_text_is_what_str_writes(n: int) -> None:
    """The text of an address on the hot path (the C library's) is str()'s (RFC 5952)."""
    for ip in (ipaddress.IPv6Address(n), ipaddress.IPv6Address(n & 0xFFFFFFFF),
               ipaddress.IPv6Address(0xFFFF00000000 | (n & 0xFFFFFFFF))):  # fmt: skip
        assert text(ip) == str(ip)
