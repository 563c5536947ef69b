"""Read-only TFTP, without I/O: RFC 1350 with option negotiation (RFC 2347-2349).

`TftpServer` is the core, shaped like the others (docs/design.md §1): fed the
datagrams of the request port and of each transfer, and its timer, it returns
what to send (from which transfer's socket), which transfers ended and the
events. A read request goes through named stages: allow-list, rate limit,
parse, transfer caps, the file (answered by files.service.fetch, as over HTTP:
same templates, rules and events), then a `Transfer` says which packet goes
out for each ACK and each timeout. The adapter owns the sockets and the clock.

Hardened like SIP PnP (issue: each spoofed read request held a socket for 6 s
and drew 49 times its size): sources outside the allowed subnets and over
their rate get silence; transfers are capped in all and per source; resends
are paid for from a credit of the bytes received, so nobody can make the
server send much more than it is sent.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

from ..datagrams import Addr, Output, Send
from ..events import Event, FileRefused, FileServed, RequestIgnored, RequestMalformed
from ..safety import AllowList, RateLimiter

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
# error codes (RFC 1350, RFC 2347)
NOT_DEFINED, FILE_NOT_FOUND, ACCESS_VIOLATION, DISK_FULL, ILLEGAL_OPERATION = 0, 1, 2, 3, 4
UNKNOWN_TID, FILE_EXISTS, NO_SUCH_USER, OPTION_REFUSED = 5, 6, 7, 8

BLKSIZE_MAX = 1468  # fits an Ethernet frame with IP and UDP headers (RFC 2348)
DEFAULT_BLKSIZE = 512


class NotARequest(ValueError):
    """DATA, ACK, ERROR or OACK sent to the request port: a stray of some transfer."""


class TftpError(ValueError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ReadRequest:
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)


def parse_request(data: bytes) -> ReadRequest:
    if len(data) < 4:
        raise TftpError(ILLEGAL_OPERATION, "packet too short")
    (op,) = struct.unpack_from("!H", data)
    if op == WRQ:
        raise TftpError(ACCESS_VIOLATION, "this server is read-only")
    if op in (DATA, ACK, ERROR, OACK):
        raise NotARequest(f"opcode {op} on the request port")
    if op != RRQ:
        raise TftpError(ILLEGAL_OPERATION, f"opcode {op} is not a read request")
    parts = data[2:].split(b"\x00")
    if len(parts) < 3 or parts[-1] != b"":
        raise TftpError(ILLEGAL_OPERATION, "request fields are not NUL-terminated")
    fields = [p.decode("ascii", "replace") for p in parts[:-1]]
    filename, mode = fields[0], fields[1].lower()
    if mode not in ("octet", "netascii"):
        raise TftpError(ILLEGAL_OPERATION, f"mode {mode!r} is not served (octet, netascii)")
    opts = {}
    rest = fields[2:]
    for i in range(0, len(rest) - 1, 2):
        opts[rest[i].lower()] = rest[i + 1]
    return ReadRequest(filename, mode, opts)


def error_packet(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode("ascii", "replace")[:200] + b"\x00"


class Source(Protocol):
    """A file's bytes as a transfer reads them, block by block: a large file is read
    from disk as it is sent (the adapter's), never held whole (issue: fifty phones
    fetching a 30 MB firmware held fifty copies)."""

    size: int

    def read(self, offset: int, n: int) -> bytes: ...

    def close(self) -> None: ...


class Memory:
    """A file already in memory (a rendered template, a small raw file)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, n: int) -> bytes:
        return self.data[offset : offset + n]

    def close(self) -> None:
        pass


