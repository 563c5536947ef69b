"""What every protocol core hands back to its asyncio driver (STYLE.md §1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import Event

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
