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
