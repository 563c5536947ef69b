"""What every protocol core hands back to its asyncio driver (docs/design.md §1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .events import Event, InternalError

Addr = tuple[str, int]


@dataclass(frozen=True)
class Send:
    """A datagram to send, and where; `via`: from the socket of that transfer (TFTP's
    transfer identifiers, RFC 1350 §4), made by the adapter when first named."""

    data: bytes
    addr: Addr
    via: int | None = None


@dataclass
class Output:
    """The datagrams to send and the events that happened, for one input; `closed`:
    transfers that ended, whose sockets the adapter closes; `if_lost`: what to answer
    instead when another server sharing the inventory claimed these addresses first."""

    sends: list[Send] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    if_lost: Callable[[frozenset[str]], Output] | None = None


def internal_error(channel: str, source: Addr, error: Exception) -> InternalError:
    """The event for an exception a protocol core raised on some input. Only the
    asyncio adapters catch it (so that no input takes a server down); the cores let
    it through, so that their tests and fuzzers see every crash."""
    reason = f"{type(error).__name__}: {error}"[:300]
    return InternalError(where=f"{channel} core, datagram from {source[0]}", reason=reason)
