"""The asyncio side of TFTP: sockets and one timer around the core (STYLE.md §1).

The request port is UDP 69 on the wildcard address pinned to the interface (an
asyncio DatagramProtocol: it must bind to a device). Each transfer the core
starts gets a socket of its own, bound to the interface's address and
connected to the client (RFC 1350 §4: a new TID), read with the loop's
add_reader and written without blocking; it is closed as soon as the core says
the transfer ended. Every datagram goes to the core, its sends leave, its
events are emitted, its one timer is re-armed.

aioudp, which served the transfers before, is not used: its per-peer
connection wants a task per transfer that waits on it, while the core drives
every transfer from one timer and needs plain callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

from ..datagrams import Addr, Output, internal_error
from ..endpoint import CoreTimer
from ..events import EventBus
from ..files.service import FileRequest, fetch, whole_body
from ..net import Interface, udp_socket
from ..runtime import Runtime
from .core import CHANNEL, FileAnswer, TftpPolicy, TftpServer


def tftp_socket(iface: Interface, port: int, ipv6: bool = False) -> socket.socket:
    return udp_socket("::" if ipv6 else "0.0.0.0", port, iface.name)


class _RequestPort(asyncio.DatagramProtocol):
    def __init__(self, endpoint: TftpEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.endpoint.received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP from a client that went away


class TftpEndpoint:
    def __init__(
        self, iface: Interface, local_ip: str, runtime: Callable[[], Runtime], bus: EventBus,
        registered: Callable[[str], bool], policy: TftpPolicy,
        holder: Callable[[str | None], str | None] = lambda _a: None,
    ) -> None:  # fmt: skip
        self.iface = iface
        self.local_ip = local_ip
        self.runtime = runtime
        self.bus = bus
        self.registered = registered
        self.holder = holder
        self.core = TftpServer(policy, self._answer)
        self.transport: asyncio.DatagramTransport | None = None
        self.sockets: dict[int, socket.socket] = {}
        self._timer = CoreTimer(self._on_timer)

    def _answer(self, path: str, client: str) -> FileAnswer:
        """The same answer as over HTTP: templates, rules, device binding, inventory."""
        req = FileRequest(CHANNEL, client, path, local=self.local_ip)
        a = fetch(self.runtime(), req, self.registered, holder=self.holder)
        return FileAnswer(a.status, whole_body(a), a.event)

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = tftp_socket(self.iface, port, ipv6=":" in self.local_ip)
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _RequestPort(self), sock=sock
        )

    # The core's clock is time.monotonic(), as for SIP PnP.

    def received(self, data: bytes, source: Addr) -> None:
        try:
            out = self.core.datagram_received(data, source, time.monotonic())
        except Exception as e:  # the last resort: a bug, not the client's fault
            self.bus.emit(internal_error(CHANNEL, source, e))
            return
        self._process(out)

    def _readable(self, tid: int) -> None:
        sock = self.sockets.get(tid)
        if sock is None:
            return
        for _ in range(16):  # what has arrived, in one turn
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                break  # ICMP port unreachable: the client went away; its timer ends it
            try:
                out = self.core.transfer_received(tid, data, (str(addr[0]), int(addr[1])),
                                                  time.monotonic())  # fmt: skip
            except Exception as e:
                self.bus.emit(internal_error(CHANNEL, (str(addr[0]), 0), e))
                return
            self._process(out)

    def _on_timer(self) -> None:
        try:
            out = self.core.timer_expired(time.monotonic())
        except Exception as e:
            self.bus.emit(internal_error(CHANNEL, ("timer", 0), e))
            out = Output()
        self._process(out)

    def _process(self, out: Output) -> None:
        for s in out.sends:
            if s.via is None:
                if self.transport is not None:
                    self.transport.sendto(s.data, s.addr)
                continue
            sock = self.sockets.get(s.via) or self._open(s.via, s.addr)
            if sock is not None:
                with contextlib.suppress(OSError):  # a full buffer: the resend covers it
                    sock.send(s.data)
        for tid in out.closed:
            self._close(tid)
        for ev in out.events:
            self.bus.emit(ev)
        self._timer.arm(self.core.next_timer())

    def _open(self, tid: int, client: Addr) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in self.local_ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.iface.name.encode())
            sock.bind((self.local_ip, 0))
            sock.connect(client)
        except OSError:
            sock.close()
            return None
        self.sockets[tid] = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, tid)
        return sock

    def _close(self, tid: int) -> None:
        sock = self.sockets.pop(tid, None)
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def close(self) -> None:
        self._timer.cancel()
        for tid in list(self.sockets):
            self._close(tid)
        if self.transport is not None:
            self.transport.close()
