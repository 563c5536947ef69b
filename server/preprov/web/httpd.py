"""The phone-facing HTTP/1.1 listener: httptools' parser and an asyncio.Protocol.

Written here instead of using aiohttp's server because that was measured to
be the larger part of the cost of a request: the same file path answered
13,400 requests/s through aiohttp's low-level server and 15,200 through this
one on one core, in the same benchmark (README, "Speed"); the rest of the gain
to about 20,000 came from the inventory and log changes around it. It does
only what phones need: GET and HEAD, keep-alive and pipelining, answers in
order, and each answer leaves once its event is in the inventory's writer process,
from where it is committed even if the server is killed (without a writer process:
once committed); no task or future per request, a callback of the group commit.
Everything a request means is decided by files.service.fetch, as for any other transport; a
repeated request reuses the answer it was given while nothing it was decided on
changed (files.service.Answers).

Limits: request line and headers 16 KiB (431), body 64 KiB (413); a request
head must arrive within http.head_timeout seconds of its first byte, or of the
connection (408: a slowloris holds no connection for ever); an idle connection
is closed after KEEPALIVE seconds; at most http.max_connections connections,
http.max_connections_per_source from one address (503); past MAX_PENDING
pipelined answers, or while the client does not read what it is sent, its
requests are not read. A request httptools cannot
parse gets a 400, closes the connection and becomes a request.malformed event.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import BinaryIO, cast

import httptools

from ..events import EventBus, RequestIgnored, RequestMalformed
from ..files.service import Answers, FileAnswer, FileRequest, fetch
from ..files.templates import TemplateError
from ..runtime import Runtime

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
KEEPALIVE = 75.0  # seconds a connection may wait between requests
HEAD_DEADLINE = 10.0  # defaults of http.head_timeout, http.max_connections(_per_source)
MAX_CONNECTIONS = 4096
MAX_PER_SOURCE = 128
MAX_PENDING = 64  # pipelined answers waiting: reading pauses until they drain
SWEEP_EVERY = 1.0  # seconds
SERVER = b"preprov"

_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def response_bytes(
    status: int,
    body: bytes,
    content_type: str,
    headers: list[tuple[str, str]],
    keep_alive: bool,
    head: bool = False,
    version: str = "1.1",
    length: int | None = None,
) -> bytes:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    charset = b"; charset=utf-8" if content_type.startswith("text/") else b""
    lines = [
        b"HTTP/%s %d %s" % (version.encode(), status, phrase.encode()),
        b"Server: " + SERVER,
        b"Date: " + _date(),
        b"Content-Type: " + content_type.encode() + charset,
    ]  # fmt: skip
    # a 304's length would be the 200's (RFC 9110 §8.6): none is sent; a 204 has none
    if status not in (204, 304):
        lines.append(b"Content-Length: %d" % (len(body) if length is None else length))
    lines += [f"{k}: {v}".encode("latin-1", "replace") for k, v in headers]
    if not keep_alive:
        lines.append(b"Connection: close")
    elif version == "1.0":
        lines.append(b"Connection: keep-alive")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


def _wire(answer: FileAnswer, keep_alive: bool, version: str, head: bool) -> bytes:
    """The answer's bytes on the wire; a reused answer keeps them for the second they
    were made in (its Date header)."""
    date = _date()
    kept = answer.wire
    if kept is not None and kept[0] is date and kept[1] == (keep_alive, version, head):
        return kept[2]
    wire = response_bytes(
        answer.status, answer.body, answer.content_type, answer.headers, keep_alive,
        head=head, version=version,
        length=answer.length if answer.stream is not None or answer.status == 206 else None,
    )  # fmt: skip
    if answer.reusable_until:
        answer.wire = (date, (keep_alive, version, head), wire)
    return wire


class FileServerProtocol(asyncio.Protocol):
    def __init__(
        self,
        runtime: Callable[[], Runtime],
        bus: EventBus,
        registered: Callable[[str], bool],
        connections: set[FileServerProtocol],
        channel: str = "http",
        observe: Callable[[float], None] | None = None,
        holder: Callable[[str | None], str | None] = lambda _a: None,
        limits: ConnectionLimits | None = None,
        answers: Answers | None = None,
    ) -> None:
        self.runtime = runtime
        self.answers = answers
        self.holder = holder
        self.limits = limits or ConnectionLimits()
        self._admitted = False
        self.bus = bus
        self.registered = registered
        self.connections = connections
        self.channel = channel
        self.observe = observe
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.local: str | None = None
        self.last_active = time.monotonic()
        self.head_started: float | None = None  # a request's head is being received
        self._paused = False  # reading paused: too many answers pending, or a full buffer
        self._write_full = False
        self._url = b""
        self._head_size = 0
        self._body_size = 0
        self._body: list[bytes] = []
        self._ua: str | None = None
        self._auth: str | None = None
        self._inm: str | None = None
        self._range: str | None = None
        self._header_name = b""
        # answers in request order: each cell is filled when its event is committed
        self._slots: deque[list[bytes | _Stream | None]] = deque()
        self._streaming: _Stream | None = None  # a file going out as the socket drains
        self._closing = False

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.peer = str(peer[0]) if peer else None
        self.local = str(sock[0]) if sock else None
        self.connections.add(self)
        self.head_started = time.monotonic()  # the first request's head has a deadline too
        why = self.limits.admit(self.peer)
        if why:
            self.bus.emit(RequestIgnored(channel=self.channel, client=self.peer, reason=why))
            self._refuse(503, why, emit=False)
        else:
            self._admitted = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self._streaming is not None:
            self._streaming.close()
            self._streaming = None
        if self._admitted:
            self.limits.release(self.peer)
            self._admitted = False
        self.transport = None

    def pause_writing(self) -> None:
        self._write_full = True  # a client that does not read: stop reading its requests
        self._flow()

    def resume_writing(self) -> None:
        self._write_full = False
        self._flow()
        if self._streaming is not None:
            self._pump()

    def _flow(self) -> None:
        pause = self._write_full or len(self._slots) >= MAX_PENDING
        if pause != self._paused and self.transport is not None and not self._closing:
            self._paused = pause
            (self.transport.pause_reading if pause else self.transport.resume_reading)()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrade is not supported")
        except (httptools.HttpParserError, _TooLarge) as e:
            # httptools wraps what a callback raises in HttpParserCallbackError
            big = e if isinstance(e, _TooLarge) else e.__context__
            if isinstance(big, _TooLarge):
                self._refuse(big.status, big.reason)
            else:
                self._refuse(400, f"{type(e).__name__}: {e}")

    # -- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self.head_started = time.monotonic()
        self._url = b""
        self._head_size = self._body_size = 0
        self._body = []
        self._ua = self._auth = self._inm = self._range = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        n = name.lower()
        if n == b"user-agent":
            self._ua = value.decode("latin-1")
        elif n == b"authorization":
            self._auth = value.decode("latin-1")
        elif n == b"if-none-match":
            self._inm = value.decode("latin-1")
        elif n == b"range":
            self._range = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            raise _TooLarge(413, f"request body over {MAX_BODY} bytes")
        self._body.append(body)  # a PUT's upload (a Poly's log), at most MAX_BODY

    def on_headers_complete(self) -> None:
        self.head_started = None

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        keep_alive = self.parser.should_keep_alive()
        version = "1.0" if self.parser.get_http_version() == "1.0" else "1.1"
        rt = self.runtime()
        key = (self._url, method, self._ua, self._auth, self._inm, self._range, self.peer,
               self.local, self.channel)  # fmt: skip
        answer = None if self._body or self.answers is None else self.answers.get(
            key, rt, time.monotonic())  # fmt: skip
        if answer is not None:
            event = answer.event.again()  # a repeated request: its answer, happening now
        else:
            req = FileRequest(
                channel=self.channel,
                client=self.peer,
                raw_path=self._url.decode("latin-1"),
                method=method,
                user_agent=self._ua,
                authorization=self._auth,
                local=self.local,
                if_none_match=self._inm,
                range=self._range,
                body=b"".join(self._body) if self._body else None,
            )
            answer = fetch(rt, req, self.registered, holder=self.holder)
            event = answer.event
            if self.answers is not None and not self._body:
                self.answers.put(key, rt, answer)
        self._body = []
        head = method == "HEAD"
        wire = _wire(answer, keep_alive, version, head)
        data: bytes | _Stream = wire
        if answer.stream is not None and not head:
            data = _Stream(wire, answer.stream, answer.offset, answer.length)
        cell: list[bytes | _Stream | None] = [None]
        self._slots.append(cell)
        self.bus.emit(event)
        # The answer leaves only once its event is stored: nothing served is
        # missing from the inventory after a kill -9.
        started = time.monotonic()
        self.bus.after_settled(lambda error: self._ready(cell, data, keep_alive, error, started))
        self._flow()

    # -- answering ---------------------------------------------------------------

    def _ready(
        self,
        cell: list[bytes | _Stream | None],
        data: bytes | _Stream,
        keep_alive: bool,
        error: BaseException | None,
        started: float,
    ) -> None:
        if self.observe is not None:
            self.observe(time.monotonic() - started)
        if error is not None:
            data = response_bytes(503, b"inventory unavailable\n", "text/plain", [], False)
            keep_alive = False
        cell[0] = data
        if not keep_alive:
            self._closing = True
        self._drain()

    def _drain(self) -> None:
        """Send every answer whose predecessors have gone, in order; a streamed file
        holds the ones after it until its last byte is written."""
        while self._streaming is None and self._slots and self._slots[0][0] is not None:
            out = self._slots.popleft()[0]
            if self.transport is None:
                continue
            if isinstance(out, _Stream):
                self.transport.write(out.head)
                try:
                    out.open()
                except (OSError, TemplateError):  # removed, or swapped for a link, since
                    self._closing = True  # the head promised bytes that cannot come
                    self._slots.clear()
                    break
                self._streaming = out
                self._pump()
            elif out is not None:
                self.transport.write(out)
        self._flow()
        if self._closing and not self._slots and self._streaming is None:
            self._close()

    def _pump(self) -> None:
        """Write the streamed file while the socket takes it (pause_writing stops this,
        resume_writing starts it again): at most the transport's buffer in memory."""
        st = self._streaming
        while st is not None and st.remaining and not self._write_full:
            if self.transport is None:
                break
            chunk = st.read()
            if not chunk:  # the file shrank under us: the length sent cannot be kept
                self._closing = True
                self._slots.clear()
                break
            self.transport.write(chunk)
        if st is not None and (not st.remaining or self._closing or self.transport is None):
            st.close()
            self._streaming = None
            self._drain()

    def _count(self, n: int) -> None:
        self._head_size += n
        if self._head_size > MAX_HEAD:
            raise _TooLarge(431, f"request line and headers over {MAX_HEAD} bytes")

    def _refuse(self, status: int, reason: str, emit: bool = True) -> None:
        self._closing = True
        if emit:
            self.bus.emit(
                RequestMalformed(channel=self.channel, client=self.peer, reason=reason[:300])
            )
        if self.transport is not None:
            self.transport.write(
                response_bytes(status, (reason + "\n").encode(), "text/plain", [], False)
            )
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def overdue(self, now: float, head_deadline: float = HEAD_DEADLINE) -> str | None:
        """Why the sweep closes this connection now, if it does."""
        if self.head_started is not None and now - self.head_started > head_deadline:
            return f"request head not complete within {head_deadline:g} s (http.head_timeout)"
        if not self._slots and now - self.last_active > KEEPALIVE:
            return ""  # idle: closed without an event, as any keep-alive ends
        return None


