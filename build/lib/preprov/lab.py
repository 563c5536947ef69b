"""A lab of network namespaces: a server and phones on one Linux bridge.

Used by the tests, the benchmarks and (later) `preprov demo`. Every host is a
network namespace whose `eth0` is one end of a veth pair; the other ends are
ports of a bridge that lives in a namespace of its own, so nothing touches
the host's interfaces. Addresses come from the benchmarking range
198.18.0.0/15 and the ULA range fd00::/8 only. `close()` deletes every
namespace it made (and with them their interfaces), and runs at exit too.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass, field

LAB_V4 = ipaddress.IPv4Network("198.18.0.0/15")
LAB_V6 = ipaddress.IPv6Network("fd00::/8")


class LabError(Exception):
    pass


def netns_unavailable() -> str | None:
    """Why this process cannot build a lab, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    probe = f"pp-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    r = subprocess.run(full, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(full)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


@dataclass
class Host:
    ns: str
    ipv4: ipaddress.IPv4Interface
    ipv6: ipaddress.IPv6Interface
    ifname: str = "eth0"

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*cmd, ns=self.ns, check=check)

    def prefix(self) -> list[str]:
        """Prepend to a command to run it inside this host."""
        return ["ip", "netns", "exec", self.ns]


@dataclass
class Lab:
    """`with Lab() as lab: srv = lab.host("srv"); phone = lab.host("p1")`."""

    index: int = field(default_factory=lambda: os.getpid() % 200 + 20)
    prefix: str = ""
    wide: bool = False  # a /16 (198.19.0.0/16) instead of a /24, for benchmarks with many clients
    hosts: list[Host] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)
    _ports: int = 0

    def __post_init__(self) -> None:
        self.prefix = self.prefix or f"pp{self.index}-"
        self.net4 = ipaddress.IPv4Network(
            "198.19.0.0/16" if self.wide else f"198.18.{self.index}.0/24"
        )
        self.net6 = ipaddress.IPv6Network(f"fd00:{self.index:x}::/64")
        assert self.net4.subnet_of(LAB_V4) and self.net6.subnet_of(LAB_V6)
        self.switch = self.prefix + "sw"

    def __enter__(self) -> Lab:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        atexit.register(self.close)
        self._netns(self.switch)
        run("ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0", ns=self.switch)
        run("ip", "link", "set", "br0", "up", ns=self.switch)

    def _netns(self, name: str) -> None:
        run("ip", "netns", "del", name, check=False)  # a leftover of a killed run
        run("ip", "netns", "add", name)
        self._made.append(name)
        run("ip", "link", "set", "lo", "up", ns=name)

    def host(self, name: str, addresses: bool = True) -> Host:
        """A new host on the bridge; `addresses=False` leaves eth0 without IPv4/IPv6
        global addresses (a phone that must get them by DHCP)."""
        ns = self.prefix + name
        self._netns(ns)
        return self.attach(ns, "eth0", addresses)

    def attach(self, ns: str, ifname: str, addresses: bool = True) -> Host:
        """Plug an existing namespace (another lab's host) into this bridge as `ifname`:
        a server with one interface on each of two segments."""
        self._ports += 1
        n = self._ports
        port = f"p{n}"
        run("ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
            ns=self.switch)  # fmt: skip
        run("ip", "link", "set", port, "master", "br0", "up", ns=self.switch)
        v4 = ipaddress.IPv4Interface(f"{self.net4[n]}/{self.net4.prefixlen}")
        v6 = ipaddress.IPv6Interface(f"{self.net6[n]}/{self.net6.prefixlen}")
        if addresses:
            run("ip", "addr", "add", str(v4), "dev", ifname, ns=ns)
            run("ip", "-6", "addr", "add", str(v6), "dev", ifname, "nodad", ns=ns)
        # no duplicate address detection: the link-local address is usable at once
        run("sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0", ns=ns, check=False)
        run("ip", "link", "set", ifname, "up", ns=ns)
        if ifname == "eth0":
            # multicast leaves by eth0, as on a phone whose default route is its LAN
            run("ip", "route", "add", "224.0.0.0/4", "dev", "eth0", ns=ns, check=False)
        h = Host(ns, v4, v6, ifname)
        self.hosts.append(h)
        return h

    def close(self) -> None:
        for name in reversed(self._made):
            pids = run("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                run("kill", "-9", pid, check=False)
            run("ip", "netns", "del", name, check=False)
        self._made.clear()
        atexit.unregister(self.close)