def netascii(data: bytes) -> bytes:
    """Line ends as netascii wants them (RFC 764): CRLF, whatever the file had."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


CHUNK = 64 * 1024  # octets read at once from a source converted to netascii on the way


class Transfer:
    """One file going out, block by block, each resent until acknowledged. The blocks go
    out in order (the next only once the last is acknowledged), so a source is read
    once, front to back: a file in memory converted to netascii whole, a file read from
    disk as it goes, in netascii converted chunk by chunk (its size then unknown ahead:
    no tsize is offered)."""

    def __init__(
        self, body: bytes | Source, request: ReadRequest, blksize_max: int = BLKSIZE_MAX,
        timeout: float = 1.0, retries: int = 5,
    ) -> None:  # fmt: skip
        convert = request.mode == "netascii"
        if isinstance(body, bytes):
            body = Memory(netascii(body) if convert else body)
            convert = False
        self.source = body
        self.convert = convert  # netascii, chunk by chunk
        self.size: int | None = None if convert else body.size  # octets sent in all
        self._read = 0  # octets of the source read so far
        self._pending = bytearray()  # converted octets not yet sent
        self._cr = b""  # a CR that ended a chunk: its LF may start the next
        self._eof = False  # the source read to its end
        self.blksize = DEFAULT_BLKSIZE
        self.timeout = timeout
        self.retries = retries
        self.accepted: dict[str, str] = {}
        opts = request.options
        if "blksize" in opts and opts["blksize"].isdigit():
            size = max(8, min(int(opts["blksize"]), blksize_max))
            self.blksize = size
            self.accepted["blksize"] = str(size)
        if "tsize" in opts and self.size is not None:
            self.accepted["tsize"] = str(self.size)  # RFC 2349: the size of a file read
        if "timeout" in opts and opts["timeout"].isdigit() and 1 <= int(opts["timeout"]) <= 255:
            self.timeout = float(opts["timeout"])
            self.accepted["timeout"] = opts["timeout"]
        self.block = 0  # the block last sent (0: the OACK)
        self.final = False  # the block last sent is the last one (shorter than blksize)
        self.tries = 0
        self.done = False
        self.acked = False  # the last block was acknowledged
        self.last = b""

    @property
    def blocks(self) -> int | None:
        """How many blocks the file takes (a last one shorter than blksize), when known."""
        return None if self.size is None else self.size // self.blksize + 1

    def start(self) -> bytes:
        if self.accepted:
            opts = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00"
                            for k, v in self.accepted.items())  # fmt: skip
            self.last = struct.pack("!H", OACK) + opts
            return self.last
        return self._data(1)

    def _data(self, n: int) -> bytes:
        self.block = n
        self.tries = 0
        chunk = self._next_chunk()
        self.final = len(chunk) < self.blksize
        self.last = struct.pack("!HH", DATA, n & 0xFFFF) + chunk
        return self.last

    def _next_chunk(self) -> bytes:
        src, n = self.source, self.blksize
        if not self.convert:
            chunk = src.read(self._read, n)
            self._read += len(chunk)
            return chunk
        pending = self._pending
        while len(pending) < n and not self._eof:
            got = src.read(self._read, CHUNK)
            self._read += len(got)
            # the end: the size read, or nothing more to read (the file shrank on disk)
            self._eof = not got or self._read >= src.size
            raw, self._cr = self._cr + got, b""
            if raw.endswith(b"\r") and not self._eof:
                raw, self._cr = raw[:-1], b"\r"  # the next chunk may begin with its LF
            pending += netascii(raw)
        chunk = bytes(pending[:n])
        del pending[:n]
        return chunk

    def on_packet(self, data: bytes) -> bytes | None:
        """The next packet to send, or None (nothing to send, or the transfer is over)."""
        if len(data) < 4:
            return None
        op, n = struct.unpack_from("!HH", data)
        if op == ERROR:
            self.done = True
            return None
        if op != ACK or n != self.block & 0xFFFF:
            return None  # a duplicate ACK: not answered (Sorcerer's Apprentice, RFC 1123)
        if self.final:
            self.done = self.acked = True
            return None
        return self._data(self.block + 1)

    def on_timeout(self) -> bytes | None:
        """The packet to resend, or None when the client is given up."""
        self.tries += 1
        if self.tries > self.retries:
            self.done = True
            return None
        return self.last

    def close(self) -> None:
        self.source.close()


CHANNEL = "tftp"
RESEND_CREDIT_MAX = 1 << 20  # bytes, as for SIP PnP's NOTIFY resends
RESEND_REFILL = 64 * 1024  # bytes a second
STALLED = 0.25  # seconds of silence after which a transfer may give way at the cap


class TransferSlots:
    """The cap on transfers at once, shared by every listener of the server (each
    transfer holds a socket: descriptors are what a flood would take)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.taken = 0


