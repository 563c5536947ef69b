"""What the running server serves by: built from a Config, swapped whole on reload.

Building a Runtime is where everything the configuration points at is read
and checked (templates, variables, interfaces), so a bad reload is refused
before anything changes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .config import Config
from .files.templates import TemplateSet
from .files.variables import DeviceVariables, load_variables
from .net import Interface, interface
from .rules import RuleSet
from .web.auth import Authenticator


class SetupError(Exception):
    """The configuration is valid but something it points at is not usable."""


@dataclass
class Runtime:
    config: Config
    config_file: str | None
    templates: TemplateSet
    variables: DeviceVariables
    placeholders: dict[str, str]
    rules: RuleSet
    interfaces: list[Interface] = field(default_factory=list)
    auth: Authenticator = field(default_factory=lambda: Authenticator("preprov"))

    @property
    def server_address(self) -> str | None:
        return self.placeholders.get("server")

    @property
    def base_url(self) -> str:
        return f"http://{self.placeholders['server']}:{self.placeholders['http_port']}"


def server_addresses(
    config: Config, ifaces: list[Interface]
) -> tuple[ipaddress.IPv4Address | None, ipaddress.IPv6Address | None]:
    v4 = config.server.address
    v6 = config.server.address6
    for i in ifaces:
        if v4 is None and i.ipv4:
            v4 = i.ipv4[0].ip
        if v6 is None and i.ipv6:
            v6 = i.ipv6[0].ip
    return v4, v6


def build_runtime(config: Config, config_file: str | None, secret: bytes | None = None) -> Runtime:
    try:
        ifaces = [interface(n) for n in config.server.interfaces]
    except Exception as e:
        raise SetupError(f"server.interfaces: {e}") from None
    v4, v6 = server_addresses(config, ifaces)
    placeholders = {"http_port": str(config.http.port)}
    if v6 is not None:
        placeholders["server6"] = f"[{v6}]"
    if v4 is not None:
        placeholders["server"] = str(v4)
    elif v6 is not None:
        placeholders["server"] = f"[{v6}]"
    else:
        placeholders["server"] = "127.0.0.1"
    try:
        templates = TemplateSet(config.files.templates, config.files.panasonic, config.files.raw)
    except FileNotFoundError as e:
        raise SetupError(f"files.templates: {e}") from None
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
        placeholders=placeholders,
        rules=RuleSet(config.rules, placeholders),
        interfaces=ifaces,
        auth=Authenticator(config.http.realm, secret),
    )
