"""The datagram reader of the DHCP servers: batches, and requests too old to answer."""

from __future__ import annotations

import asyncio
import socket
import time

from preprov.endpoint import BATCH, DatagramReader


async def test_requests_queued_past_the_clients_timer_are_dropped() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got: list[bytes] = []
    reader = None
    try:
        reader = DatagramReader(server, lambda data, addr: got.append(data), stale_after=0.2)
        # Linux turns receive timestamps on for the whole stack a moment after the first
        # socket asks (a deferred static key); until then a datagram is stamped when read
        await asyncio.sleep(0.3)
        client.sendto(b"old", server.getsockname())
        time.sleep(0.3)  # the loop busy: the datagram waits in the queue, as past capacity
        for i in range(BATCH + 5):
            client.sendto(b"new%d" % i, server.getsockname())
        await asyncio.sleep(0.1)
        assert reader.stale == 1 and b"old" not in got
        assert got == [b"new%d" % i for i in range(BATCH + 5)]  # over several turns, in order
    finally:
        client.close()
        if reader is not None:
            reader.close()


async def test_behind_the_requests_that_start_an_exchange_are_shed() -> None:
    """A full batch whose first request waited past SHED_AFTER: the requests that start
    an exchange are left unanswered, those that complete one are answered; a batch read
    when the server keeps up sheds nothing."""
    from preprov.dhcp4.transport import shed_discovers
    from preprov.endpoint import SHED_AFTER

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got: list[bytes] = []
    reader = None
    discover, request = bytes(240) + b"\x35\x01\x01\xff", bytes(240) + b"\x35\x01\x03\xff"
    try:
        reader = DatagramReader(server, lambda data, addr: got.append(data), stale_after=4.0,
                                shed=shed_discovers)  # fmt: skip
        await asyncio.sleep(0.3)  # receive timestamps on (see above)
        for _ in range(BATCH // 2):  # kept up with: a full batch, but fresh
            client.sendto(discover, server.getsockname())
            client.sendto(request, server.getsockname())
        await asyncio.sleep(0.05)
        assert got.count(discover) == BATCH // 2 and reader.stale == 0
        got.clear()
        for _ in range(BATCH):  # behind: queued while the loop was busy
            client.sendto(discover, server.getsockname())
            client.sendto(request, server.getsockname())
        time.sleep(SHED_AFTER + 0.05)
        await asyncio.sleep(0.1)
        assert got.count(request) == BATCH and got.count(discover) == 0
        assert reader.stale == BATCH
    finally:
        client.close()
        if reader is not None:
            reader.close()
