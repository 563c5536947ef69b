"""The simulated phone's TFTP client: one read (RFC 1350) in octet mode, asking
for blocks of 1468 bytes (RFC 2347/2348) and taking 512 if the server ignores it.

`TftpRead` is the protocol without I/O (docs/design.md §1); `tftp_get` drives it
over an asyncio datagram endpoint. Written here rather than taken from tftpy
(0.8.7, the maintained Python TFTP library): tftpy is blocking and IPv4 only,
and a phone in IPv6 mode fetches over IPv6. The error packet is the server
core's (tftp/core.py).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from ..tftp.core import (
    ACK,
    BLKSIZE_MAX,
    DATA,
    DEFAULT_BLKSIZE,
    ERROR,
    OACK,
    RRQ,
    UNKNOWN_TID,
    error_packet,
)

# what a TFTP error means to the phone's report, in HTTP's terms
STATUS = {1: 404, 2: 403}


class TftpFailed(ValueError):
    pass


class TftpRead:
    """One read: `start`, then `on_packet` for each datagram and `on_timeout`
    when `timeout` passes without one; `result` is set when the read is over."""

    def __init__(self, filename: str, retries: int = 3) -> None:
        self.retries = retries
        self.peer: tuple[Any, ...] | None = None  # the server's transfer ID, once it answers
        self.result: tuple[int, bytes] | None = None
        self._last = (struct.pack("!H", RRQ) + filename.encode() + b"\0octet\0blksize\0"
                      + str(BLKSIZE_MAX).encode() + b"\0")  # fmt: skip
        self._size, self._expected, self._body, self._tries = DEFAULT_BLKSIZE, 1, bytearray(), 0

    def start(self) -> bytes:
        return self._last

    def on_timeout(self) -> bytes:
        """The packet to send again; TimeoutError after the last retry."""
        self._tries += 1
        if self._tries > self.retries:
            raise TimeoutError("no TFTP answer")
        return self._last

    def on_packet(self, data: bytes, addr: tuple[Any, ...]) -> tuple[bytes, tuple[Any, ...]] | None:
        """(a packet, where to send it), or None; TftpFailed for a broken transfer."""
        if self.peer is None:
            self.peer = addr[:2]
        elif addr[:2] != self.peer:
            return error_packet(UNKNOWN_TID, "unknown transfer ID"), addr
        if len(data) < 4:
            raise TftpFailed(f"TFTP packet of {len(data)} bytes")
        op, arg = struct.unpack("!HH", data[:4])
        if op == ERROR:
            if arg in STATUS:
                self.result = (STATUS[arg], b"")
                return None
            message = data[4:].split(b"\0")[0].decode(errors="replace")
            raise TftpFailed(f"TFTP error {arg}: {message}")
        if op == OACK:
            fields = data[2:].split(b"\0")
            options = dict(zip(fields[0::2], fields[1::2], strict=False))
            self._size = int(options.get(b"blksize", DEFAULT_BLKSIZE))
            self._last, self._tries = struct.pack("!HH", ACK, 0), 0
        elif op == DATA and arg == self._expected:
            self._body += data[4:]
            self._last, self._tries = struct.pack("!HH", ACK, arg), 0
            self._expected = (self._expected + 1) & 0xFFFF
            if len(data) - 4 < self._size:
                self.result = (200, bytes(self._body))
        elif op != DATA:
            raise TftpFailed(f"TFTP opcode {op} from the server")
        return self._last, self.peer  # a duplicate DATA gets the last ACK again


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[Any, ...]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.queue.put_nowait((data, addr))


async def tftp_get(
    host: str, port: int, filename: str, timeout: float = 2.0, retries: int = 3
) -> tuple[int, bytes]:
    """(200, the file), or (404 / 403, b"") for TFTP errors 1 / 2; TftpFailed or
    TimeoutError for anything else."""
    v6 = ":" in host
    transport, inbox = await asyncio.get_running_loop().create_datagram_endpoint(
        _Inbox,
        local_addr=("::" if v6 else "0.0.0.0", 0),
        family=socket.AF_INET6 if v6 else socket.AF_INET,
    )
    read = TftpRead(filename, retries)
    try:
        transport.sendto(read.start(), (host, port))
        while read.result is None:
            try:
                data, addr = await asyncio.wait_for(inbox.queue.get(), timeout)
            except TimeoutError:
                try:
                    transport.sendto(read.on_timeout(), read.peer or (host, port))
                except TimeoutError:
                    raise TimeoutError(f"no TFTP answer from {host}:{port}") from None
                continue
            reply = read.on_packet(data, addr)
            if reply is not None:
                transport.sendto(*reply)
        return read.result
    finally:
        transport.close()