CHUNK = 64 * 1024  # bytes read from a streamed file at a time


class _Stream:
    """An answer whose body is read from disk as it is sent."""

    def __init__(self, head: bytes, opener: Callable[[], BinaryIO], offset: int, length: int):
        self.head = head
        self.opener = opener
        self.offset = offset
        self.remaining = length
        self.file: BinaryIO | None = None

    def open(self) -> None:
        self.file = self.opener()
        self.file.seek(self.offset)

    def read(self) -> bytes:
        assert self.file is not None
        chunk = self.file.read(min(CHUNK, self.remaining))
        self.remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class ConnectionLimits:
    """At most `total` open, `per_source` from one address (http.max_connections,
    http.max_connections_per_source): one host holding thousands of connections
    open cannot take the descriptors."""

    def __init__(self, total: int = MAX_CONNECTIONS, per_source: int = MAX_PER_SOURCE) -> None:
        self.total = total
        self.per_source = per_source
        self.open = 0
        self.by_source: dict[str | None, int] = {}

    def admit(self, source: str | None) -> str | None:
        n = self.by_source.get(source, 0)
        if n >= self.per_source:
            return f"{n} connections open from {source}, the most one address may hold"
        if self.open >= self.total:
            return f"{self.open} connections open, the most this server holds"
        self.by_source[source] = n + 1
        self.open += 1
        return None

    def release(self, source: str | None) -> None:
        self.open -= 1
        n = self.by_source.get(source, 1) - 1
        if n:
            self.by_source[source] = n
        else:
            self.by_source.pop(source, None)


