"""Interfaces and their addresses.

Later channels add sockets here (multicast membership per interface,
SO_BINDTODEVICE, IP_PKTINFO): the protocol cores never touch them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import ifaddr


class InterfaceError(Exception):
    pass


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    ipv4: tuple[ipaddress.IPv4Interface, ...]
    ipv6: tuple[ipaddress.IPv6Interface, ...]  # global and ULA, not link-local
    ipv6_link_local: tuple[ipaddress.IPv6Address, ...]


def interfaces() -> dict[str, Interface]:
    out = {}
    for a in ifaddr.get_adapters():
        v4, v6, ll = [], [], []
        for ip in a.ips:
            if isinstance(ip.ip, str):
                v4.append(ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}"))
            else:
                addr = ipaddress.IPv6Address(ip.ip[0])
                if addr.is_link_local:
                    ll.append(addr)
                else:
                    v6.append(ipaddress.IPv6Interface(f"{addr}/{ip.network_prefix}"))
        out[a.name] = Interface(a.name, a.index or 0, tuple(v4), tuple(v6), tuple(ll))
    return out


def interface(name: str) -> Interface:
    found = interfaces()
    if name not in found:
        have = ", ".join(sorted(found)) or "none"
        raise InterfaceError(f"interface {name!r} does not exist (this host has: {have})")
    return found[name]
