"""The asyncio side of the datagram servers: a socket reader with the kernel's
receive times (DatagramReader), the one timer of a core (CoreTimer), and the
request/answer endpoint of DHCPv4 and DHCPv6: one socket, a core, the bus.
Answers that bind a lease leave once the lease is committed (the inventory's
group commit); the others at once."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

from .datagrams import Addr, Output, internal_error
from .events import ClaimsLost, EventBus
from .net import Interface


class CoreTimer:
    """The one timer of a core (docs/design.md §1): armed for the time the core asks to be
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


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_STAMP = struct.Struct("@qq")  # struct timespec
BATCH = 64  # datagrams read per turn of the loop for one socket: bounded work per turn
SHED_AFTER = 0.1  # seconds queued: past this, with a full batch, the server is behind


def feed_core(
    bus: EventBus, channel: str, source: Addr, call: Callable[[], Output]
) -> Output | None:
    """Call a protocol core. The last-resort catch lives here, in the adapters only: an
    exception is a bug, not the peer's fault; it becomes an internal.error event and
    the server goes on (the cores catch nothing, so their tests and fuzzers see it)."""
    try:
        return call()
    except Exception as e:
        bus.emit(internal_error(channel, source, e))
        return None


# Under a backlog, what of a batch is worth answering (DatagramReader).
Shed = Callable[[list[tuple[bytes, Addr]]], list[tuple[bytes, Addr]]]


def shed_starts(starts: Callable[[bytes], bool]) -> Shed:
    """Past capacity (requests queued longer than SHED_AFTER) a request that starts an
    exchange (a DHCPDISCOVER, a SOLICIT) is left unanswered, its client asks again;
    the others (the REQUESTs that complete exchanges) are answered. Shedding costs
    next to nothing, so the queue drains to where answers are timely again, and the
    server completes exchanges at its maximum instead of offering what it cannot bind
    in time (README, "Speed": at twice the sustained rate, 107 % of it answered)."""

    def shed(batch: list[tuple[bytes, Addr]]) -> list[tuple[bytes, Addr]]:
        return [item for item in batch if not starts(item[0])]

    return shed


