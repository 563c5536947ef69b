"""The asyncio side of the DHCPv6 server: one socket per interface.

UDP 547 on the wildcard address, pinned to the interface, a member of
All_DHCP_Relay_Agents_and_Servers (ff02::1:2) on that interface alone; answers
go to the address and port the request came from: the client's link-local
address and port 546, or a relay's address and port 547. A REPLY that binds
leaves once its leases are committed.
"""

from __future__ import annotations

import socket

from ..endpoint import DatagramEndpoint
from ..events import Dhcp6Lease, EventBus
from ..net import Interface, join6, udp_socket
from .server import CHANNEL, Dhcp6Server

ALL_DHCP_SERVERS = "ff02::1:2"


def dhcp6_socket(iface: Interface, port: int) -> socket.socket:
    return udp_socket("::", port, iface.name, (join6(ALL_DHCP_SERVERS, iface),), big_buffer=True)


# a request still queued after this long was asked again or given up
# (RFC 8415 §15: SOL_TIMEOUT and REQ_TIMEOUT are 1 s)
STALE_AFTER = 1.0


class Dhcp6Endpoint(DatagramEndpoint):
    server: Dhcp6Server

    def __init__(self, iface: Interface, port: int, server: Dhcp6Server, bus: EventBus) -> None:
        super().__init__(
            iface, port, server, bus, dhcp6_socket, (Dhcp6Lease,), CHANNEL, STALE_AFTER
        )