@dataclass
class TftpPolicy:
    allow: AllowList = field(default_factory=AllowList)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(20, 10))
    slots: TransferSlots = field(default_factory=lambda: TransferSlots(256))
    max_per_source: int = 8
    blksize_max: int = BLKSIZE_MAX
    timeout: float = 1.0
    retries: int = 5


@dataclass(frozen=True)
class FileAnswer:
    """What files.service.fetch said of a request: the status, the bytes, the event;
    a large file's `source` (read as it is sent; body then empty)."""

    status: int
    body: bytes
    event: Event
    source: Source | None = None


Answer = Callable[[str, str], FileAnswer]  # (path as in a URL, client address)


def refusal(served: Event, client: str, status: int, reason: str) -> FileRefused:
    """A file that was to be sent and is not after all (a transfer given up, a large file
    that could not be opened): its device, path, template and rule, as it was served."""
    f = served.fields() if isinstance(served, FileServed) else {}
    return FileRefused(channel=CHANNEL, client=client, mac=f.get("mac"), model=f.get("model"),
                       fwver=f.get("fwver"), vendor=f.get("vendor"), path=f.get("path", ""),
                       status=status, reason=reason, template=f.get("template"),
                       rule=f.get("rule"))  # fmt: skip


@dataclass
class _Live:
    client: Addr
    transfer: Transfer
    served: Event
    wake: float
    started: float = 0.0
    heard: bool = False  # the client has answered at least once

    def stalled(self, now: float) -> bool:
        """A client that answers does so in milliseconds: one silent for STALLED since
        the transfer began, or that needed a resend, is not likely to."""
        return self.transfer.tries > 0 or (not self.heard and now - self.started > STALLED)


