"""The attacker of bench/hostile.py: run inside its namespace, it sends --count
datagrams from many addresses of the segment to a preprov server and counts
what comes back, per channel.

Mix: garbage to every port, SIP PnP SUBSCRIBEs with made-up MACs and Call-IDs
(multicast), DHCPv4 DISCOVER/REQUEST/DECLINE/RELEASE with made-up MACs
(broadcast), DHCPv6 SOLICITs with made-up DUIDs (multicast), TFTP read
requests that are never acknowledged. Prints one JSON line: bytes and
datagrams sent per channel, bytes received per channel.

    python bench/hostile_flood.py SERVER4 SERVER6 IFNAME COUNT RATE ADDR4... -- ADDR6...
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys
import threading
import time

PNP_GROUP = ("224.0.1.75", 5060)
DHCP6_GROUP = "ff02::1:2"


def subscribe(mac: str, call_id: str, src: str) -> bytes:
    return (
        f"SUBSCRIBE sip:MAC%3a{mac}@224.0.1.75 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src}:5060;branch=z9hG4bK{call_id};rport\r\n"
        f"From: <sip:MAC%3a{mac}@224.0.1.75>;tag={call_id}\r\n"
        f"To: <sip:MAC%3a{mac}@224.0.1.75>\r\nCall-ID: {call_id}@{src}\r\nCSeq: 1 SUBSCRIBE\r\n"
        'Event: ua-profile;profile-type="device";vender="Panasonic";model="KX-HDV130";'
        'version="01.000"\r\nExpires: 0\r\nAccept: application/url\r\n'
        f"Contact: <sip:{src}:5060>\r\nUser-Agent: Panasonic_KX-HDV130/01.000 ({mac.lower()})\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def dhcp4(kind: int, mac: bytes, xid: int, server: bytes, ip: bytes) -> bytes:
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4,
                       b"\0" * 4, b"\0" * 4, b"\0" * 4, mac + b"\0" * 10, b"", b"")  # fmt: skip
    opts = b"\x63\x82\x53\x63" + bytes([53, 1, kind]) + bytes([55, 4, 1, 3, 66, 160])
    if kind in (3, 4, 7):
        opts += bytes([54, 4]) + server + bytes([50, 4]) + ip
    return head + opts + b"\xff"


def solicit(duid_tail: bytes, xid: int) -> bytes:
    duid = b"\x00\x03\x00\x01" + duid_tail
    opts = struct.pack("!HH", 1, len(duid)) + duid  # client id
    opts += struct.pack("!HHIII", 3, 12, 1, 0, 0)  # IA_NA
    opts += struct.pack("!HHHH", 6, 4, 17, 23)  # ORO
    opts += struct.pack("!HHH", 8, 2, 0)  # elapsed time
    return bytes([1]) + xid.to_bytes(3, "big") + opts


def main() -> int:
    server4, server6, ifname, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rate = float(sys.argv[5])  # datagrams a second; 0: as fast as it can
    rest = sys.argv[6:]
    cut = rest.index("--")
    addrs4, addrs6 = rest[:cut], rest[cut + 1 :]
    rng = random.Random(9)
    ifindex = socket.if_nametoindex(ifname)
    socks4 = []
    for a in addrs4:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((a, 0))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(a))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        s.setblocking(False)
        socks4.append((a, s))
    socks6 = []
    for a in addrs6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind((a, 0))
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        s.setblocking(False)
        socks6.append(s)
    d4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    d4.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    d4.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    d4.bind(("0.0.0.0", 68))
    d4.setblocking(False)
    srv4 = socket.inet_aton(server4)
    net = server4.rsplit(".", 1)[0]

    # what comes back, counted from the wire: every frame from the server's addresses
    received = {"sip-pnp": 0, "dhcpv4": 0, "dhcpv6": 0, "tftp": 0, "other": 0}
    stop = threading.Event()

    def listen() -> None:
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        raw.bind((ifname, 0))
        raw.settimeout(0.2)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s6 = socket.inet_pton(socket.AF_INET6, server6)
        while not stop.is_set():
            try:
                frame, meta = raw.recvfrom(65536)
            except TimeoutError:
                continue
            if meta[2] == socket.PACKET_OUTGOING:
                continue
            eth = struct.unpack_from("!H", frame, 12)[0]
            if eth == 0x0800 and frame[23] == 17 and frame[26:30] == srv4:
                ihl = (frame[14] & 15) * 4
                sport = struct.unpack_from("!H", frame, 14 + ihl)[0]
                n = len(frame) - 14 - ihl - 8
            elif eth == 0x86DD and frame[20] == 17 and frame[22:38] == s6:
                sport = struct.unpack_from("!H", frame, 54)[0]
                n = len(frame) - 62
            else:
                continue
            ch = {5060: "sip-pnp", 67: "dhcpv4", 547: "dhcpv6"}.get(sport, "tftp")
            received[ch] += n

    th = threading.Thread(target=listen, daemon=True)
    th.start()
    sent = {"sip-pnp": 0, "dhcpv4": 0, "dhcpv6": 0, "tftp": 0}
    datagrams = dict.fromkeys(sent, 0)
    garbage = [os.urandom(rng.randint(1, 600)) for _ in range(512)]
    rrq = b"\x00\x01KX-HDV130.cfg\x00octet\x00"
    started = time.monotonic()
    for i in range(count):
        if rate and i % 100 == 0:
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        r = rng.random()
        a, s = socks4[i % len(socks4)]
        try:
            if r < 0.20:  # garbage, to a channel's port
                data = garbage[i % len(garbage)]
                which = i % 4
                if which == 0:
                    s.sendto(data, PNP_GROUP)
                    ch = "sip-pnp"
                elif which == 1:
                    d4.sendto(data, ("255.255.255.255", 67))
                    ch = "dhcpv4"
                elif which == 2 and socks6:
                    socks6[i % len(socks6)].sendto(data, (DHCP6_GROUP, 547, 0, ifindex))
                    ch = "dhcpv6"
                else:
                    s.sendto(data, (server4, 69))
                    ch = "tftp"
            elif r < 0.45:
                data = subscribe(f"{rng.getrandbits(48):012X}", f"{i:x}", a)
                s.sendto(data, PNP_GROUP)
                ch = "sip-pnp"
            elif r < 0.70:
                kind = rng.choice((1, 1, 1, 3, 4, 7))
                ip = socket.inet_aton(f"{net}.{rng.randint(128, 254)}")
                data = dhcp4(kind, os.urandom(6), i, srv4, ip)
                d4.sendto(data, ("255.255.255.255", 67))
                ch = "dhcpv4"
            elif r < 0.85 and socks6:
                data = solicit(os.urandom(6), i & 0xFFFFFF)
                socks6[i % len(socks6)].sendto(data, (DHCP6_GROUP, 547, 0, ifindex))
                ch = "dhcpv6"
            else:
                data = rrq
                s.sendto(data, (server4, 69))
                ch = "tftp"
        except (BlockingIOError, OSError):
            continue  # our own buffer is full: that datagram is not sent
        sent[ch] += len(data)
        datagrams[ch] += 1
    elapsed = time.monotonic() - started
    time.sleep(3.0)  # answers and resends still on their way
    stop.set()
    th.join()
    print(json.dumps({"seconds": round(elapsed, 1), "sent": sent, "datagrams": datagrams,
                      "received": received}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
