"""`preprov serve`: start the enabled services, stop on SIGINT/SIGTERM, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import ipaddress
import logging
import resource
import signal
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .checks import ChecksFailed, errors, find_problems
from .config import Allow, Config, ConfigError
from .dhcp4.leases import Lease, LeaseTable, Subnet, default_subnet
from .dhcp4.server import Dhcp4Policy, Dhcp4Server
from .dhcp4.transport import Dhcp4Endpoint
from .dhcp6.server import Binding, Dhcp6Policy, Dhcp6Server, Leases6, Pool6, default_pool
from .dhcp6.transport import Dhcp6Endpoint
from .events import (
    ConfigRejected,
    ConfigReloaded,
    EventBus,
    InventoryRecovered,
    InventoryUnavailable,
    ServerStarted,
    ServerStopping,
    TemplateRejected,
)
from .ident import Directory
from .inventory.store import Budget, Recorder, Store, StoreUnavailable, open_store
from .log import LogSink, flush_logs, setup_logging
from .net import Interface
from .runtime import Runtime, SetupError, build_runtime
from .safety import AllowList, RateLimiter
from .sip.pnp import PnpPolicy, PnpResponder
from .sip.transport import PnpEndpoint
from .tftp.core import TftpPolicy, TransferSlots
from .tftp.transport import TftpEndpoint
from .web.admin import Metrics, make_admin_app
from .web.dashboard import Stream
from .web.httpd import FileServer
from .web.tls import server_context

Loader = Callable[[], tuple[Config, str | None]]

TRIM_EVERY = 30.0  # seconds
REMEMBER_EVENTS = 100_000  # the latest events read again at start for the device directory
DESCRIPTORS_SPARE = 1024  # beside the caps: listeners, the store, the writer's pipes, PnP


def descriptors_wanted(config: Config) -> int:
    """What the configured caps may hold open at once: HTTP(S) connections, TFTP
    transfers (a socket each, and the large files they read), and the rest."""
    http = config.http.max_connections if config.http.enabled else 0
    tftp = 2 * config.tftp.max_transfers if config.tftp.enabled else 0
    return http + tftp + DESCRIPTORS_SPARE


def raise_descriptor_limit(wanted: int) -> str | None:
    """The soft limit on open descriptors raised to `wanted`, as far as the hard limit
    allows: a service's default soft limit (1024 under systemd and in most shells) is
    below the server's own caps (4,096 HTTP connections, 256 TFTP transfers), and past
    it new connections fail with EMFILE while the caps say there is room. A note when
    the hard limit is lower than what the caps may use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    target = wanted if hard == infinite else min(wanted, hard)
    if soft != infinite and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if hard != infinite and hard < wanted:
        return (f"descriptors: the hard limit is {hard}, below the {wanted} the caps may hold "
                "open (http.max_connections, 2 x tftp.max_transfers, 1024 more): past it new "
                "connections and transfers are refused; raise it (LimitNOFILE=, ulimit -Hn) "
                "or lower the caps")
    return None


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim, or None elsewhere. Python frees the memory of a flood's
    transactions, but glibc keeps the freed heap for itself; trimming gives it
    back to the system, so memory returns towards its baseline after a flood."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


def limiter(
    burst: float, rate: float, old: RateLimiter | None, sources: int = 65536
) -> RateLimiter:
    """A token bucket per source; a reload keeps the old one's buckets when its figures
    are the same."""
    if old is not None and (old.burst, old.rate, old.max_sources) == (burst, rate, sources):
        return old
    return RateLimiter(burst, rate, sources)


def segment(allow: Allow, iface: Interface, ipv6: bool = False) -> AllowList:
    """Who a datagram channel answers: `allow`, by default phones on this segment only
    (the interface's own subnets)."""
    if allow.subnets is not None:
        subnets = [str(n) for n in allow.subnets]
    else:
        subnets = [str(i.network) for i in iface.ipv4]
        subnets += [str(i.network) for i in iface.ipv6] if ipv6 else []
    return AllowList.build(allow.mac, allow.oui, subnets)


