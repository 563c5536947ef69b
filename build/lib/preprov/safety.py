"""Who may make the server send: allow-lists and per-source rate limits.

Shared by the channels that answer datagrams (SIP PnP now, DHCP next), so that
nobody can make the server send traffic at will to an address they choose.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class AllowList:
    """Empty lists allow everything of their kind."""

    macs: frozenset[str] = frozenset()
    ouis: frozenset[str] = frozenset()
    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def build(cls, macs: Iterable[str], ouis: Iterable[str], subnets: Iterable[str]) -> AllowList:
        return cls(
            frozenset(macs),
            frozenset(ouis),
            tuple(ipaddress.ip_network(s, strict=False) for s in subnets),
        )

    def why_not(self, mac: str | None, source: str) -> str | None:
        if self.subnets:
            try:
                addr = ipaddress.ip_address(source.split("%", 1)[0])
            except ValueError:
                return f"source {source} is not an IP address"
            if not any(addr in net for net in self.subnets):
                nets = ", ".join(str(n) for n in self.subnets)
                return f"source {source} is not in the allowed subnets ({nets})"
        if self.macs or self.ouis:
            if mac is None:
                return "no MAC to check against the allow-list"
            if mac not in self.macs and mac[:6] not in self.ouis:
                return f"MAC {mac} is not in the allow-list"
        return None


class RateLimiter:
    """A token bucket per source address: `burst` at once, `rate` a second after.

    At most `max_sources` buckets are kept (the least recently used go first), so
    a spray of spoofed sources costs memory only up to that bound.
    """

    def __init__(self, burst: float, rate: float, max_sources: int = 65536) -> None:
        self.burst = burst
        self.rate = rate
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._suppressed: dict[str, tuple[int, float]] = {}

    def allow(self, source: str, now: float) -> bool:
        b = self._buckets.get(source)
        if b is None:
            b = self._buckets[source] = [self.burst, now]
            if len(self._buckets) > self.max_sources:
                old, _ = self._buckets.popitem(last=False)
                self._suppressed.pop(old, None)
        else:
            self._buckets.move_to_end(source)
            # a clock that steps back (the DHCP cores get the wall clock) refills nothing
            b[0] = min(self.burst, b[0] + max(0.0, now - b[1]) * self.rate)
            b[1] = max(now, b[1])
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        return False

    def report(self, source: str, now: float, every: float = 1.0) -> int | None:
        """For a refused source: None while refusals are being counted silently, or the
        number suppressed since the last report once `every` seconds have passed."""
        count, since = self._suppressed.get(source, (0, -every))
        if now - since >= every:
            self._suppressed[source] = (0, now)
            return count
        self._suppressed[source] = (count + 1, since)
        return None
