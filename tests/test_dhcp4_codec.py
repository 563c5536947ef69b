"""preprov's DHCPv4 codec against pydhcp's and scapy's, both ways."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pydhcp.packet import DHCPMessage, DHCPOpcode
from scapy.layers.dhcp import BOOTP, DHCP

from preprov.dhcp4.codec import CodecError, Overflow, Packet, decode, encode

codes = st.integers(1, 254).filter(lambda c: c not in (52, 53))
option_maps = st.dictionaries(codes, st.binary(min_size=1, max_size=300), max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.binary(min_size=6, max_size=6), option_maps, st.booleans())
def test_pydhcp_reads_what_we_write(
    xid: int, chaddr: bytes, options: dict[int, bytes], bcast: bool
) -> None:
    p = Packet(op=2, xid=xid, chaddr=chaddr, flags=0x8000 if bcast else 0, yiaddr=b"\xc6\x12\x00\x05",
               options={53: b"\x02", **options})  # fmt: skip
    try:
        wire = encode(p, 1500)
    except Overflow:
        return
    m = DHCPMessage.decode(wire)
    assert (m.op, m.xid, m.chaddr, str(m.yiaddr)) == (
        DHCPOpcode.BOOTREPLY,
        xid,
        chaddr,
        "198.18.0.5",
    )
    for code, value in options.items():
        assert bytes(m.options[code]) == value  # split values come back whole (RFC 3396)
    again = decode(wire)
    assert again.options == {53: b"\x02", **options} and again.broadcast == bcast


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.binary(min_size=6, max_size=6), option_maps)
def test_we_read_what_pydhcp_writes(xid: int, chaddr: bytes, options: dict[int, bytes]) -> None:
    m = DHCPMessage(DHCPOpcode.BOOTREQUEST, xid=xid, chaddr=chaddr, giaddr="198.19.0.2")
    for code, value in options.items():
        m.options[code] = value
    try:
        wire = m.encode(1500)
    except (OverflowError, ValueError):
        return
    p = decode(wire)
    assert (p.op, p.xid, p.chaddr, p.giaddr) == (1, xid, chaddr, bytes([198, 19, 0, 2]))
    for code, value in options.items():
        assert p.options[code] == value


def test_scapy_reads_what_we_write() -> None:
    p = Packet(op=2, xid=0x5150, chaddr=bytes.fromhex("0080f0c571eb"), yiaddr=bytes([198, 18, 0, 9]),
               options={53: b"\x05", 1: bytes([255, 255, 255, 0]), 160: b"http://h", 67: b"{MODEL}.cfg"})  # fmt: skip
    pkt = BOOTP(encode(p))
    opts = {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple)}
    assert (
        pkt.xid == 0x5150
        and pkt.yiaddr == "198.18.0.9"
        and pkt.chaddr[:6] == bytes.fromhex("0080f0c571eb")
    )
    assert opts["message-type"] == 5 and opts["subnet_mask"] == "255.255.255.0"
    assert opts["v4-captive-portal"] == b"http://h" and opts["boot-file-name"] == b"{MODEL}.cfg"


def test_overload_received_in_file_and_sname() -> None:
    m = bytearray(encode(Packet(op=1, xid=1, chaddr=bytes(6), options={53: b"\x01", 52: b"\x03"})))
    m[108:112] = bytes([67, 2, ord("a"), ord("b")])  # file field (offset 108) holds option 67
    m[44:48] = bytes([66, 1, ord("h"), 255])  # sname field (offset 44) holds option 66
    p = decode(bytes(m))
    assert p.options[67] == b"ab" and p.options[66] == b"h"


def test_refusals() -> None:
    for data, why in [
        (b"short", "shorter than a DHCP message"),
        (bytes(236) + b"nope" + b"\xff", "no DHCP magic cookie"),
        (bytes([3]) + bytes(235) + b"\x63\x82\x53\x63\xff", "op 3"),
        (bytes([1, 1, 17]) + bytes(233) + b"\x63\x82\x53\x63\xff", "hlen 17"),
        (
            bytes([1]) + bytes(235) + b"\x63\x82\x53\x63" + bytes([53, 9, 1]),
            "option 53 says 9 octets",
        ),
    ]:
        try:
            decode(data)
        except CodecError as e:
            assert why in str(e)
        else:
            raise AssertionError(f"{why}: accepted")
    try:
        encode(Packet(op=2, xid=1, chaddr=bytes(6), options={160: b"x" * 400}), 576)
    except Overflow as e:
        assert "fit" in str(e)
    else:
        raise AssertionError("400 octets of options fit in 576")


def test_parts_of_a_code_are_joined_into_bytes() -> None:
    """RFC 3396: a code that comes again continues its value, in the options, the file
    and sname fields (option 52); the value is bytes like every other, whatever the
    number of parts (a datagram of 20,000 one-octet parts is one 20,000-octet value)."""
    head = bytes([1, 1, 6]) + bytes(233)
    magic = b"\x63\x82\x53\x63"
    parts = bytes([53, 1, 1, 60, 2, 65, 66, 12, 1, 104, 60, 1, 67])
    p = decode(head + magic + parts + b"\xff")
    assert p.options == {53: b"\x01", 60: b"ABC", 12: b"h"}
    assert all(type(v) is bytes for v in p.options.values())
    many = decode(head + magic + bytes([53, 1, 1]) + bytes([43, 1, 7]) * 20_000 + b"\xff")
    assert many.options[43] == bytes([7]) * 20_000 and type(many.options[43]) is bytes
    # option 52 = 1: the file field holds options too, continuing those of the options field
    file = bytes([60, 1, 68, 255]).ljust(128, b"\x00")
    head52 = bytes([1, 1, 6]) + bytes(105) + file
    p52 = decode(head52 + magic + bytes([53, 1, 1, 52, 1, 1, 60, 1, 65, 255]))
    assert p52.options[60] == b"AD" and type(p52.options[60]) is bytes