class TftpServer:
    def __init__(self, policy: TftpPolicy, answer: Answer) -> None:
        self.policy = policy
        self.answer = answer
        self.live: dict[int, _Live] = {}
        self.per_source: dict[str, int] = {}
        self._next_tid = 1
        self.resend_credit = float(RESEND_CREDIT_MAX)
        self._credit_at: float | None = None
        self.resends_skipped = 0

    # -- the calls -----------------------------------------------------------------

    def datagram_received(self, data: bytes, source: Addr, now: float) -> Output:
        """A datagram on the request port."""
        out = Output()
        self._refill(len(data), now)
        p = self.policy
        client = source[0]
        # 1. who may make this server send (silence otherwise: no reflection)
        why = p.allow.why_not(None, client)
        if why is None and not p.limiter.allow(client, now):
            suppressed = p.limiter.report(client, now)
            if suppressed is None:
                return out
            more = f" ({suppressed} more not reported)" if suppressed else ""
            why = (f"rate limit: more than {p.limiter.burst:g} at once or {p.limiter.rate:g}/s "
                   f"from {client}{more}")  # fmt: skip
        if why is not None:
            out.events.append(RequestIgnored(channel=CHANNEL, client=client, reason=why))
            return out
        # 2. parse
        try:
            req = parse_request(data)
        except NotARequest:
            return out  # a late ACK or ERROR of a transfer that ended: nothing to answer
        except TftpError as e:
            out.events.append(RequestMalformed(channel=CHANNEL, client=client, reason=e.message))
            out.sends.append(Send(error_packet(e.code, e.message), source))
            return out
        # 3. caps; when all slots are taken, a stalled transfer (its client has not
        # answered in time: a spoofed source never does) gives way to the new one
        busy = None
        if self.per_source.get(client, 0) >= p.max_per_source:
            busy = (f"{p.max_per_source} transfers at once from {client}, the cap "
                    "(tftp.max_transfers_per_source)")  # fmt: skip
        elif p.slots.taken >= p.slots.total:
            victim = self._give_way(client, now)
            if victim is None:
                busy = f"{p.slots.taken} transfers at once, the cap (tftp.max_transfers)"
            else:
                self._end(victim, out, "it gave way to a new request at the cap")
        if busy:
            out.events.append(RequestIgnored(channel=CHANNEL, client=client, reason=busy))
            out.sends.append(Send(error_packet(NOT_DEFINED, "server busy, try again"), source))
            return out
        # 4. the file: the same answer as over HTTP
        path = "/" + quote(req.filename.lstrip("/"), safe="/")
        answer = self.answer(path, client)
        if answer.status != 200:
            out.events.append(answer.event)
            code = FILE_NOT_FOUND if answer.status == 404 else ACCESS_VIOLATION
            out.sends.append(Send(error_packet(code, answer.body.decode().strip()), source))
            return out
        # 5. the transfer, from a socket of its own (a new TID)
        t = Transfer(answer.source or answer.body, req, p.blksize_max, p.timeout, p.retries)
        tid = self._next_tid
        self._next_tid += 1
        self.live[tid] = _Live(source, t, answer.event, now + t.timeout, started=now)
        p.slots.taken += 1
        self.per_source[client] = self.per_source.get(client, 0) + 1
        out.sends.append(Send(t.start(), source, tid))
        return out

    def transfer_received(self, tid: int, data: bytes, source: Addr, now: float) -> Output:
        """A datagram on a transfer's socket."""
        out = Output()
        live = self.live.get(tid)
        if live is None or source != live.client:
            return out  # its socket is connected to the client: a stray
        self._refill(len(data), now)
        live.heard = True
        nxt = live.transfer.on_packet(data)
        if nxt is not None:
            out.sends.append(Send(nxt, live.client, tid))
            live.wake = now + live.transfer.timeout
        if live.transfer.done:
            self._end(tid, out)
        return out

    def timer_expired(self, now: float) -> Output:
        out = Output()
        self._refill(0, now)
        for tid, live in list(self.live.items()):
            if live.wake > now:
                continue
            again = live.transfer.on_timeout()
            if again is None:
                self._end(tid, out)
                continue
            if self.resend_credit >= len(again):
                self.resend_credit -= len(again)
                out.sends.append(Send(again, live.client, tid))
            else:
                self.resends_skipped += 1  # not paid for: counts as a try all the same
            live.wake = now + live.transfer.timeout
        return out

    def next_timer(self) -> float | None:
        return min((x.wake for x in self.live.values()), default=None)

    # -- state ---------------------------------------------------------------------

    def _give_way(self, client: str, now: float) -> int | None:
        """At the cap, the transfer that makes room: the oldest stalled one, else the
        oldest of the source holding the most, when it holds more than this client
        (a flood from a few addresses cannot lock a phone out for its 0.25 s)."""
        stalled = next((tid for tid, x in self.live.items() if x.stalled(now)), None)
        if stalled is not None:
            return stalled
        heavy = max(self.per_source, key=lambda a: self.per_source[a], default=None)
        if heavy is None or self.per_source[heavy] <= self.per_source.get(client, 0) + 1:
            return None
        return next(tid for tid, x in self.live.items() if x.client[0] == heavy)

    def _end(self, tid: int, out: Output, why: str | None = None) -> None:
        live = self.live.pop(tid)
        self.policy.slots.taken -= 1
        client = live.client[0]
        left = self.per_source.get(client, 1) - 1
        if left:
            self.per_source[client] = left
        else:
            self.per_source.pop(client, None)
        t = live.transfer
        t.close()
        out.closed.append(tid)
        if t.acked and why is None:
            out.events.append(live.served)
            return
        reason = f"TFTP transfer given up at block {t.block} of {t.blocks or '?'}"
        out.events.append(refusal(live.served, client, 408, reason + (f": {why}" if why else "")))

    def _refill(self, received: int, now: float) -> None:
        elapsed = 0.0 if self._credit_at is None else max(0.0, now - self._credit_at)
        self._credit_at = now
        credit = self.resend_credit + received + elapsed * RESEND_REFILL
        self.resend_credit = min(credit, RESEND_CREDIT_MAX)
