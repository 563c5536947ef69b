"""The simulated phone's asyncio driver: one UDP socket, one timer, an HTTP client."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

import aiohttp
from yarl import URL

from ..net import Interface, interface, udp_socket
from .core import Actions, PhoneCore, PhoneProfile, Report
from .tftp import tftp_get


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, phone: SimulatedPhone) -> None:
        self.phone = phone

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.phone.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass


def pnp_socket(ip: str, port: int) -> socket.socket:
    """Bound to the phone's address and SIP port; multicast leaves by that address
    with TTL 1, as the phone's does (docs/protocol.md §3)."""
    return udp_socket(
        ip, port,
        options=((socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip)),
                 (socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1),
                 (socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)),
    )  # fmt: skip


def dhcp_client_socket(ifname: str) -> socket.socket:
    """Port 68 on the wildcard address, pinned to the interface: it can broadcast from
    0.0.0.0 before the phone has an address, and hears the server's broadcasts."""
    return udp_socket("0.0.0.0", 68, ifname, ((socket.SOL_SOCKET, socket.SO_BROADCAST, 1),))


def dhcp6_client_socket(iface: Interface, port: int = 546) -> socket.socket:
    """UDP 546 on the wildcard address, pinned to the interface; multicast to
    ff02::1:2 leaves by it from the link-local address."""
    return udp_socket(
        "::", port, iface.name,
        ((socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, iface.index),
         (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)),
    )  # fmt: skip


class SimulatedPhone:
    def __init__(
        self, profile: PhoneProfile, interface: str, http_timeout: float = 5.0,
        cacert: str | None = None,
        dhcp6_port: int = 546,
        http_source: str | None = None,
    ) -> None:  # fmt: skip
        self.http_source = http_source  # the address HTTP connections leave from
        self.core = PhoneCore(profile)
        self.profile = profile
        self.interface = interface
        self.http_timeout = http_timeout
        self.cacert = cacert  # a CA to trust for https:// (the lab CA of preprov's HTTPS)
        # many phones in one namespace (preprov storm) cannot all hold port 546;
        # preprov's DHCPv6 server answers the port a request came from
        self.dhcp6_port = dhcp6_port
        self._transport: asyncio.DatagramTransport | None = None
        self._dhcp: asyncio.DatagramTransport | None = None
        self._dhcp6: asyncio.DatagramTransport | None = None
        self._configured: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._session: aiohttp.ClientSession | None = None
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, timeout: float = 60.0) -> Report:
        loop = asyncio.get_running_loop()
        if self.profile.ip_mode in ("ipv4", "dual") and self.profile.ip is None:
            # without an address the first thing the phone does is DHCPv4; with one, the
            # socket is opened only if it comes to DHCP (port 68 is one per namespace)
            await self._open_dhcp4()
        if self.profile.ip_mode in ("ipv6", "dual") and "dhcpv6-option-17" in self.profile.channels:
            sock6 = dhcp6_client_socket(interface(self.interface), self.dhcp6_port)
            self._dhcp6, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=sock6)
        await self._open_pnp()
        ssl_ctx = ssl.create_default_context(cafile=self.cacert) if self.cacert else None
        local = (self.http_source, 0) if self.http_source else None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx or True, local_addr=local),
            headers={"User-Agent": self.profile.user_agent},
            timeout=aiohttp.ClientTimeout(total=self.http_timeout),
        )
        try:
            self._apply(self.core.start(time.monotonic()))
            try:
                await asyncio.wait_for(self._done.wait(), timeout)
            except TimeoutError:
                self.core.give_up(time.monotonic(), f"gave up after {timeout:g} s")
        finally:
            for task in self._tasks:
                task.cancel()
            if self._timer is not None:
                self._timer.cancel()
            for transport in (self._transport, self._dhcp, self._dhcp6):
                if transport is not None:
                    transport.close()
            await self._session.close()
            for address in self._configured:
                await run_ip("addr", "del", address, "dev", self.interface)
        return self.core.report

    # -- feeding the core ---------------------------------------------------------

    def on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        self._apply(self.core.datagram_received(data, source, time.monotonic()))

    def _on_timer(self) -> None:
        self._timer = None
        self._apply(self.core.timer_expired(time.monotonic()))

    def _apply(self, actions: Actions) -> None:
        if actions.configure is not None:
            # the leased address goes on the interface before anything is fetched
            task = asyncio.get_running_loop().create_task(self._configure(actions))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        for s in actions.sends:
            self._send(s.data, s.addr)
        for f in actions.fetches:
            task = asyncio.get_running_loop().create_task(self._fetch(f.url))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        wake = self.core.next_timer()
        if wake is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, wake - time.monotonic()), self._on_timer
            )
        if self.core.done:
            self._done.set()

    async def _open_dhcp4(self) -> None:
        loop = asyncio.get_running_loop()
        sock = dhcp_client_socket(self.interface)
        self._dhcp, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=sock)

    async def _late_dhcp4(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._dhcp is None:
            try:
                await self._open_dhcp4()
            except OSError as e:
                self.core.give_up(time.monotonic(), f"DHCPv4: cannot open port 68: {e.strerror}")
                self._done.set()
                return
        self._send(data, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[1] == 67 and self._dhcp is None:
            task = asyncio.get_running_loop().create_task(self._late_dhcp4(data, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        transport = {67: self._dhcp, 547: self._dhcp6}.get(addr[1], self._transport)
        if transport is not None:
            transport.sendto(data, addr)

    async def _open_pnp(self) -> None:
        if (
            self._transport is None
            and self.core.ip is not None
            and ("sip-pnp" in self.profile.channels)
        ):
            loop = asyncio.get_running_loop()
            sock = pnp_socket(self.core.ip, self.profile.sip_port)
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _Proto(self), sock=sock
            )

    async def _configure(self, actions: Actions) -> None:
        assert actions.configure is not None
        extra = ["nodad"] if ":" in actions.configure else []
        await run_ip("addr", "add", actions.configure, "dev", self.interface, *extra)
        self._configured.append(actions.configure)
        actions.configure = None
        await self._open_pnp()
        self._apply(actions)

    async def _fetch(self, url: str) -> None:
        assert self._session is not None
        status: int | None = None
        body = b""
        error: str | None = None
        try:
            status, body = await self._get(url)
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        self._apply(self.core.fetch_done(url, status, body, error, time.monotonic()))

    async def _get(self, url: str) -> tuple[int, bytes]:
        """GET over HTTP(S), answering a Basic or Digest challenge with the URL's
        user:password (which one Panasonic's client answers is open: docs/protocol.md
        §6); or a TFTP read."""
        assert self._session is not None
        target = URL(url)
        if target.scheme == "tftp":
            return await tftp_get(target.host or "", target.port or 69, target.path.lstrip("/"))
        login, password = target.user, target.password or ""
        plain = target.with_user(None)
        async with self._session.get(plain) as r:
            if r.status != 401 or login is None:
                return r.status, await r.read()
            challenges = r.headers.getall("WWW-Authenticate", [])
        if any(c.lower().startswith("digest") for c in challenges):
            digest = aiohttp.DigestAuthMiddleware(login, password)
            async with self._session.get(plain, middlewares=(digest,)) as r:
                return r.status, await r.read()
        async with self._session.get(plain, auth=aiohttp.BasicAuth(login, password)) as r:
            return r.status, await r.read()


async def run_ip(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {err.decode().strip()}")
