"""The asyncio side of SIP PnP: sockets and one timer, nothing else (STYLE.md §1).

Per interface: a socket that hears 224.0.1.75:5060 on that interface only,
and one bound to the interface's own address, port 5060, which every answer
leaves from and the phones' answers to the NOTIFY come back to. Both feed the
same responder core; its datagrams are sent, its events emitted, its timer
re-armed. asyncio's DatagramProtocol, not aioudp: aioudp hides its socket, so
it can neither join a multicast group nor bind to a device.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from ..datagrams import Addr, Output, internal_error
from ..endpoint import CoreTimer
from ..events import EventBus
from ..net import Interface, multicast_listener, unicast_socket
from .pnp import CHANNEL, PnpResponder


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, endpoint: PnpEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.endpoint.received(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from a phone that went away: the core's timers handle it


class PnpEndpoint:
    def __init__(
        self, iface: Interface, local: Addr, group: str, responder: PnpResponder, bus: EventBus
    ) -> None:
        self.iface = iface
        self.local = local
        self.group = group
        self.responder = responder
        self.bus = bus
        self._transports: list[asyncio.DatagramTransport] = []
        self._send: asyncio.DatagramTransport | None = None
        self._timer = CoreTimer(self._on_timer)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = [unicast_socket(self.local[0], self.local[1], self.iface)]
        try:
            socks.append(multicast_listener(self.iface, self.group, self.local[1]))
        except OSError:
            socks[0].close()
            raise
        for s in socks:
            t, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=s)
            self._transports.append(t)
        self._send = self._transports[0]

    # The core's clock is time.monotonic(): uvloop's loop.time() counts whole
    # milliseconds, too coarse for the timings the events report.

    def received(self, data: bytes, source: Addr) -> None:
        try:
            out = self.responder.datagram_received(data, source, time.monotonic())
        except Exception as e:  # the last resort: a bug, not the phone's fault
            self.bus.emit(internal_error(CHANNEL, source, e))
            out = Output()
        self._process(out)

    def _on_timer(self) -> None:
        try:
            out = self.responder.timer_expired(time.monotonic())
        except Exception as e:
            self.bus.emit(internal_error(CHANNEL, ("timer", 0), e))
            out = Output()
        self._process(out)

    def _process(self, out: Output) -> None:
        assert self._send is not None
        for s in out.sends:
            self._send.sendto(s.data, s.addr)
        for ev in out.events:
            self.bus.emit(ev)
        self._timer.arm(self.responder.next_timer())

    def close(self) -> None:
        self._timer.cancel()
        for t in self._transports:
            t.close()
