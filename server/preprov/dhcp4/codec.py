"""The DHCPv4 wire format (RFC 2131 §2, RFC 2132, RFC 3396), the server's hot path.

Written here, although pydhcp has a complete codec, because the server spent
half its time in it: decoding a DISCOVER, building the OFFER's options and
encoding it took about 35 µs through pydhcp against about 5 µs here, and the
server must answer thousands of exchanges a second (README, "Speed"). pydhcp
still builds the simulated phone's messages and, with scapy, decodes this
codec's output in the tests, so each checks the other.

Received options of the same code are concatenated (RFC 3396); option 52
(overload) is honoured on receive. On send a value over 255 octets is split,
and a reply whose options do not fit the client's maximum message size raises
Overflow: it is refused, never sent truncated (no overload on send).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import cast

MAGIC = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 octets
BOOTREQUEST, BOOTREPLY = 1, 2
BROADCAST_FLAG = 0x8000
MIN_SIZE = 300  # BOOTP's minimum; every DHCP client accepts it
IP_UDP = 28
ZERO4 = b"\x00\x00\x00\x00"


class CodecError(ValueError):
    pass


class Overflow(ValueError):
    pass


@dataclass(slots=True)
class Packet:
    op: int
    xid: int
    chaddr: bytes  # hlen octets
    flags: int = 0
    ciaddr: bytes = ZERO4
    yiaddr: bytes = ZERO4
    siaddr: bytes = ZERO4
    giaddr: bytes = ZERO4
    htype: int = 1
    hops: int = 0
    secs: int = 0
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)


def _walk(buf: bytes, into: dict[int, bytes | bytearray]) -> bool:
    """The options of `buf` into `into`; True when a code came again (its parts are
    then joined in a bytearray: bytes + bytes would copy quadratically, a packet of
    one-octet parts of one code took tens of milliseconds)."""
    i, n = 0, len(buf)
    joined = False
    while i < n:
        code = buf[i]
        if code == 255:
            return joined
        if code == 0:
            i += 1
            continue
        if i + 1 >= n:
            raise CodecError(f"option {code} is cut short")
        ln = buf[i + 1]
        end = i + 2 + ln
        if end > n:
            raise CodecError(f"option {code} says {ln} octets, {n - i - 2} remain")
        got = into.get(code)
        if got is None:
            into[code] = buf[i + 2 : end]
        else:  # RFC 3396: the parts are concatenated
            if type(got) is bytes:
                got = into[code] = bytearray(got)
            got += buf[i + 2 : end]
            joined = True
        i = end
    return joined


def decode(data: bytes) -> Packet:
    if len(data) < HEADER.size + 4:
        raise CodecError(f"{len(data)} octets: shorter than a DHCP message (240)")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file) = HEADER.unpack_from(data)  # fmt: skip
    if data[236:240] != MAGIC:
        raise CodecError("no DHCP magic cookie: BOOTP is not served")
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise CodecError(f"op {op} is neither request nor reply")
    if hlen > 16:
        raise CodecError(f"hlen {hlen} over 16")
    raw: dict[int, bytes | bytearray] = {}
    joined = _walk(data[240:], raw)
    overload = raw.get(52)
    if overload and len(overload) == 1:
        if overload[0] & 1:
            joined = _walk(file, raw) or joined
        if overload[0] & 2:
            joined = _walk(sname, raw) or joined
    # bytes all, unless joined
    options = {k: bytes(v) for k, v in raw.items()} if joined else cast(dict[int, bytes], raw)
    return Packet(
        op=op, xid=xid, chaddr=chaddr[:hlen], flags=flags, ciaddr=ciaddr, yiaddr=yiaddr,
        siaddr=siaddr, giaddr=giaddr, htype=htype, hops=hops, secs=secs,
        options=options,
    )  # fmt: skip


def encode(p: Packet, max_size: int = 576) -> bytes:
    """`max_size` budgets the whole IP datagram, as option 57 does (RFC 2132 §9.10)."""
    return assemble(p, encode_options(p.options), max_size)


def encode_options(options: dict[int, bytes]) -> bytes:
    """Options on the wire, without the end option: a value over 255 octets is split."""
    opts = bytearray()
    for code, value in options.items():
        if not value:
            opts += bytes((code, 0))
        for i in range(0, len(value), 255):
            part = value[i : i + 255]
            opts += bytes((code, len(part)))
            opts += part
    return bytes(opts)


def assemble(p: Packet, options: bytes, max_size: int = 576) -> bytes:
    """The message, its options already encoded (encode_options) in place of p.options:
    the server keeps the options of its answers encoded, and adds what is the client's."""
    budget = max_size - IP_UDP - HEADER.size - 4
    if len(options) + 1 > budget:
        raise Overflow(f"the options need {len(options) + 1} octets, {budget} fit")
    head = HEADER.pack(
        p.op, p.htype, len(p.chaddr), p.hops, p.xid, min(p.secs, 65535), p.flags, p.ciaddr,
        p.yiaddr, p.siaddr, p.giaddr, p.chaddr.ljust(16, b"\x00"), b"", b"",
    )  # fmt: skip
    out = head + MAGIC + options + b"\xff"
    if len(out) < MIN_SIZE:
        out += bytes(MIN_SIZE - len(out))
    return out
