"""The asyncio side of TFTP: sockets and one timer around the core (docs/design.md §1).

The request port is UDP 69 on the wildcard address pinned to the interface.
Each transfer the core starts gets a socket of its own, bound to the
interface's address and connected to the client (RFC 1350 §4: a new TID); it
is closed as soon as the core says the transfer ended. Every socket is read by
endpoint.DatagramReader. Every datagram goes to the core, its sends leave, its
events are emitted, its one timer is re-armed.

aioudp, which served the transfers before, is not used: its per-peer
connection wants a task per transfer that waits on it, while the core drives
every transfer from one timer and needs plain callbacks.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Hashable
from typing import BinaryIO

from ..datagrams import Addr, Output
from ..endpoint import CoreTimer, DatagramReader, feed_core
from ..events import Event, EventBus
from ..files.service import FileRequest, fetch, whole_body
from ..files.templates import TemplateError
from ..net import Interface, udp_socket
from ..runtime import Runtime
from .core import CHANNEL, FileAnswer, Source, TftpPolicy, TftpServer, refusal


def tftp_socket(iface: Interface, port: int, ipv6: bool = False) -> socket.socket:
    return udp_socket("::" if ipv6 else "0.0.0.0", port, iface.name)


class OpenFiles:
    """Large files being sent, each kept open once whatever the number of transfers
    reading it (read with pread: no shared position): the descriptors stay bounded by
    the files, not by the transfers (a flood of requests for one firmware). A file is
    known by its inode, size and edit time: an edit, or a new template directory after
    a reload, is another file."""

    def __init__(self) -> None:
        self._open: dict[Hashable, tuple[BinaryIO, int]] = {}  # key: file, transfers

    def share(self, opener: Callable[[], BinaryIO], offset: int, length: int) -> Source:
        f = opener()
        try:
            st = os.fstat(f.fileno())
        except OSError:
            f.close()
            raise
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        held = self._open.get(key)
        if held is None:
            self._open[key] = (f, 1)
        else:
            f.close()  # the same file is open already
            f = held[0]
            self._open[key] = (f, held[1] + 1)
        return _Shared(self, key, f.fileno(), offset, length)

    def release(self, key: Hashable) -> None:
        f, readers = self._open[key]
        if readers > 1:
            self._open[key] = (f, readers - 1)
        else:
            del self._open[key]
            f.close()

    def __len__(self) -> int:
        return len(self._open)


class _Shared:
    def __init__(self, files: OpenFiles, key: Hashable, fd: int, offset: int, size: int) -> None:
        self.files, self.key, self.fd, self.offset, self.size = files, key, fd, offset, size
        self.closed = False

    def read(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        return os.pread(self.fd, n, self.offset + offset) if n else b""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.files.release(self.key)


def _unopened(served: Event, client: str, path: str, e: Exception) -> FileAnswer:
    """A large file that could not be opened once fetch had found it: refused."""
    status = 404 if isinstance(e, FileNotFoundError) else 500
    why = f"{getattr(served, 'template', None) or path}: cannot be opened: {e}"
    return FileAnswer(status, why.encode(), refusal(served, client, status, why))


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
        self.requests: DatagramReader | None = None  # the request port
        self.transfers: dict[int, DatagramReader] = {}  # a socket each, by transfer id
        self._timer = CoreTimer(self._on_timer)
        self.files = OpenFiles()

    def _answer(self, path: str, client: str) -> FileAnswer:
        """The same answer as over HTTP: templates, rules, device binding, inventory. A
        large raw file (firmware) is read from disk as its blocks go out."""
        req = FileRequest(CHANNEL, client, path, local=self.local_ip)
        a = fetch(self.runtime(), req, self.registered, holder=self.holder)
        if a.stream is not None and a.status == 200:
            try:
                source = self.files.share(a.stream, a.offset, a.length)
            except (OSError, TemplateError) as e:  # removed or swapped since it was looked at
                return _unopened(a.event, client, path, e)
            return FileAnswer(a.status, b"", a.event, source)
        return FileAnswer(a.status, whole_body(a), a.event)

    async def start(self, port: int) -> None:
        sock = tftp_socket(self.iface, port, ipv6=":" in self.local_ip)
        # a client resends its request on its own timer: nothing is dropped for its age
        self.requests = DatagramReader(sock, self.received, None)

    # The core's clock is time.monotonic(), as for SIP PnP.

    def received(self, data: bytes, source: Addr) -> None:
        core = self.core
        self._process(
            feed_core(self.bus, CHANNEL, source,
                      lambda: core.datagram_received(data, source, time.monotonic()))
        )  # fmt: skip

    def _transfer_received(self, tid: int, data: bytes, source: Addr) -> None:
        core = self.core
        self._process(
            feed_core(self.bus, CHANNEL, source,
                      lambda: core.transfer_received(tid, data, source, time.monotonic()))
        )  # fmt: skip

    def _on_timer(self) -> None:
        core = self.core
        self._process(
            feed_core(self.bus, CHANNEL, ("timer", 0), lambda: core.timer_expired(time.monotonic()))
        )

    def _process(self, out: Output | None) -> None:
        out = out or Output()  # after an internal error: the timer is re-armed all the same
        for s in out.sends:
            reader = self.requests if s.via is None else (
                self.transfers.get(s.via) or self._open(s.via, s.addr)
            )  # fmt: skip
            if reader is not None:
                reader.sendto(s.data, s.addr)  # a full buffer: the core's resend covers it
        for tid in out.closed:
            self._close(tid)
        for ev in out.events:
            self.bus.emit(ev)
        self._timer.arm(self.core.next_timer())

    def _open(self, tid: int, client: Addr) -> DatagramReader | None:
        """The transfer's own socket: the interface's address, a new port, connected
        to the client (RFC 1350 §4)."""
        try:
            sock = udp_socket(self.local_ip, 0, self.iface.name)
        except OSError:
            return None  # no descriptor left: the transfer's timer ends it
        try:
            sock.connect(client)
        except OSError:
            sock.close()
            return None
        reader = DatagramReader(sock, lambda data, src: self._transfer_received(tid, data, src),
                                None)  # fmt: skip
        self.transfers[tid] = reader
        return reader

    def _close(self, tid: int) -> None:
        reader = self.transfers.pop(tid, None)
        if reader is not None:
            reader.close()

    def close(self) -> None:
        self._timer.cancel()
        for live in self.core.live.values():
            live.transfer.close()  # the files they read
        for tid in list(self.transfers):
            self._close(tid)
        if self.requests is not None:
            self.requests.close()
