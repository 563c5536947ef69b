"""DHCPv6 messages and options (RFC 8415 §8, §9, §21), written here.

No maintained Python DHCPv6 codec is fast enough for a server: scapy takes
about 150 µs to parse a SOLICIT and about 1 ms to build an ADVERTISE on this
machine kind (issue 5). This one is checked against scapy in the tests, and
with hypothesis round trips.

Options are kept as an ordered list of (code, payload): a message may carry an
option more than once (one IA_NA per interface association).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

# message types (RFC 8415 §7.3)
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY = 1, 2, 3, 4, 5, 6, 7
RELEASE, DECLINE, RECONFIGURE, INFORMATION_REQUEST, RELAY_FORW, RELAY_REPL = 8, 9, 10, 11, 12, 13
NAMES = {1: "SOLICIT", 2: "ADVERTISE", 3: "REQUEST", 4: "CONFIRM", 5: "RENEW", 6: "REBIND",
         7: "REPLY", 8: "RELEASE", 9: "DECLINE", 10: "RECONFIGURE", 11: "INFORMATION-REQUEST",
         12: "RELAY-FORW", 13: "RELAY-REPL"}  # fmt: skip

# option codes (RFC 8415 §21)
CLIENTID, SERVERID, IA_NA, IAADDR, ORO, PREFERENCE, ELAPSED_TIME, RELAY_MSG = 1, 2, 3, 5, 6, 7, 8, 9
STATUS_CODE, RAPID_COMMIT, VENDOR_CLASS, VENDOR_OPTS, INTERFACE_ID = 13, 14, 16, 17, 18

# status codes (RFC 8415 §21.13)
SUCCESS, UNSPEC_FAIL, NO_ADDRS_AVAIL, NO_BINDING, NOT_ON_LINK, USE_MULTICAST = 0, 1, 2, 3, 4, 5

Options = list[tuple[int, bytes]]


class CodecError(ValueError):
    pass


class _HasOptions:
    options: Options

    def get(self, code: int) -> bytes | None:
        for c, v in self.options:
            if c == code:
                return v
        return None

    def all(self, code: int) -> list[bytes]:
        return [v for c, v in self.options if c == code]


@dataclass
class Message(_HasOptions):
    msg_type: int
    transaction_id: int = 0  # 24 bits
    options: Options = field(default_factory=list)


@dataclass
class Relay(_HasOptions):
    msg_type: int  # RELAY_FORW or RELAY_REPL
    hop_count: int
    link_address: ipaddress.IPv6Address
    peer_address: ipaddress.IPv6Address
    options: Options = field(default_factory=list)


def decode_options(buf: bytes) -> Options:
    out: Options = []
    i, n = 0, len(buf)
    while i < n:
        if i + 4 > n:
            raise CodecError(f"option header cut short at octet {i}")
        code, ln = struct.unpack_from("!HH", buf, i)
        end = i + 4 + ln
        if end > n:
            raise CodecError(f"option {code} says {ln} octets, {n - i - 4} remain")
        out.append((code, buf[i + 4 : end]))
        i = end
    return out


def encode_options(options: Options) -> bytes:
    parts = []
    for code, value in options:
        if len(value) > 0xFFFF:
            raise CodecError(f"option {code} is {len(value)} octets, over 65535")
        parts.append(struct.pack("!HH", code, len(value)))
        parts.append(value)
    return b"".join(parts)


def decode(data: bytes) -> Message | Relay:
    if len(data) < 4:
        raise CodecError(f"{len(data)} octets: shorter than a DHCPv6 message")
    t = data[0]
    if t in (RELAY_FORW, RELAY_REPL):
        if len(data) < 34:
            raise CodecError(f"{len(data)} octets: shorter than a relay message (34)")
        return Relay(
            t, data[1], ipaddress.IPv6Address(data[2:18]), ipaddress.IPv6Address(data[18:34]),
            decode_options(data[34:]),
        )  # fmt: skip
    if t not in NAMES:
        raise CodecError(f"message type {t} is not DHCPv6")
    return Message(t, int.from_bytes(data[1:4], "big"), decode_options(data[4:]))


def encode(m: Message | Relay) -> bytes:
    if isinstance(m, Relay):
        return (
            bytes((m.msg_type, m.hop_count)) + m.link_address.packed + m.peer_address.packed
            + encode_options(m.options)
        )  # fmt: skip
    return bytes((m.msg_type,)) + m.transaction_id.to_bytes(3, "big") + encode_options(m.options)


# -- option payloads --------------------------------------------------------------


@dataclass
class IaAddress:
    address: ipaddress.IPv6Address
    preferred: int
    valid: int
    options: Options = field(default_factory=list)


@dataclass
class IaNa:
    iaid: int
    t1: int
    t2: int
    addresses: list[IaAddress] = field(default_factory=list)
    status: tuple[int, str] | None = None

    @classmethod
    def decode(cls, payload: bytes) -> IaNa:
        if len(payload) < 12:
            raise CodecError("IA_NA shorter than 12 octets")
        iaid, t1, t2 = struct.unpack_from("!III", payload)
        ia = cls(iaid, t1, t2)
        for code, value in decode_options(payload[12:]):
            if code == IAADDR:
                if len(value) < 24:
                    raise CodecError("IAADDR shorter than 24 octets")
                pref, valid = struct.unpack_from("!II", value, 16)
                ia.addresses.append(
                    IaAddress(ipaddress.IPv6Address(value[:16]), pref, valid,
                              decode_options(value[24:]))
                )  # fmt: skip
            elif code == STATUS_CODE:
                ia.status = decode_status(value)
        return ia

    def encode(self) -> bytes:
        inner: Options = []
        for a in self.addresses:
            body = a.address.packed + struct.pack("!II", a.preferred, a.valid)
            inner.append((IAADDR, body + encode_options(a.options)))
        if self.status is not None:
            inner.append((STATUS_CODE, encode_status(*self.status)))
        return struct.pack("!III", self.iaid, self.t1, self.t2) + encode_options(inner)


def decode_status(payload: bytes) -> tuple[int, str]:
    if len(payload) < 2:
        raise CodecError("status code shorter than 2 octets")
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


def encode_status(code: int, message: str = "") -> bytes:
    return code.to_bytes(2, "big") + message.encode()


def decode_oro(payload: bytes) -> set[int]:
    return {int.from_bytes(payload[i : i + 2], "big") for i in range(0, len(payload) - 1, 2)}


def vendor_opts(enterprise: int, suboptions: list[tuple[int, bytes]]) -> bytes:
    """Option 17: enterprise number, then sub-options code(2) length(2) data (§21.17)."""
    return enterprise.to_bytes(4, "big") + encode_options(suboptions)


def decode_vendor_opts(payload: bytes) -> tuple[int, Options]:
    if len(payload) < 4:
        raise CodecError("vendor options shorter than 4 octets")
    return int.from_bytes(payload[:4], "big"), decode_options(payload[4:])
