"""The asyncio side of TFTP: a listener per interface, and a socket per transfer.

The listener is UDP 69 on the wildcard address pinned to the interface (an
asyncio DatagramProtocol: aioudp cannot bind to a device). Each transfer runs
from a socket of its own, connected to the client (RFC 1350 §4: a new TID),
which is aioudp's per-peer model exactly: `aioudp.connect` gives it, and the
transfer is a plain loop of send and receive with a timeout.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aioudp

from ..events import EventBus, FileRefused, FileServed, RequestMalformed
from ..files.service import FileRequest, fetch
from ..net import Interface, udp_socket
from ..runtime import Runtime
from .core import (
    ACCESS_VIOLATION,
    FILE_NOT_FOUND,
    NotARequest,
    TftpError,
    Transfer,
    error_packet,
    parse_request,
)

CHANNEL = "tftp"


def tftp_socket(iface: Interface, port: int, ipv6: bool = False) -> socket.socket:
    return udp_socket("::" if ipv6 else "0.0.0.0", port, iface.name)


class TftpListener(asyncio.DatagramProtocol):
    def __init__(
        self, iface: Interface, local_ip: str, runtime: Callable[[], Runtime], bus: EventBus,
        registered: Callable[[str], bool], blksize_max: int, timeout: float, retries: int,
        holder: Callable[[str | None], str | None] = lambda _a: None,
    ) -> None:  # fmt: skip
        self.holder = holder
        self.iface = iface
        self.local_ip = local_ip
        self.runtime = runtime
        self.bus = bus
        self.registered = registered
        self.blksize_max = blksize_max
        self.timeout = timeout
        self.retries = retries
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = tftp_socket(self.iface, port, ipv6=":" in self.local_ip)
        await loop.create_datagram_endpoint(lambda: self, sock=sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        client = (str(addr[0]), int(addr[1]))
        try:
            req = parse_request(data)
        except NotARequest:
            return  # a late ACK or ERROR of a transfer: nothing to answer
        except TftpError as e:
            self.bus.emit(RequestMalformed(channel=CHANNEL, client=client[0], reason=e.message))
            if self.transport is not None:
                self.transport.sendto(error_packet(e.code, e.message), client)
            return
        # the same answer as over HTTP: templates, rules, inventory, events
        path = "/" + quote(req.filename.lstrip("/"), safe="/")
        answer = fetch(self.runtime(), FileRequest(CHANNEL, client[0], path, local=self.local_ip),
                       self.registered, holder=self.holder)  # fmt: skip
        if answer.status != 200:
            self.bus.emit(answer.event)
            code = FILE_NOT_FOUND if answer.status == 404 else ACCESS_VIOLATION
            if self.transport is not None:
                self.transport.sendto(error_packet(code, answer.body.decode().strip()), client)
            return
        task = asyncio.get_running_loop().create_task(self._transfer(answer.body, req, client,
                                                                     answer.event))  # fmt: skip
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _transfer(self, body: bytes, req: Any, client: tuple[str, int], served: Any) -> None:
        t = Transfer(body, req, self.blksize_max, self.timeout, self.retries)
        async with aioudp.connect(client[0], client[1], local_addr=(self.local_ip, 0)) as conn:
            await conn.send(t.start())
            while not t.done:
                try:
                    data = await asyncio.wait_for(conn.recv(), t.timeout)
                except TimeoutError:
                    again = t.on_timeout()
                    if again is None:
                        break
                    await conn.send(again)
                    continue
                nxt = t.on_packet(data)
                if nxt is not None:
                    await conn.send(nxt)
        if t.block == t.blocks and t.done and t.tries <= t.retries:
            self.bus.emit(served)
        else:
            f = served.fields() if isinstance(served, FileServed) else {}
            self.bus.emit(
                FileRefused(
                    channel=CHANNEL, client=client[0], mac=f.get("mac"), model=f.get("model"),
                    fwver=f.get("fwver"), vendor=f.get("vendor"), path=f.get("path", ""),
                    status=408, reason=f"TFTP transfer given up at block {t.block} of {t.blocks}",
                )
            )  # fmt: skip

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.transport is not None:
            self.transport.close()