class _TooLarge(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class FileServer:
    """The listeners of one HTTP service, and the sweep that closes idle connections."""

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        bus: EventBus,
        registered: Callable[[str], bool],
        observe: Callable[[float], None] | None = None,
        holder: Callable[[str | None], str | None] = lambda _a: None,
        version: Callable[[], object] | None = None,
    ) -> None:
        self.runtime = runtime
        # repeated requests reuse their answer while `version()` (what the server knows
        # of devices) is unchanged; without it, every request is answered afresh
        self.answers = Answers(version) if version is not None else None
        self.bus = bus
        self.registered = registered
        self.observe = observe
        self.holder = holder
        self.connections: set[FileServerProtocol] = set()
        http = runtime().config.http
        self.limits = ConnectionLimits(http.max_connections, http.max_connections_per_source)
        self.servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int, ssl: ssl_module.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        channel = "https" if ssl is not None else "http"
        srv = await loop.create_server(
            lambda: FileServerProtocol(
                self.runtime, self.bus, self.registered, self.connections, channel,
                observe=self.observe, holder=self.holder, limits=self.limits,
                answers=self.answers,
            ),
            host, port, reuse_address=True, backlog=1024, ssl=ssl,
        )  # fmt: skip
        self.servers.append(srv)
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_EVERY, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        deadline = self.runtime().config.http.head_timeout
        for c in list(self.connections):
            why = c.overdue(now, deadline)
            if why:
                c._refuse(408, why)
            elif why is not None:
                c._close()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_EVERY, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for s in self.servers:
            s.close()
        for c in list(self.connections):
            c._close()
        for s in self.servers:
            await s.wait_closed()
