"""Interfaces, their addresses, and the sockets the datagram channels need
(multicast membership per interface, SO_BINDTODEVICE): the protocol cores
never touch a socket."""

from __future__ import annotations

import ipaddress
import socket
import struct
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


# A boot storm arrives in bursts: room for them in the socket's queue.
RECEIVE_BUFFER = 4 * 1024 * 1024


def big_receive_buffer(s: socket.socket) -> None:
    try:  # as root, past net.core.rmem_max
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), RECEIVE_BUFFER)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


# Linux socket options the socket module does not always name.
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)


SocketOption = tuple[int, int, int | bytes]


def udp_socket(
    address: str,
    port: int,
    device: str | None = None,
    options: tuple[SocketOption, ...] = (),
    big_buffer: bool = False,
) -> socket.socket:
    """The one place a UDP socket is made: non-blocking, SO_REUSEADDR, IPv6-only
    for an IPv6 address, pinned to `device` (SO_BINDTODEVICE: root or
    CAP_NET_RAW) if given, with `options` (level, name, value) set before bind.
    The socket is closed if any step fails."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if device is not None:
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
        if big_buffer:
            big_receive_buffer(s)
        for level, name, value in options:
            s.setsockopt(level, name, value)
        s.bind((address, port))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def join4(group: str, iface: Interface) -> SocketOption:
    """Membership of an IPv4 group on this interface alone."""
    mreqn = struct.pack("4s4si", socket.inet_aton(group), socket.inet_aton("0.0.0.0"), iface.index)
    return (socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)


def join6(group: str, iface: Interface) -> SocketOption:
    """Membership of an IPv6 group on this interface alone."""
    mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", iface.index)
    return (socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)


def multicast_listener(iface: Interface, group: str, port: int) -> socket.socket:
    """A UDP socket that hears `group`:`port` on this interface only.

    Bound to the group address (so it hears no unicast and no other group),
    pinned to the device, and a member of the group on this interface alone:
    one socket per interface, so a server with several interfaces joins on
    each (docs/protocol.md §3: joining on one interface only is a known bug
    elsewhere). Needs root or CAP_NET_RAW for SO_BINDTODEVICE.
    """
    return udp_socket(
        group, port, iface.name, big_buffer=True,
        options=((socket.SOL_SOCKET, socket.SO_REUSEPORT, 1),
                 (socket.IPPROTO_IP, IP_MULTICAST_ALL, 0), join4(group, iface)),
    )  # fmt: skip


def unicast_socket(address: str, port: int, iface: Interface | None = None) -> socket.socket:
    """A UDP socket bound to one of the interface's own addresses: what the server
    sends from, and where answers to what it sent come back."""
    return udp_socket(address, port, iface.name if iface else None, big_buffer=True)
