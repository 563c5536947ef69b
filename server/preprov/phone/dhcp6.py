"""The simulated phone's DHCPv6 client, without I/O (RFC 8415 §18.2).

A phone without a global address solicits one (SOLICIT with IA_NA, ADVERTISE,
REQUEST, REPLY); one with an address asks for options alone
(INFORMATION-REQUEST, a stateless network). Either way its Option Request
Option asks for 17, and the URL is the configured sub-option of the
configured enterprise in the answer's option 17 (docs/protocol.md §5).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from ..dhcp6 import codec as c
from .exchange import Exchange

SERVERS = ("ff02::1:2", 547)


@dataclass
class Answer6:
    address: ipaddress.IPv6Address | None
    url: str | None
    server: str


def duid_ll(mac: str) -> bytes:
    """DUID-LL (type 3) of an Ethernet address (RFC 8415 §11.4)."""
    return b"\x00\x03\x00\x01" + bytes.fromhex(mac)


class Dhcp6Client(Exchange):
    def __init__(
        self, mac: str, rng: random.Random, stateless: bool, enterprise: int = 258,
        suboption: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.duid = duid_ll(mac)
        self.rng = rng
        self.stateless = stateless
        self.enterprise = enterprise
        self.suboption = suboption
        self.iaid = int.from_bytes(bytes.fromhex(mac)[-4:], "big")
        self.xid = rng.getrandbits(24)

    def _options(self, *extra: tuple[int, bytes]) -> c.Options:
        return [(c.CLIENTID, self.duid), (c.ORO, (17).to_bytes(2, "big")),
                (c.ELAPSED_TIME, b"\x00\x00"), *extra]  # fmt: skip

    def start(self, now: float) -> bytes:
        if self.stateless:
            self.state = "informing"
            msg = c.Message(c.INFORMATION_REQUEST, self.xid, self._options())
        else:
            self.state = "soliciting"
            ia = c.IaNa(self.iaid, 0, 0).encode()
            msg = c.Message(c.SOLICIT, self.xid, self._options((c.IA_NA, ia)))
        return self._send(c.encode(msg), now)

    def datagram_received(
        self, data: bytes, source: str, now: float
    ) -> tuple[bytes | None, Answer6 | None]:
        try:
            m = c.decode(data)
        except c.CodecError:
            return None, None
        if (
            not isinstance(m, c.Message)
            or m.transaction_id != self.xid
            or (m.get(c.CLIENTID) != self.duid)
        ):
            return None, None
        if self.state == "soliciting" and m.msg_type == c.ADVERTISE:
            server_id = m.get(c.SERVERID)
            ias = m.all(c.IA_NA)
            if server_id is None or not ias:
                return None, None
            self.xid = self.rng.getrandbits(24)
            self.state = "requesting"
            opts = self._options((c.SERVERID, server_id), *[(c.IA_NA, ia) for ia in ias])
            return self._send(c.encode(c.Message(c.REQUEST, self.xid, opts)), now), None
        if self.state in ("requesting", "informing") and m.msg_type == c.REPLY:
            self._finish("done")
            return None, Answer6(self._address(m), self._url(m), source)
        return None, None

    def _address(self, m: c.Message) -> ipaddress.IPv6Address | None:
        for payload in m.all(c.IA_NA):
            ia = c.IaNa.decode(payload)
            if ia.addresses and ia.addresses[0].valid > 0:
                return ia.addresses[0].address
        return None

    def _url(self, m: c.Message) -> str | None:
        for payload in m.all(c.VENDOR_OPTS):
            enterprise, subs = c.decode_vendor_opts(payload)
            if enterprise == self.enterprise:
                for code, value in subs:
                    if code == self.suboption:
                        return value.decode("utf-8", "replace").strip() or None
        return None