def pnp_policy(
    rt: Runtime, iface: Interface, old: PnpPolicy | None = None,
    holder: Callable[[str | None], str | None] | None = None,
) -> PnpPolicy:  # fmt: skip
    c = rt.config.pnp
    per_second = c.max_answers_per_second
    return PnpPolicy(
        holder=holder or (old.holder if old else lambda _a: None),
        notify_forms={k: v.pnp_notify for k, v in rt.config.vendors.items() if v.pnp_notify},
        rules=rt.site_for(interface=iface.name).rules,
        allow=segment(c.allow, iface),
        limiter=limiter(c.rate_burst, c.rate_per_second, old.limiter if old else None),
        body=c.body,
        max_transactions=c.max_transactions,
        max_answered=c.max_answered,
        answers=limiter(per_second, per_second, old.answers if old else None, 1),
    )


def tftp_policy(
    rt: Runtime, iface: Interface, slots: TransferSlots, old: TftpPolicy | None = None
) -> TftpPolicy:
    c = rt.config.tftp
    slots.total = c.max_transfers
    return TftpPolicy(
        allow=segment(c.allow, iface, ipv6=True),
        limiter=limiter(c.rate_burst, c.rate_per_second, old.limiter if old else None),
        slots=slots,
        max_per_source=c.max_transfers_per_source,
        blksize_max=c.blksize_max,
        timeout=c.timeout,
        retries=c.retries,
    )


def pnp_local_address(rt: Runtime, iface: Interface) -> str | None:
    mine = [str(i.ip) for i in iface.ipv4]
    configured = str(rt.config.server.address) if rt.config.server.address else None
    return configured if configured in mine else (mine[0] if mine else None)


def dhcp4_subnets(rt: Runtime) -> list[Subnet]:
    c = rt.config.dhcp4
    own = {i.ip for iface in rt.interfaces for i in iface.ipv4}
    if c.subnets is None:
        return [default_subnet(iface.ipv4[0]) for iface in rt.interfaces if iface.ipv4]
    out = []
    for sn in c.subnets:
        router = sn.router or next((a for a in own if a in sn.subnet), None)
        out.append(
            Subnet(sn.subnet, sn.pool[0], sn.pool[1], router, tuple(sn.dns),
                   frozenset(a for a in own if a in sn.subnet))
        )  # fmt: skip
    return out


def dhcp4_policy(rt: Runtime, iface: Interface, table: LeaseTable, server_ip: str) -> Dhcp4Policy:
    c = rt.config.dhcp4
    ip = ipaddress.IPv4Address(server_ip)
    return Dhcp4Policy(
        server_ip=ip,
        rules=rt.site_for(interface=iface.name).rules,
        local=table.subnet_of(ip),
        options=c.options,
        lease_time=c.lease_time,
        offer_hold=c.offer_hold,
        quarantine=c.decline_quarantine,
        allow=AllowList.build(c.allow.mac, c.allow.oui, [str(n) for n in c.allow.subnets or []]),
        dry_run=c.dry_run,
        vendor_forms={k: v.dhcp4 for k, v in rt.config.vendors.items() if v.dhcp4 is not None},
    )


def dhcp6_pools(rt: Runtime) -> list[Pool6]:
    c = rt.config.dhcp6
    own = {i.ip for iface in rt.interfaces for i in iface.ipv6}
    if c.subnets is None:
        return [default_pool(iface.ipv6[0]) for iface in rt.interfaces if iface.ipv6]
    return [
        Pool6(sn.prefix, sn.pool[0], sn.pool[1], frozenset(a for a in own if a in sn.prefix))
        for sn in c.subnets
    ]


