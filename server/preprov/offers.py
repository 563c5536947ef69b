"""Addresses offered and not yet requested, oldest first: the DHCPv4 lease table's
and the DHCPv6 bindings' (pure state, no I/O).

An offer binds nothing (RFC 2131 §4.3.1, RFC 8415 §18.3.1). Offers never
requested are forgotten once they expire, so a flood of DISCOVERs or SOLICITs
from made-up clients leaves no objects behind; when a pool is used up, the
oldest one is taken back for the next client, so such a flood cannot starve the
phones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class Held(Protocol):
    """A DHCPv4 lease or a DHCPv6 binding, as far as offers go."""

    client: str
    state: str
    expires: float


K = TypeVar("K", bound=Hashable)  # an address
V = TypeVar("V", bound=Held)


class Offers(Generic[K, V]):
    def __init__(self) -> None:
        self._by_ip: OrderedDict[K, V] = OrderedDict()

    def note(self, ip: K, held: V) -> None:
        """Whatever the table now holds for `ip`: kept here while it is an offer."""
        if held.state == "offered":
            self._by_ip[ip] = held
            self._by_ip.move_to_end(ip)
        else:
            self._by_ip.pop(ip, None)

    def expire(self, now: float, by_ip: dict[K, V], by_client: dict[str, V]) -> list[K]:
        """Forget, from the table too, the offers that expired, oldest first; their
        addresses (free again)."""
        freed: list[K] = []
        while self._by_ip:
            ip, held = next(iter(self._by_ip.items()))
            if held.expires > now:
                break
            del self._by_ip[ip]
            if by_ip.get(ip) is held:
                del by_ip[ip]
                freed.append(ip)
            if by_client.get(held.client) is held:
                del by_client[held.client]
        return freed

    def take_back(
        self, client: str, fits: Callable[[K], bool], by_client: dict[str, V]
    ) -> tuple[K, V] | None:
        """The oldest offer to another client whose address `fits`, no longer that
        client's (the caller offers the address anew), or None."""
        for ip, held in self._by_ip.items():
            if held.client != client and fits(ip):
                if by_client.get(held.client) is held:
                    del by_client[held.client]
                return ip, held
        return None
