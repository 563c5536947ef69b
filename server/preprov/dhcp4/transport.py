"""The asyncio side of the DHCPv4 server: one socket per interface, nothing else.

Port 67 on the wildcard address, pinned to the interface with SO_BINDTODEVICE:
a socket bound to an address hears no broadcast on Linux (docs/protocol.md §8),
and pinning tells which interface a request came in on. Replies go out after
their lease events are committed (the inventory's group commit), so an ACK
never leaves for a lease a kill -9 could lose.
"""

from __future__ import annotations

import socket

from ..endpoint import DatagramEndpoint, shed_starts
from ..events import Dhcp4Lease, EventBus
from ..net import Interface, udp_socket
from .server import CHANNEL, Dhcp4Server


def dhcp_socket(iface: Interface, port: int) -> socket.socket:
    broadcast = (socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    return udp_socket("0.0.0.0", port, iface.name, (broadcast,), big_buffer=True)


# a request still queued after this long was asked again or given up
# (RFC 2131 §4.1: a client waits 4 s before it asks again)
STALE_AFTER = 4.0


# option 53, length 1, DHCPDISCOVER: starts an exchange
shed_discovers = shed_starts(lambda d: b"\x35\x01\x01" in d[240:])


class Dhcp4Endpoint(DatagramEndpoint):
    server: Dhcp4Server

    def __init__(self, iface: Interface, port: int, server: Dhcp4Server, bus: EventBus) -> None:
        super().__init__(iface, port, server, bus, dhcp_socket, (Dhcp4Lease,), CHANNEL,
                         STALE_AFTER, shed_discovers)  # fmt: skip