def dhcp6_policy(
    rt: Runtime, iface: Interface, leases: Leases6, duid: bytes, old: Dhcp6Policy | None = None
) -> Dhcp6Policy:
    c = rt.config.dhcp6
    own = iface.ipv6[0].ip if iface.ipv6 else None
    return Dhcp6Policy(
        duid=duid,
        rules=rt.site_for(interface=iface.name).rules6,
        local=leases.pool_of(own) if own else None,
        enterprise=c.enterprise,
        suboption=c.suboption,
        always_send=c.always_send,
        preferred=c.preferred_lifetime,
        valid=c.valid_lifetime,
        rapid_commit=c.rapid_commit,
        offer_hold=c.offer_hold,
        allow=AllowList.build(c.allow.mac, c.allow.oui, [str(n) for n in c.allow.subnets or []]),
        dry_run=c.dry_run,
        limiter=limiter(c.rate_burst, c.rate_per_second, old.limiter if old else None),
    )


def server_duid(state_dir: Path) -> bytes:
    """DUID-UUID (RFC 6355), made once and kept in the state directory (RFC 8415 §11)."""
    path = state_dir / "server-duid6"
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    duid = b"\x00\x04" + uuid.uuid4().bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(duid.hex() + "\n")
    return duid


def listen_addresses(rt: Runtime) -> list[str]:
    if rt.config.http.listen is not None:
        return [str(a) for a in rt.config.http.listen]
    out = [str(i.ip) for iface in rt.interfaces for i in iface.ipv4]
    out += [str(i.ip) for iface in rt.interfaces for i in iface.ipv6]
    return out or ["127.0.0.1"]


def plan(rt: Runtime) -> list[str]:
    """What `serve` will run with this runtime: interfaces, listeners, each service on or
    off and why. `check` prints it, so a file that is valid but serves nothing says so."""
    c = rt.config
    out = []
    if rt.interfaces:
        for iface in rt.interfaces:
            addrs = ", ".join(str(a) for a in iface.ipv4 + iface.ipv6) or "no address"
            out.append(f"interface {iface.name}: {addrs}")
    else:
        out.append(
            "interfaces: none (loopback only: give --interface or server.interfaces "
            "for SIP PnP, DHCP and TFTP)"
        )

    def hosts(port: int) -> str:
        return " ".join(
            f"{'[' + a + ']' if ':' in a else a}:{port}" for a in listen_addresses(rt)
        )

    out.append(f"http: {hosts(c.http.port)}" if c.http.enabled else "http: off (http.enabled)")
    if c.http.enabled and c.https.enabled:
        out.append(f"https: {hosts(c.https.port)}")
    names = [i.name for i in rt.interfaces]
    pools = ", ".join(f"{s.first}-{s.last}" for s in dhcp4_subnets(rt))
    for name, section, on, extra in (
        ("sip-pnp", "pnp", c.pnp.enabled, f" ({c.pnp.group}:{c.pnp.port})"),
        ("dhcpv4", "dhcp4", c.dhcp4.enabled, f" (port {c.dhcp4.port}, pools {pools})"),
        ("dhcpv6", "dhcp6", c.dhcp6.enabled, f" (port {c.dhcp6.port})"),
        ("tftp", "tftp", c.tftp.enabled, f" (port {c.tftp.port})"),
    ):
        if not on:
            out.append(f"{name}: off ({section}.enabled: false)")
        elif not names:
            out.append(f"{name}: off (no interface)")
        else:
            out.append(f"{name}: on {', '.join(names)}{extra}")
    if c.inventory.database:
        from .inventory.postgres import redact

        out.append(f"inventory: PostgreSQL {redact(c.inventory.database)}, shared, this server "
                   f"named {c.server.name or socket.gethostname()}")  # fmt: skip
    else:
        out.append(f"inventory: SQLite {Path(c.server.state_dir) / 'preprov.db'}")
    if c.admin.enabled:
        token = "token set" if c.admin.token else "no token: changes refused"
        listen = " ".join(f"{a}:{c.admin.port}" for a in c.admin.listen)
        out.append(f"admin: {listen} ({token})")
    else:
        out.append("admin: off (admin.enabled)")
    return out


