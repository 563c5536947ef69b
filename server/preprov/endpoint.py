"""The asyncio side of a request/answer datagram server (DHCPv4, DHCPv6): one
socket, a core, the bus. Answers that bind a lease leave once the lease is
committed (the inventory's group commit); the others at once."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from .datagrams import Addr, Output, internal_error
from .events import EventBus
from .net import Interface


class CoreTimer:
    """The one timer of a core (STYLE.md §1): armed for the time the core asks to be
    woken next (its clock: time.monotonic(), as the loop's), calling `expired` then."""

    def __init__(self, expired: Callable[[], None]) -> None:
        self.expired = expired
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def arm(self, wake: float | None) -> None:
        if wake == self._at:
            return
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._handle = None if wake is None else loop.call_at(wake, self._fire)
        self._at = wake

    def _fire(self) -> None:
        self._handle = self._at = None
        self.expired()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._at = None


class Core(Protocol):
    def datagram_received(self, data: bytes, source: Addr, now: float) -> Output: ...


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, endpoint: DatagramEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        self.endpoint.received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP from a client that went away: it will ask again


class DatagramEndpoint:
    observe: Callable[[float], None] | None = None  # seconds from a request to its answer

    def __init__(
        self, iface: Interface, port: int, server: Any, bus: EventBus,
        make_socket: Callable[[Interface, int], socket.socket], durable: tuple[type, ...],
        channel: str,
    ) -> None:  # fmt: skip
        self.channel = channel
        self.iface = iface
        self.port = port
        self.server = server  # the protocol core; its policy is swapped on reload
        self.bus = bus
        self.make_socket = make_socket
        self.durable = durable  # event types that must be committed before the answer
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = self.make_socket(self.iface, self.port)
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=sock)

    def received(self, data: bytes, source: Addr) -> None:
        started = time.monotonic()
        try:
            out = self.server.datagram_received(data, source, time.time())
        except Exception as e:  # the last resort: a bug, not the client's fault
            self.bus.emit(internal_error(self.channel, source, e))
            return
        for ev in out.events:
            self.bus.emit(ev)
        if not out.sends:
            return
        if any(isinstance(ev, self.durable) for ev in out.events):
            self.bus.after_settled(lambda error: self._send(out, error, started))
        else:
            self._send(out, None, started)  # an OFFER, a NAK, an ADVERTISE binds nothing

    def _send(self, out: Output, error: BaseException | None, started: float) -> None:
        if self.observe is not None:
            self.observe(time.monotonic() - started)
        if error is not None or self._transport is None:
            return  # not stored, so not answered: the client will ask again
        for s in out.sends:
            host = s.addr[0]
            if host.startswith("fe80") and "%" not in host:
                host = f"{host}%{self.iface.name}"  # a link-local address needs its interface
            self._transport.sendto(s.data, (host, s.addr[1]))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
