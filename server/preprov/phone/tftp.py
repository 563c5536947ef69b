"""The simulated phone's TFTP client: one read (RFC 1350) in octet mode, asking
for blocks of 1468 bytes (RFC 2347/2348) and taking 512 if the server ignores it.

Written here rather than taken from tftpy (0.8.7, the maintained Python TFTP
library): tftpy is blocking and IPv4 only, and a phone in IPv6 mode fetches
over IPv6. The packet layout is shared with the server's core (tftp/core.py).
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
    loop = asyncio.get_running_loop()
    transport, inbox = await loop.create_datagram_endpoint(
        _Inbox,
        local_addr=("::" if v6 else "0.0.0.0", 0),
        family=socket.AF_INET6 if v6 else socket.AF_INET,
    )
    try:
        sent = (struct.pack("!H", RRQ) + filename.encode() + b"\0octet\0blksize\0"
                + str(BLKSIZE_MAX).encode() + b"\0")  # fmt: skip
        to: tuple[Any, ...] = (host, port)
        peer: tuple[Any, ...] | None = None
        size, expected, body, tries = DEFAULT_BLKSIZE, 1, bytearray(), 0
        transport.sendto(sent, to)
        while True:
            try:
                data, addr = await asyncio.wait_for(inbox.queue.get(), timeout)
            except TimeoutError:
                tries += 1
                if tries > retries:
                    raise TimeoutError(f"no TFTP answer from {host}:{port}") from None
                transport.sendto(sent, to)
                continue
            if peer is None:
                peer = to = addr[:2]  # the server's transfer ID (its port for this file)
            elif addr[:2] != peer:
                transport.sendto(error_packet(UNKNOWN_TID, "unknown transfer ID"), addr)
                continue
            if len(data) < 4:
                raise TftpFailed(f"TFTP packet of {len(data)} bytes")
            op, arg = struct.unpack("!HH", data[:4])
            if op == ERROR:
                message = data[4:].split(b"\0")[0].decode(errors="replace")
                if arg in STATUS:
                    return STATUS[arg], b""
                raise TftpFailed(f"TFTP error {arg}: {message}")
            if op == OACK:
                fields = data[2:].split(b"\0")
                options = dict(zip(fields[0::2], fields[1::2], strict=False))
                size = int(options.get(b"blksize", DEFAULT_BLKSIZE))
                sent, tries = struct.pack("!HH", ACK, 0), 0
            elif op == DATA and arg == expected:
                body += data[4:]
                sent, tries = struct.pack("!HH", ACK, arg), 0
                expected = (expected + 1) & 0xFFFF
                if len(data) - 4 < size:
                    transport.sendto(sent, to)
                    return 200, bytes(body)
            elif op != DATA:
                raise TftpFailed(f"TFTP opcode {op} from the server")
            transport.sendto(sent, to)  # a duplicate DATA gets the last ACK again
    finally:
        transport.close()
