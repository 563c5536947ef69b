"""What every protocol core hands back to its asyncio driver (STYLE.md §1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import Event, RequestMalformed

Addr = tuple[str, int]


@dataclass(frozen=True)
class Send:
    """A datagram to send, and where."""

    data: bytes
    addr: Addr


@dataclass
class Output:
    """The datagrams to send and the events that happened, for one input."""

    sends: list[Send] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def unexpected(channel: str, source: Addr, error: Exception) -> RequestMalformed:
    """The event for an exception a protocol core raised on some input: the last
    net around each core's datagram_received, so that no input takes a server down."""
    reason = f"unexpected {type(error).__name__}: {error}"[:300]
    return RequestMalformed(channel=channel, client=source[0], reason=reason)
