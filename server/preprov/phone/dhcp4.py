"""The simulated phone's DHCPv4 client, without I/O: DORA for a phone without an
address, INFORM for one that has one (RFC 2131 §3.1, §3.4), and the choice
of URL from the answer: option 160, then 159, then 66 (docs/protocol.md §4)."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field

from pydhcp.exceptions import DHCPError
from pydhcp.packet import DHCPFlags, DHCPMessage, DHCPMessageType, DHCPOpcode

from .exchange import Exchange

# What a Panasonic phone asks for (docs/protocol.md §4): mask, router, DNS, domain,
# NTP, and the provisioning options.
PARAMETER_REQUEST_LIST = bytes([1, 3, 6, 15, 42, 66, 67, 159, 160])
SERVER = ("255.255.255.255", 67)


@dataclass
class Lease:
    ip: ipaddress.IPv4Interface | None  # None for an INFORM answer
    server: str
    router: str | None
    options: dict[int, bytes] = field(default_factory=dict)


def choose_url(options: dict[int, bytes], enabled: set[str]) -> tuple[str, str] | None:
    """(channel, URL) by the phone's priority: 160, then 159, then 66.

    160 and 159 are `scheme://.../path` without a file: the phone appends
    `/<option 67>`, or `/{MODEL}.cfg` without 67. 66 without a scheme is a TFTP
    host; ending in `/` it gets `{MODEL}.cfg` appended; otherwise it is the URL.
    """
    text = {k: v.decode("utf-8", "replace").strip().strip("\x00") for k, v in options.items()}
    filename = text.get(67) or "{MODEL}.cfg"
    for code in (160, 159):
        if f"dhcpv4-option-{code}" in enabled and text.get(code):
            return f"dhcpv4-option-{code}", text[code].rstrip("/") + "/" + filename.lstrip("/")
    v66 = text.get(66)
    if "dhcpv4-option-66" in enabled and v66:
        if "://" not in v66:
            return "dhcpv4-option-66", f"tftp://{v66}/{{MODEL}}.cfg"
        if v66.endswith("/"):
            return "dhcpv4-option-66", v66 + "{MODEL}.cfg"
        return "dhcpv4-option-66", v66
    return None


def raw_option(m: DHCPMessage, code: int) -> bytes | None:
    """An option's payload as received (pydhcp's `get` would decode it by its IANA type)."""
    value = m.options[code] if code in m.options else None  # noqa: SIM401
    return bytes(value) if value is not None else None


class Dhcp4Client(Exchange):
    def __init__(
        self, mac: str, rng: random.Random, ciaddr: str | None = None,
        prl: bytes = PARAMETER_REQUEST_LIST, vendor_class: bytes | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.prl = prl
        self.vendor_class = vendor_class
        self.chaddr = bytes.fromhex(mac)
        self.rng = rng
        self.ciaddr = ciaddr  # set: the phone has an address and INFORMs
        self.xid = rng.getrandbits(32)
        self.offer: DHCPMessage | None = None

    def start(self, now: float) -> bytes:
        self.state = "informing" if self.ciaddr else "selecting"
        return self._send(self._inform() if self.ciaddr else self._discover(), now)

    def datagram_received(self, data: bytes, now: float) -> tuple[bytes | None, Lease | None]:
        """(a message to send, the lease once the exchange is over)."""
        try:
            m = DHCPMessage.decode(data)
        except (DHCPError, ValueError):
            return None, None
        if m.op != DHCPOpcode.BOOTREPLY or m.xid != self.xid or m.chaddr[:6] != self.chaddr:
            return None, None
        raw = raw_option(m, 53)
        mtype = raw[0] if raw else None
        if self.state == "selecting" and mtype == DHCPMessageType.DHCPOFFER:
            self.offer = m
            self.state = "requesting"
            return self._send(self._request(m), now), None
        if self.state in ("requesting", "informing") and mtype == DHCPMessageType.DHCPACK:
            self._finish("bound")
            return None, self._lease(m)
        if self.state == "requesting" and mtype == DHCPMessageType.DHCPNAK:
            self.state = "selecting"
            self.xid = self.rng.getrandbits(32)
            self._last = self._discover()
            return self._last, None
        return None, None

    # -- messages ---------------------------------------------------------------

    def _base(self, mtype: DHCPMessageType, ciaddr: str = "0.0.0.0") -> DHCPMessage:
        m = DHCPMessage(
            DHCPOpcode.BOOTREQUEST, xid=self.xid, chaddr=self.chaddr,
            ciaddr=ipaddress.IPv4Address(ciaddr),
            flags=DHCPFlags.BROADCAST if ciaddr == "0.0.0.0" else DHCPFlags.UNICAST,
        )  # fmt: skip
        m.options[53] = mtype
        m.options[55] = self.prl
        m.options[57] = (1500).to_bytes(2, "big")
        if self.vendor_class is not None:
            m.options[60] = self.vendor_class
        return m

    def _discover(self) -> bytes:
        return self._base(DHCPMessageType.DHCPDISCOVER).encode()

    def _request(self, offer: DHCPMessage) -> bytes:
        m = self._base(DHCPMessageType.DHCPREQUEST)
        m.options[50] = offer.yiaddr.packed
        server_id = raw_option(offer, 54)
        if server_id is not None:
            m.options[54] = server_id
        return m.encode()

    def _inform(self) -> bytes:
        return self._base(DHCPMessageType.DHCPINFORM, self.ciaddr or "0.0.0.0").encode()

    def _lease(self, ack: DHCPMessage) -> Lease:
        options = {int(c): raw_option(ack, int(c)) or b"" for c in ack.options}
        server = options.get(54)
        mask = options.get(1)
        router = options.get(3)
        ip = None
        if ack.yiaddr != ipaddress.IPv4Address("0.0.0.0") and mask and len(mask) == 4:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{ipaddress.IPv4Address(mask)}").prefixlen
            ip = ipaddress.IPv4Interface(f"{ack.yiaddr}/{prefix}")
        return Lease(
            ip=ip,
            server=str(ipaddress.IPv4Address(server)) if server and len(server) == 4 else "",
            router=str(ipaddress.IPv4Address(router[:4])) if router and len(router) >= 4 else None,
            options=options,
        )
