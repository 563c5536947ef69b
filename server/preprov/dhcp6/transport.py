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

from ..endpoint import DatagramEndpoint
from ..events import Dhcp6Lease, EventBus
from ..net import SO_BINDTODEVICE, Interface, big_receive_buffer
from .server import Dhcp6Server

ALL_DHCP_SERVERS = "ff02::1:2"


def dhcp6_socket(iface: Interface, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.name.encode())
        big_receive_buffer(s)
        s.bind(("::", port))
        mreq = socket.inet_pton(socket.AF_INET6, ALL_DHCP_SERVERS) + struct.pack("@I", iface.index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


class Dhcp6Endpoint(DatagramEndpoint):
    server: Dhcp6Server

    def __init__(self, iface: Interface, port: int, server: Dhcp6Server, bus: EventBus) -> None:
        super().__init__(iface, port, server, bus, dhcp6_socket, (Dhcp6Lease,))