class Server:
    def __init__(self, load: Loader) -> None:
        self.load = load
        self.bus = EventBus()
        self.runtime: Runtime | None = None
        self.store: Store | None = None
        self.recorder: Recorder | None = None
        self.http: FileServer | None = None
        self.pnp: list[PnpEndpoint] = []
        self.dhcp4: list[Dhcp4Endpoint] = []
        self.leases4: LeaseTable | None = None
        self.leases6: Leases6 | None = None
        self.name = ""
        self.dhcp6: list[Dhcp6Endpoint] = []
        self.tftp: list[TftpEndpoint] = []
        self.metrics = Metrics()
        self.bus.subscribe(self.metrics)
        self.stream = Stream()
        self.bus.subscribe(self.stream)
        self.directory = Directory()  # what each device said, who holds which address
        self.bus.subscribe(self.directory)
        self.admin: web.AppRunner | None = None
        self.log = LogSink()
        self.listening: list[str] = []
        self.services: list[str] = []
        self.warnings: list[str] = []  # what `check` warns of in the configuration
        self.started = time.time()
        self._stop = asyncio.Event()
        self._trim: Callable[[], object] | None = None
        self._remembering: asyncio.Future[None] | None = None

    def observer(self, channel: str) -> Callable[[float], None]:
        """What a transport calls with the seconds from a request to its answer:
        the metrics' histogram and the log's once-a-second summary."""
        histogram = self.metrics.observer(channel)
        log = self.log

        def observe(seconds: float) -> None:
            histogram(seconds)
            log.observe(channel, seconds)

        return observe

    def current(self) -> Runtime:
        assert self.runtime is not None
        return self.runtime

    def _runtime(self, config: Config, file: str | None) -> Runtime:
        """A runtime whose rules complete a request's facts with the device's record."""
        rt = build_runtime(config, file)
        problems = find_problems(rt)  # what `preprov check` reports
        if errors(problems):
            raise ChecksFailed(errors(problems))
        self.warnings = [p.render() for p in problems]
        for site in rt.sites:
            site.rules.known = site.rules6.known = self.directory.known
        rt.templates.on_problem = lambda why: self.bus.emit(TemplateRejected(reason=why))
        return rt

    async def start(self) -> None:
        config, file = self.load()
        rt = self._runtime(config, file)
        setup_logging(config.log.format, config.log.level)
        self.log = LogSink(config.log.format, config.log.level)
        self.bus.subscribe(self.log)
        self.runtime = rt
        state = config.server.state_dir
        inv = config.inventory
        budget = Budget(int(inv.max_bytes), inv.retention.max_age_days * 86400.0,
                        inv.retention.max_events)  # fmt: skip
        self.name = config.server.name or socket.gethostname()
        self.store = open_store(
            inv.database, Path(state), server=self.name, synchronous=inv.synchronous,
            budget=budget, boot_gap=inv.new_boot_after, background=True,
        )  # fmt: skip
        await self.store.open()
        self.recorder = Recorder(self.store)
        self.recorder.on_state = self._inventory_state
        self.bus.subscribe_durable(self.recorder)
        self.store.on_leases = self._learn_leases
        self.store.on_change = self.stream.changed_elsewhere
        self.store.on_registered = self.recorder.registered_elsewhere
        self.store.on_told = self.directory.told_elsewhere
        now = time.time()
        for x in self.store.leases():  # the leases held before a restart
            if x["state"] == "bound" and x["expires"] > now and x["mac"]:
                self.directory.bind(x["ip"], x["mac"])
        services = []
        limit_note = raise_descriptor_limit(descriptors_wanted(config))
        if config.http.enabled:
            recorder, directory = self.recorder, self.directory
            self.http = FileServer(
                self.current, self.bus, recorder.registered, self.observer("http"),
                directory.holder,
                version=lambda: (directory.version, recorder.registered_version),
            )  # fmt: skip
            for addr in listen_addresses(rt):
                await self.http.listen(addr, config.http.port)
                host = f"[{addr}]" if ":" in addr else addr
                self.listening.append(f"http://{host}:{config.http.port}/")
            services.append("http")
            if config.https.enabled:
                names = [*listen_addresses(rt), *config.https.names]
                ctx = server_context(Path(config.server.state_dir), names)
                for addr in listen_addresses(rt):
                    await self.http.listen(addr, config.https.port, ssl=ctx)
                    host = f"[{addr}]" if ":" in addr else addr
                    self.listening.append(f"https://{host}:{config.https.port}/")
                services.append("https")
        notes = []
        if config.pnp.enabled:
            if not rt.interfaces:
                notes.append("sip-pnp off: it needs --interface (a phone-facing interface)")
            for iface in rt.interfaces:
                pnp_addr = pnp_local_address(rt, iface)
                if pnp_addr is None:
                    notes.append(f"sip-pnp off on {iface.name}: it has no IPv4 address")
                    continue
                local = (pnp_addr, config.pnp.port)
                responder = PnpResponder(local, pnp_policy(rt, iface, holder=self.directory.holder))
                ep = PnpEndpoint(iface, local, str(config.pnp.group), responder, self.bus)
                await ep.start()
                self.pnp.append(ep)
                self.listening.append(
                    f"sip-pnp://{config.pnp.group}:{config.pnp.port}%{iface.name} (from {pnp_addr})"
                )
            if self.pnp:
                services.append("sip-pnp")
        if config.dhcp4.enabled:
            if not rt.interfaces:
                notes.append("dhcpv4 off: it needs --interface (a phone-facing interface)")
            else:
                await self._start_dhcp4(rt, notes)
                if self.dhcp4:
                    services.append("dhcpv4")
        if config.admin.enabled:
            self.admin = web.AppRunner(
                make_admin_app(self, self.metrics, self.stream),
                access_log=None,
                handle_signals=False,
            )
            await self.admin.setup()
            for a in config.admin.listen:
                site = web.TCPSite(self.admin, str(a), config.admin.port, reuse_address=True)
                await site.start()
            for bound in self.admin.addresses:
                host = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
                self.listening.append(f"admin http://{host}:{bound[1]}/api/ /metrics")
            services.append("admin")
        if config.tftp.enabled:
            if not rt.interfaces:
                notes.append("tftp off: it needs --interface (a phone-facing interface)")
            slots = TransferSlots(config.tftp.max_transfers)
            for iface in rt.interfaces:
                # one listener per family: the interface's IPv4 address, its first IPv6 one
                v4 = pnp_local_address(rt, iface)
                v6 = str(iface.ipv6[0].ip) if iface.ipv6 else None
                for tftp_addr in [a for a in (v4, v6) if a is not None]:
                    listener = TftpEndpoint(
                        iface, tftp_addr, self.current, self.bus, self.recorder.registered,
                        tftp_policy(rt, iface, slots), self.directory.holder,
                    )  # fmt: skip
                    await listener.start(config.tftp.port)
                    self.tftp.append(listener)
                    host = f"[{tftp_addr}]" if ":" in tftp_addr else tftp_addr
                    self.listening.append(f"tftp://{host}:{config.tftp.port}/ (on {iface.name})")
            if self.tftp:
                services.append("tftp")
        if config.dhcp6.enabled:
            if not rt.interfaces:
                notes.append("dhcpv6 off: it needs --interface (a phone-facing interface)")
            else:
                await self._start_dhcp6(rt, notes)
                if self.dhcp6:
                    services.append("dhcpv6")
        self.services = services
        self.bus.emit(
            ServerStarted(
                services=tuple(services),
                listening=tuple(self.listening),
                server_address=rt.server_address,
                templates=str(rt.templates.root),
                state_dir=str(Path(state).resolve()),
                config=file,
                notes=(*notes, *([limit_note] if limit_note else []), *self.warnings),
            )
        )
        await self.bus.settled()
        # What was made to start (modules, configuration, the leases loaded) lives as long
        # as the process: out of the collector's sight, so its full collections walk only
        # what came since (measured under HTTP load: the longest pause 37 ms, then 14).
        gc.freeze()
        # what devices told before a restart (option 60, relay, model): learnt again in
        # the reader thread, so a rule on them serves a phone's next fetch at once
        self._remembering = asyncio.ensure_future(self._remember())
        self._trim = _malloc_trim()
        if self._trim is not None:
            asyncio.get_running_loop().call_later(TRIM_EVERY, self._release_memory)

    def _inventory_state(self, down: StoreUnavailable | None) -> None:
        """The shared database went away or came back: an event, a metric."""
        self.metrics.inventory_up.set(0 if down else 1)
        if down is not None:
            self.bus.emit(InventoryUnavailable(reason=str(down)))
        else:
            self.bus.emit(InventoryRecovered(reason="the inventory's database answers again"))

    def _learn_leases(self, leases: list[dict[str, Any]]) -> None:
        """Leases another server sharing the inventory bound: not offered here."""
        for x in leases:
            if ":" in x["ip"]:
                if self.leases6 is not None:
                    self.leases6.learn(ipaddress.IPv6Address(x["ip"]), x["client_id"], x["mac"],
                                       x["state"], x["expires"])  # fmt: skip
            elif self.leases4 is not None:
                self.leases4.learn(ipaddress.IPv4Address(x["ip"]), x["client_id"], x["mac"],
                                   x["state"], x["expires"])  # fmt: skip
            if x["state"] == "bound" and x["mac"]:
                self.directory.bind(x["ip"], x["mac"])

    async def _remember(self) -> None:
        assert self.store is not None
        try:
            history = await self.store.read(lambda r: r.recent_facts(REMEMBER_EVENTS))
        except Exception as e:  # the inventory unreadable now: learnt again as phones ask
            logging.getLogger("preprov").warning("devices' facts not read at start: %s", e)
            return
        self.directory.remember(history)

    def _release_memory(self) -> None:
        if self._trim is not None and not self._stop.is_set():
            self._trim()
            asyncio.get_running_loop().call_later(TRIM_EVERY, self._release_memory)

    async def _start_dhcp4(self, rt: Runtime, notes: list[str]) -> None:
        assert self.store is not None
        c = rt.config.dhcp4
        table = LeaseTable(dhcp4_subnets(rt), {r.mac: r.ip for r in c.reservations})
        now = time.time()
        table.load(
            [
                Lease(ipaddress.IPv4Address(x["ip"]), x["client_id"], x["mac"], x["state"],
                      x["expires"], x["hostname"])
                for x in self.store.leases()
                if x["expires"] > now and x["state"] in ("bound", "declined") and ":" not in x["ip"]
            ]
        )  # fmt: skip
        self.leases4 = table
        if self.store.shared:
            # servers sharing one inventory start their pool walks apart: fewer offers of
            # one address to two clients at once (the claim in the database decides anyway)
            for sn in table.subnets:
                sn._cursor = zlib.crc32(self.name.encode()) % sn.size
        for iface in rt.interfaces:
            addr = pnp_local_address(rt, iface)
            if addr is None:
                notes.append(f"dhcpv4 off on {iface.name}: it has no IPv4 address")
                continue
            policy = dhcp4_policy(rt, iface, table, addr)
            if policy.local is None:
                notes.append(f"dhcpv4 on {iface.name}: no subnet of dhcp4.subnets holds {addr}")
            ep = Dhcp4Endpoint(iface, c.port, Dhcp4Server(policy, table), self.bus)
            ep.observe = self.observer("dhcpv4")
            await ep.start()
            self.dhcp4.append(ep)
            pools = ", ".join(f"{sn.first}-{sn.last}" for sn in table.subnets)
            self.listening.append(f"dhcpv4://0.0.0.0:{c.port}%{iface.name} (pools {pools})")

    async def _start_dhcp6(self, rt: Runtime, notes: list[str]) -> None:
        assert self.store is not None
        c = rt.config.dhcp6
        leases = self.leases6 = Leases6(dhcp6_pools(rt))
        if self.store.shared:  # as for DHCPv4: servers on one inventory start apart
            for pool in leases.pools:
                pool.cursor = zlib.crc32(self.name.encode()) % pool.size
        now = time.time()
        leases.load(
            [
                Binding(ipaddress.IPv6Address(x["ip"]), x["client_id"], x["mac"], x["state"],
                        x["expires"])
                for x in self.store.leases()
                if ":" in x["ip"] and x["expires"] > now and x["state"] in ("bound", "declined")
            ]
        )  # fmt: skip
        duid = server_duid(Path(rt.config.server.state_dir))
        for iface in rt.interfaces:
            if not iface.ipv6 and c.subnets is None:
                notes.append(f"dhcpv6 off on {iface.name}: it has no global or ULA IPv6 address")
                continue
            ep = Dhcp6Endpoint(
                iface, c.port, Dhcp6Server(dhcp6_policy(rt, iface, leases, duid), leases), self.bus
            )
            ep.observe = self.observer("dhcpv6")
            await ep.start()
            self.dhcp6.append(ep)
            pools = ", ".join(f"{p.first}-{p.last}" for p in leases.pools)
            self.listening.append(f"dhcpv6://[::]:{c.port}%{iface.name} (pools {pools})")

    def reload(self) -> list[dict[str, Any]]:
        """Re-read the configuration; keep the old one when the new one is bad. Returns
        the problems that refused it (file, line, key, reason), none when it was taken."""
        old = self.current()
        try:
            config, file = self.load()
            rt = self._runtime(config, file)
        except ConfigError as e:
            self.bus.emit(ConfigRejected(config=old.config_file, reason=str(e)))
            return [{"file": e.file, "line": line, "key": key, "reason": reason}
                    for key, reason, line in e.problems]  # fmt: skip
        except ChecksFailed as e:
            self.bus.emit(ConfigRejected(config=old.config_file, reason=str(e)))
            return [p.as_dict() for p in e.problems]
        except SetupError as e:
            self.bus.emit(ConfigRejected(config=old.config_file, reason=str(e)))
            key, _, reason = str(e).partition(": ")
            return [{"file": old.config_file, "line": None, "key": key, "reason": reason}]
        notes = []
        if (
            listen_addresses(rt) != listen_addresses(old)
            or config.http.port != old.config.http.port
        ):
            notes.append("http listener unchanged: a new address or port takes a restart")
        if config.server.state_dir != old.config.server.state_dir:
            notes.append("state_dir unchanged: a new state directory takes a restart")
        if rt.auth.realm == old.auth.realm:
            rt.auth = old.auth  # nonces already issued, and their counts, stay valid
        self.runtime = rt
        for ep in self.pnp:
            ep.responder.policy = pnp_policy(rt, ep.iface, ep.responder.policy)
        for d in self.dhcp4:
            server_ip = str(d.server.policy.server_ip)
            d.server.policy = dhcp4_policy(rt, d.iface, d.server.leases, server_ip)
        for d6 in self.dhcp6:
            old6 = d6.server.policy
            d6.server.policy = dhcp6_policy(rt, d6.iface, d6.server.leases, old6.duid, old6)
        for t in self.tftp:
            old_tftp = t.core.policy
            t.core.policy = tftp_policy(rt, t.iface, old_tftp.slots, old_tftp)
        self.bus.emit(ConfigReloaded(config=file, notes=(*notes, *self.warnings)))
        return []

    def request_stop(self, signame: str) -> None:
        self.bus.emit(ServerStopping(signal=signame))
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # before start: a stop asked while it starts (its listeners already answer) is
        # kept, and the server stops once started, cleanly
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        hup: list[int] = []  # a reload asked while it starts: done once started
        loop.add_signal_handler(signal.SIGHUP, hup.append, 1)
        await self.start()
        loop.add_signal_handler(signal.SIGHUP, self.reload)  # problems are logged
        if hup:
            self.reload()
        try:
            await self._stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._remembering is not None and not self._remembering.done():
            self._remembering.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._remembering
        for ep in self.pnp:
            ep.close()
        for d in self.dhcp4:
            d.close()
        for d6 in self.dhcp6:
            d6.close()
        for tl in self.tftp:
            tl.close()
        if self.http is not None:
            await self.http.close()
        if self.admin is not None:
            self.stream.end()
            await self.admin.cleanup()
        if self.recorder is not None:
            await self.recorder.drain()
        self.log.close()
        flush_logs()
        if self.store is not None:
            await self.store.aclose()
