"""structlog set-up, and the log's subscription to the event bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any, BinaryIO, TextIO, cast

import orjson
import structlog

from .events import Event

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


def setup_logging(fmt: str = "console", level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines (orjson, written as bytes: structlog's fast path) or console lines."""
    out = stream or sys.stderr
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    factory: Any
    if fmt == "json":
        processors.append(structlog.processors.JSONRenderer(serializer=_json_line))
        binary = cast(BinaryIO, getattr(out, "buffer", out))
        buffered = TurnBuffered(binary)
        _STREAMS.append(buffered)
        factory = structlog.BytesLoggerFactory(cast(BinaryIO, buffered))
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
        factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library; send theirs to the same stream.
    logging.basicConfig(stream=out, level=max(_LEVELS[level], logging.WARNING), force=True)


class TurnBuffered:
    """A byte stream that writes once per turn of the event loop.

    structlog's BytesLogger writes and flushes every line; under load that is
    a write(2) per event. Inside a running loop the lines of one turn are
    gathered and written together at the end of that turn, before any answer
    that waits for the inventory's group commit leaves (a later turn).
    Outside a loop each line is written at once.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.pending: list[bytes] = []

    def write(self, data: bytes) -> int:
        if not self.pending:
            try:
                asyncio.get_running_loop().call_soon(self._drain)
            except RuntimeError:
                self.raw.write(data)
                self.raw.flush()
                return len(data)
        self.pending.append(data)
        return len(data)

    def flush(self) -> None:
        pass  # _drain flushes

    def _drain(self) -> None:
        data, self.pending = b"".join(self.pending), []
        with contextlib.suppress(OSError, ValueError):
            self.raw.write(data)
            self.raw.flush()


_STREAMS: list[TurnBuffered] = []


def flush_logs() -> None:
    """Write what the log holds for the end of this turn now (on shutdown)."""
    for s in _STREAMS:
        if s.pending:
            s._drain()


def _json_line(obj: Any, **_kw: Any) -> bytes:
    return orjson.dumps(obj, default=str)


class LogSink:
    """Renders every event on the bus as one log line. Console lines leave out empty
    fields; JSON lines keep them as null (cheaper, and a reader's schema is steady)."""

    def __init__(self, fmt: str = "console", level: str = "info") -> None:
        self.log = structlog.get_logger("preprov")
        self.compact = fmt != "json"
        self.threshold = _LEVELS[level]

    def __call__(self, event: Event) -> None:
        if _LEVELS[event.level] < self.threshold:
            return  # below the log level: not even rendered
        fields = event.fields()
        if self.compact:
            fields = {k: v for k, v in fields.items() if v is not None and v != ()}
        getattr(self.log, event.level)(event.kind, **fields)
