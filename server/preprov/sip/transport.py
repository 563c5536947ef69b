"""The asyncio side of SIP PnP: sockets and one timer, nothing else (docs/design.md §1).

Per interface: a socket that hears 224.0.1.75:5060 on that interface only,
and one bound to the interface's own address, port 5060, which every answer
leaves from and the phones' answers to the NOTIFY come back to. Both feed the
same responder core; its datagrams are sent, its events emitted, its timer
re-armed. The sockets are read by endpoint.DatagramReader: in batches, with
the kernel's receive time, a SUBSCRIBE queued past STALE_AFTER dropped.
"""

from __future__ import annotations

import socket
import time

from ..datagrams import Addr, Output
from ..endpoint import CoreTimer, DatagramReader, feed_core
from ..events import EventBus
from ..net import Interface, multicast_listener, unicast_socket
from .pnp import CHANNEL, PnpResponder

# A SUBSCRIBE still queued after this long was sent again by its phone, which
# waits 5 s in all for the NOTIFY, resending at T1 doubling (docs/protocol.md §3).
STALE_AFTER = 2.0


class PnpEndpoint:
    def __init__(
        self, iface: Interface, local: Addr, group: str, responder: PnpResponder, bus: EventBus
    ) -> None:
        self.iface = iface
        self.local = local
        self.group = group
        self.responder = responder
        self.bus = bus
        self._readers: list[DatagramReader] = []
        self._timer = CoreTimer(self._on_timer)

    async def start(self) -> None:
        socks: list[socket.socket] = [unicast_socket(self.local[0], self.local[1], self.iface)]
        try:
            socks.append(multicast_listener(self.iface, self.group, self.local[1]))
        except OSError:
            socks[0].close()
            raise
        # every answer leaves from the first: the interface's address, port 5060
        self._readers = [DatagramReader(s, self.received, STALE_AFTER) for s in socks]

    @property
    def stale(self) -> int:
        return sum(r.stale for r in self._readers)

    # The core's clock is time.monotonic(): uvloop's loop.time() counts whole
    # milliseconds, too coarse for the timings the events report.

    def received(self, data: bytes, source: Addr) -> None:
        r = self.responder
        self._process(
            feed_core(
                self.bus,
                CHANNEL,
                source,
                lambda: r.datagram_received(data, source, time.monotonic()),
            )
        )

    def _on_timer(self) -> None:
        r = self.responder
        self._process(
            feed_core(self.bus, CHANNEL, ("timer", 0), lambda: r.timer_expired(time.monotonic()))
        )

    def _process(self, out: Output | None) -> None:
        out = out or Output()  # after an internal error: the timer is re-armed all the same
        for s in out.sends:
            self._readers[0].sendto(s.data, s.addr)
        for ev in out.events:
            self.bus.emit(ev)
        self._timer.arm(self.responder.next_timer())

    def close(self) -> None:
        self._timer.cancel()
        for r in self._readers:
            r.close()
