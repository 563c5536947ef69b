"""The asyncio side of the DHCPv4 server: one socket per interface, nothing else.

Port 67 on the wildcard address, pinned to the interface with SO_BINDTODEVICE:
a socket bound to an address hears no broadcast on Linux (PROTOCOL.md §8),
and pinning tells which interface a request came in on. Replies go out after
their lease events are committed (the inventory's group commit), so an ACK
never leaves for a lease a kill -9 could lose.
"""

from __future__ import annotations

import socket

from ..endpoint import DatagramEndpoint
from ..events import Dhcp4Lease, EventBus
from ..net import SO_BINDTODEVICE, Interface, big_receive_buffer
from .server import Dhcp4Server


def dhcp_socket(iface: Interface, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.name.encode())
        big_receive_buffer(s)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


class Dhcp4Endpoint(DatagramEndpoint):
    server: Dhcp4Server

    def __init__(self, iface: Interface, port: int, server: Dhcp4Server, bus: EventBus) -> None:
        super().__init__(iface, port, server, bus, dhcp_socket, (Dhcp4Lease,))
