"""What the running server serves by: built from a Config, swapped whole on reload.

Building a Runtime is where everything the configuration points at is read
and checked (templates, variables, interfaces), so a bad reload is refused
before anything changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .config import Config
from .files.templates import TemplateSet
from .files.variables import DeviceVariables, load_variables
from .net import Interface, interface
from .rules import RuleSet
from .web.auth import Authenticator


class SetupError(Exception):
    """The configuration is valid but something it points at is not usable."""


@dataclass(frozen=True)
class Site:
    """What phones on one interface are told: its addresses in URLs, its rules."""

    interface: str | None
    placeholders: dict[str, str]
    rules: RuleSet
    addresses: frozenset[str]
    rules6: RuleSet  # the same rules with ${server} as the IPv6 address, for DHCPv6
    placeholders6: dict[str, str]  # what an IPv6-only phone is told: ${server} is IPv6

    def family(self, ipv6: bool) -> tuple[dict[str, str], RuleSet]:
        """The placeholders and rules for a phone that came over IPv6, or over IPv4."""
        return (self.placeholders6, self.rules6) if ipv6 else (self.placeholders, self.rules)

    @property
    def server(self) -> str:
        return self.placeholders["server"]

    @property
    def base_url(self) -> str:
        return base_url(self.placeholders)


def base_url(placeholders: dict[str, str]) -> str:
    return f"http://{placeholders['server']}:{placeholders['http_port']}"


@dataclass
class Runtime:
    config: Config
    config_file: str | None
    templates: TemplateSet
    variables: DeviceVariables
    sites: list[Site]  # one per interface; one for no interface
    interfaces: list[Interface] = field(default_factory=list)
    auth: Authenticator = field(default_factory=lambda: Authenticator("preprov"))
    loaded: float = field(default_factory=time.time)  # when this configuration was read

    @property
    def site(self) -> Site:
        """The first interface's site: what a request of unknown origin is told."""
        return self.sites[0]

    @property
    def server_address(self) -> str:
        return self.site.server

    def site_for(self, local_address: str | None = None, interface: str | None = None) -> Site:
        """The site of the interface a request arrived on, named or found by its address,
        so a phone on a second interface is sent URLs it can reach."""
        for s in self.sites:
            if (interface and s.interface == interface) or (
                local_address and local_address in s.addresses
            ):
                return s
        return self.sites[0]


def placeholders_for(config: Config, iface: Interface | None) -> dict[str, str]:
    v4 = config.server.address or (iface.ipv4[0].ip if iface and iface.ipv4 else None)
    v6 = config.server.address6 or (iface.ipv6[0].ip if iface and iface.ipv6 else None)
    out = {"http_port": str(config.http.port), "https_port": str(config.https.port)}
    if v6 is not None:
        out["server6"] = f"[{v6}]"
    if v4 is not None:
        out["server"] = str(v4)
    elif v6 is not None:
        out["server"] = f"[{v6}]"
    else:
        out["server"] = "127.0.0.1"
    return out


def _site(config: Config, iface: Interface | None) -> Site:
    p = placeholders_for(config, iface)
    addrs = {str(a.ip) for a in (iface.ipv4 + iface.ipv6)} if iface else set()
    p6 = dict(p, server=p.get("server6", p["server"]))  # an IPv6-only phone reaches this
    return Site(
        iface.name if iface else None,
        p,
        RuleSet(config.rules, p),
        frozenset(addrs),
        RuleSet(config.rules, p6),
        p6,
    )


def build_runtime(config: Config, config_file: str | None, secret: bytes | None = None) -> Runtime:
    try:
        ifaces = [interface(n) for n in config.server.interfaces]
    except Exception as e:
        raise SetupError(f"server.interfaces: {e}") from None
    sites = [_site(config, i) for i in ifaces] or [_site(config, None)]
    try:
        templates = TemplateSet(config.files.templates, config.files.panasonic, config.files.raw,
                                config.models)  # fmt: skip
    except FileNotFoundError as e:
        raise SetupError(f"files.templates: {e}") from None
    broken = templates.compile_all()
    if broken:
        raise SetupError("files.templates: " + "; ".join(broken))
    variables: DeviceVariables = {}
    if config.files.variables is not None:
        try:
            variables = load_variables(config.files.variables)
        except Exception as e:
            raise SetupError(f"files.variables: {e}") from None
    return Runtime(
        config=config,
        config_file=config_file,
        templates=templates,
        variables=variables,
        sites=sites,
        interfaces=ifaces,
        auth=Authenticator(config.http.realm, secret),
    )
