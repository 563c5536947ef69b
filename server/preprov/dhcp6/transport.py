"""The asyncio side of the DHCPv6 server: one socket per interface.

UDP 547 on the wildcard address, pinned to the interface, a member of
All_DHCP_Relay_Agents_and_Servers (ff02::1:2) on that interface alone; answers
go to the address and port the request came from: the client's link-local
address and port 546, or a relay's address and port 547. A REPLY that binds
leaves once its leases are committed.
"""

from __future__ import annotations

import socket
import struct

from ..endpoint import DatagramEndpoint, shed_starts
from ..events import Dhcp6Lease, EventBus
from ..net import Interface, join6, udp_socket
from .server import CHANNEL, Dhcp6Server

ALL_DHCP_SERVERS = "ff02::1:2"


def dhcp6_socket(iface: Interface, port: int) -> socket.socket:
    return udp_socket("::", port, iface.name, (join6(ALL_DHCP_SERVERS, iface),), big_buffer=True)


# a request still queued after this long was asked again or given up
# (RFC 8415 §15: SOL_TIMEOUT and REQ_TIMEOUT are 1 s)
STALE_AFTER = 1.0


_OPTION_HEAD = struct.Struct("!HH")  # option code, option length


def message_type(data: bytes, depth: int = 0) -> int:
    """The client's message type, through RELAY-FORW wrappers (RFC 8415 §9: the relayed
    message in option 9); 0 when it cannot be found. Only what shedding needs."""
    if not data:
        return 0
    if data[0] != 12 or depth > 8:  # 12: RELAY-FORW, 34 octets before its options
        return data[0]
    i = 34
    while i + 4 <= len(data):
        code, length = _OPTION_HEAD.unpack_from(data, i)
        if code == 9:
            return message_type(data[i + 4:i + 4 + length], depth + 1)
        i += 4 + length
    return 0


# SOLICIT (1) starts an exchange
shed_solicits = shed_starts(lambda d: message_type(d) == 1)


class Dhcp6Endpoint(DatagramEndpoint):
    server: Dhcp6Server

    def __init__(self, iface: Interface, port: int, server: Dhcp6Server, bus: EventBus) -> None:
        super().__init__(
            iface, port, server, bus, dhcp6_socket, (Dhcp6Lease,), CHANNEL, STALE_AFTER,
            shed_solicits,
        )
