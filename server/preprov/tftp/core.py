"""Read-only TFTP, without I/O: RFC 1350 with option negotiation (RFC 2347-2349).

A read request is parsed here; the file it names is answered by
files.service.fetch, as over HTTP (same templates, rules and events); a
`Transfer` then says which packet to send for each ACK and each timeout. The
driver owns the sockets and the clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

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


class Transfer:
    """One file going out, block by block, each resent until acknowledged."""

    def __init__(
        self, body: bytes, request: ReadRequest, blksize_max: int = BLKSIZE_MAX,
        timeout: float = 1.0, retries: int = 5,
    ) -> None:  # fmt: skip
        if request.mode == "netascii":
            body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self.body = body
        self.blksize = DEFAULT_BLKSIZE
        self.timeout = timeout
        self.retries = retries
        self.accepted: dict[str, str] = {}
        opts = request.options
        if "blksize" in opts and opts["blksize"].isdigit():
            size = max(8, min(int(opts["blksize"]), blksize_max))
            self.blksize = size
            self.accepted["blksize"] = str(size)
        if "tsize" in opts:
            self.accepted["tsize"] = str(len(body))  # RFC 2349: the size of a file read
        if "timeout" in opts and opts["timeout"].isdigit() and 1 <= int(opts["timeout"]) <= 255:
            self.timeout = float(opts["timeout"])
            self.accepted["timeout"] = opts["timeout"]
        self.block = 0  # the block last sent (0: the OACK)
        self.tries = 0
        self.done = False
        self.last = b""
        self.blocks = len(body) // self.blksize + 1  # a last block shorter than blksize

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
        chunk = self.body[(n - 1) * self.blksize : n * self.blksize]
        self.last = struct.pack("!HH", DATA, n & 0xFFFF) + chunk
        return self.last

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
        if self.block == self.blocks:
            self.done = True
            return None
        return self._data(self.block + 1)

    def on_timeout(self) -> bytes | None:
        """The packet to resend, or None when the client is given up."""
        self.tries += 1
        if self.tries > self.retries:
            self.done = True
            return None
        return self.last
