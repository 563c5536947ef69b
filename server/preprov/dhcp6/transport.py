"""The asyncio side of the DHCPv6 server: one socket per interface.

UDP 547 on the wildcard address, pinned to the interface, a member of
All_DHCP_Relay_Agents_and_Servers (ff02::1:2) on that interface alone; answers
go to the address and port the request came from: the client's link-local
address and port 546, or a relay's address and port 547. A REPLY that binds
leaves once its leases are committed.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from ..datagrams import Output
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


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, endpoint: Dhcp6Endpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        self.endpoint.received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass


class Dhcp6Endpoint:
    observe: Callable[[float], None] | None = None  # seconds from a request to its answer

    def __init__(self, iface: Interface, port: int, server: Dhcp6Server, bus: EventBus) -> None:
        self.iface = iface
        self.port = port
        self.server = server
        self.bus = bus
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = dhcp6_socket(self.iface, self.port)
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=sock)

    def received(self, data: bytes, source: tuple[str, int]) -> None:
        started = time.monotonic()
        out = self.server.datagram_received(data, source, time.time())
        for ev in out.events:
            self.bus.emit(ev)
        if not out.sends:
            return
        if any(isinstance(ev, Dhcp6Lease) for ev in out.events):
            self.bus.after_settled(lambda error: self._send(out, error, started))
        else:
            self._send(out, None, started)

    def _send(self, out: Output, error: BaseException | None, started: float) -> None:
        if self.observe is not None:
            self.observe(time.monotonic() - started)
        if error is not None or self._transport is None:
            return
        for s in out.sends:
            host = s.addr[0]
            if host.startswith("fe80") and "%" not in host:
                host = f"{host}%{self.iface.name}"
            self._transport.sendto(s.data, (host, s.addr[1]))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