class DatagramReader:
    """Reads a UDP socket in batches, with the kernel's receive time of each datagram.

    Past capacity a request waits in the socket's queue; answered after its client
    has given up or asked again, it is work thrown away, and the server collapses
    instead of answering at its maximum (issue: DHCPv6 offered 6,000/s answered
    0.02 %). A datagram older than `stale_after` seconds is dropped unanswered, and
    counted; at most BATCH are read per turn, so the other sockets and the timers
    get their turn. With `stale_after` None nothing is dropped for its age."""

    def __init__(
        self, sock: socket.socket, received: Callable[[bytes, Addr], None],
        stale_after: float | None, shed: Shed | None = None,
        lag: Callable[[], float] = lambda: 0.0,
    ) -> None:  # fmt: skip
        self.sock = sock
        self.received = received
        self.stale_after = stale_after
        self.shed = shed
        self.lag = lag  # seconds the answers already decided wait for their commit
        self.stale = 0  # datagrams dropped for their age, or shed under a backlog
        if stale_after is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._space = socket.CMSG_SPACE(_STAMP.size)
        asyncio.get_running_loop().add_reader(
            sock.fileno(), self._readable if stale_after is not None else self._readable_plain
        )

    def _readable_plain(self) -> None:
        for _ in range(BATCH):
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued on the socket: the next datagram
            self.received(data, (str(addr[0]), int(addr[1])))

    def _readable(self) -> None:
        assert self.stale_after is not None
        now = time.time()
        sock = self.sock
        batch: list[tuple[bytes, Addr]] = []
        waited = 0.0  # how long the first datagram of the batch was queued
        read = 0
        # The queue is in the order of arrival: the oldest first, each with its receive
        # time, until one is fresh enough; those behind it are fresher still and are read
        # without theirs (recvfrom: no control message to build and look through).
        while read < BATCH:
            read += 1
            try:
                data, ancillary, _flags, addr = sock.recvmsg(65536, self._space)
            except (BlockingIOError, InterruptedError):
                read = BATCH
                break
            except OSError:
                continue  # an ICMP error queued on the socket: the next datagram
            age = 0.0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _STAMP.unpack_from(value)
                    age = now - (sec + nsec / 1e9)
            if age > self.stale_after:
                self.stale += 1
                continue
            waited = age
            batch.append((data, (addr[0], addr[1])))
            break
        while read < BATCH:
            read += 1
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            batch.append((data, (addr[0], addr[1])))
        if self.shed is not None and batch and (
            (len(batch) == BATCH and waited > SHED_AFTER) or self.lag() > SHED_AFTER
        ):
            # a backlog: a full batch, more waiting, and requests queued for a while; or
            # the inventory behind (a shared database slower than the requests come)
            kept = self.shed(batch)
            self.stale += len(batch) - len(kept)
            batch = kept
        for data, source in batch:
            self.received(data, source)

    def sendto(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            pass  # the send buffer is full: the client asks again
        except OSError:
            pass  # no route, no neighbour: as a lost datagram

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class Core(Protocol):
    def datagram_received(self, data: bytes, source: Addr, now: float) -> Output: ...


class DatagramEndpoint:
    observe: Callable[[float], None] | None = None  # seconds from a request to its answer

    def __init__(
        self, iface: Interface, port: int, server: Any, bus: EventBus,
        make_socket: Callable[[Interface, int], socket.socket], durable: tuple[type, ...],
        channel: str, stale_after: float, shed: Shed | None = None,
    ) -> None:  # fmt: skip
        self.shed = shed
        self.channel = channel
        self.stale_after = stale_after
        self.iface = iface
        self.port = port
        self.server = server  # the protocol core; its policy is swapped on reload
        self.bus = bus
        self.make_socket = make_socket
        self.durable = durable  # event types that must be committed before the answer
        self._reader: DatagramReader | None = None

    async def start(self) -> None:
        sock = self.make_socket(self.iface, self.port)
        self._reader = DatagramReader(sock, self.received, self.stale_after, self.shed,
                                      self.bus.lag)  # fmt: skip

    @property
    def stale(self) -> int:
        return self._reader.stale if self._reader is not None else 0

    def received(self, data: bytes, source: Addr) -> None:
        started = time.monotonic()
        out = feed_core(
            self.bus,
            self.channel,
            source,
            lambda: self.server.datagram_received(data, source, time.time()),
        )
        if out is None:
            return
        for ev in out.events:
            self.bus.emit(ev)
        if not out.sends:
            return
        if any(isinstance(ev, self.durable) for ev in out.events):
            self.bus.after_settled(lambda error: self._send(out, error, started), claims=True)
        else:
            self._send(out, None, started)  # an OFFER, a NAK, an ADVERTISE binds nothing

    def _send(self, out: Output, error: BaseException | None, started: float) -> None:
        if self.observe is not None:
            self.observe(time.monotonic() - started)
        if isinstance(error, ClaimsLost):
            out = self._lost(out, error)
            error = None
        if error is not None or self._reader is None:
            return  # not stored, so not answered: the client will ask again
        for s in out.sends:
            host = s.addr[0]
            if host.startswith("fe80") and "%" not in host:
                host = f"{host}%{self.iface.name}"  # a link-local address needs its interface
            self._reader.sendto(s.data, (host, s.addr[1]))

    def _lost(self, out: Output, lost: ClaimsLost) -> Output:
        """Another server sharing the inventory claimed this answer's address first: the
        core's other answer (a NAK), or none."""
        mine = {getattr(ev, "ip", None) for ev in out.events if isinstance(ev, self.durable)}
        if not mine & lost.ips:
            return out
        other = out.if_lost(lost.ips & mine) if out.if_lost is not None else Output()
        for ev in other.events:
            self.bus.emit(ev)
        return other

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
