"""The asyncio side of the DHCPv4 server: one socket per interface, nothing else.

Port 67 on the wildcard address, pinned to the interface with SO_BINDTODEVICE:
a socket bound to an address hears no broadcast on Linux (PROTOCOL.md §8),
and pinning tells which interface a request came in on. Replies go out after
their lease events are committed (the inventory's group commit), so an ACK
never leaves for a lease a kill -9 could lose.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

from ..datagrams import Output
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


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, endpoint: Dhcp4Endpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.endpoint.received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass


class Dhcp4Endpoint:
    observe: Callable[[float], None] | None = None  # seconds from a request to its answer

    def __init__(self, iface: Interface, port: int, server: Dhcp4Server, bus: EventBus) -> None:
        self.iface = iface
        self.port = port
        self.server = server
        self.bus = bus
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = dhcp_socket(self.iface, self.port)
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=sock)

    def received(self, data: bytes, source: tuple[str, int]) -> None:
        started = time.monotonic()
        out = self.server.datagram_received(data, source, time.time())
        for ev in out.events:
            self.bus.emit(ev)
        if not out.sends:
            return
        if any(isinstance(ev, Dhcp4Lease) for ev in out.events):
            # an ACK leaves once its lease is committed
            self.bus.after_settled(lambda error: self._send(out, error, started))
        else:
            self._send(out, None, started)  # an OFFER or a NAK binds nothing

    def _send(self, out: Output, error: BaseException | None, started: float) -> None:
        if self.observe is not None:
            self.observe(time.monotonic() - started)
        if error is not None or self._transport is None:
            return  # not stored, so not answered: the client will retry
        for s in out.sends:
            self._transport.sendto(s.data, s.addr)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
