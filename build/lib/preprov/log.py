"""structlog set-up, and the log's subscription to the event bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from typing import Any, BinaryIO, TextIO, cast

import orjson
import structlog

from .events import Event, is_refusal

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


# What counts as an answer in the once-a-second summary, per channel.
ANSWERS = frozenset({"file.served", "pnp.notify-sent", "dhcp4.answered", "dhcp6.answered"})
SUMMARY_EVERY = 1.0  # seconds
WARN_BURST = 10  # warning lines of one kind and channel logged in one summary period
MAX_SAMPLES = 20_000  # answer times kept per channel and period, for the p99
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(value: object) -> object:
    """Control bytes from packets are shown escaped, never written raw to a terminal."""
    if isinstance(value, str) and _CONTROL.search(value):
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return value


class _Period:
    __slots__ = ("answered", "events", "refused", "suppressed", "times")

    def __init__(self) -> None:
        self.answered = self.refused = self.suppressed = self.events = 0
        self.times: list[float] = []


class LogSink:
    """The log's subscription to the bus.

    At `debug` every event is a line. At `info` (the default) an event about one
    packet or request is not a line of its own, since a line per packet cost two
    thirds of the DHCP throughput (README, "Speed"): instead, once a second, one
    `traffic` line per channel that had any, with the answers, the refusals and
    the p99 of the answer time; warnings still get their own lines, at most
    WARN_BURST per kind and channel a second (the rest are counted in the summary
    as `suppressed`). Every event still reaches the inventory, the dashboard and
    the metrics: this decides only what is written to the log.

    Console lines leave out empty fields; JSON lines keep them as null (cheaper,
    and a reader's schema is steady).
    """

    def __init__(self, fmt: str = "console", level: str = "info") -> None:
        self.log = structlog.get_logger("preprov")
        self.compact = fmt != "json"
        self.threshold = _LEVELS[level]
        self.every_event = self.threshold <= logging.DEBUG
        self.periods: dict[str, _Period] = {}
        self.warned: dict[tuple[str, str], int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, event: Event) -> None:
        level = _LEVELS[event.level]
        if self.every_event:
            self._line(event)
            return
        channel = getattr(event, "channel", None)
        if channel is None:  # about the server, not a packet: always its own line
            if level >= self.threshold:
                self._line(event)
            return
        p = self._period(channel)
        p.events += 1
        if event.kind in ANSWERS:
            p.answered += 1
        elif is_refusal(event):
            p.refused += 1
        if level < self.threshold or level < logging.WARNING:
            return
        key = (event.kind, channel)
        n = self.warned.get(key, 0)
        self.warned[key] = n + 1
        if n < WARN_BURST:
            self._line(event)
        else:
            p.suppressed += 1

    def observe(self, channel: str, seconds: float) -> None:
        """A request's answer time (the transports call this, as they call the metrics)."""
        if self.every_event:
            return
        times = self._period(channel).times
        if len(times) < MAX_SAMPLES:
            times.append(seconds)

    def _period(self, channel: str) -> _Period:
        p = self.periods.get(channel)
        if p is None:
            p = self.periods[channel] = _Period()
            if self._timer is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    return p  # outside a server (a CLI command): no summaries
                self._timer = loop.call_later(SUMMARY_EVERY, self.summarize)
        return p

    def summarize(self) -> None:
        """One `traffic` line per channel for the period that ends now."""
        self._timer = None
        periods, self.periods = self.periods, {}
        self.warned.clear()
        if self.threshold > logging.INFO:
            return
        for channel, p in sorted(periods.items()):
            fields: dict[str, Any] = {
                "channel": channel, "seconds": SUMMARY_EVERY, "events": p.events,
                "answered": p.answered, "refused": p.refused, "suppressed": p.suppressed,
            }  # fmt: skip
            if p.times:
                p.times.sort()
                p99 = p.times[min(len(p.times) - 1, int(len(p.times) * 0.99))]
                fields["p99_ms"] = round(p99 * 1000, 3)
            self.log.info("traffic", **fields)

    def _line(self, event: Event) -> None:
        fields = event.fields()
        if self.compact:
            fields = {k: _escape(v) for k, v in fields.items() if v is not None and v != ()}
        getattr(self.log, event.level)(event.kind, **fields)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self.summarize()
