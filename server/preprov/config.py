"""One validated configuration tree, loaded from YAML or derived from interfaces.

Every problem is reported with the file, the key's path and the reason, and
the YAML line where the file has one: `lab.yaml:14: rules[0].url: ...`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .macros import (
    MacError,
    UrlError,
    fill_placeholders,
    normalize_mac,
    parse_url,
    unknown_placeholders,
    url_length_problem,
)

# The bundled templates and example configuration ship inside the package
# (package data), so an installed wheel finds them where the checkout does.
CONFIGS_DIR = Path(str(resources.files("preprov") / "configs"))
BUNDLED_TEMPLATES = CONFIGS_DIR / "templates"

# Panasonic SIP models named in the Administrator Guides; the longest one sizes
# the 384-character check when a configuration names no models of its own.
DEFAULT_MODELS = [
    "KX-HDV100", "KX-HDV130", "KX-HDV230", "KX-HDV330", "KX-HDV340", "KX-HDV430",
    "KX-HDV800", "KX-TGP500", "KX-TGP550", "KX-TGP600", "KX-TGP700", "KX-UT113",
    "KX-UT123", "KX-UT133", "KX-UT136", "KX-UT248", "KX-UT670", "KX-TGP500B09",
]  # fmt: skip

# Sample values standing in for the server's own placeholders when a URL is
# checked before the interfaces are known: the longest text each can become.
_WORST_CASE_PLACEHOLDERS = {
    "server": "255.255.255.255",
    "server6": "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]",
    "http_port": "65535",
    "https_port": "65535",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _macs(v: list[str]) -> list[str]:
    try:
        return [normalize_mac(m) for m in v]
    except MacError as e:
        raise ValueError(str(e)) from None


def _ouis(v: list[str]) -> list[str]:
    out = []
    for o in v:
        h = o.replace(":", "").replace("-", "").replace(".", "").upper()
        if len(h) != 6 or any(c not in "0123456789ABCDEF" for c in h):
            raise ValueError(f"{o!r} is not an OUI (6 hex digits, e.g. 00:80:F0)")
        out.append(h)
    return out


MacList = Annotated[list[str], AfterValidator(_macs)]
OuiList = Annotated[list[str], AfterValidator(_ouis)]


class Match(Strict):
    """All given criteria must hold; within one list any entry may match."""

    mac: MacList = []
    oui: OuiList = []
    model: list[str] = Field(default=[], description="model prefixes: KX-HDV130 matches KX-HDV130N")
    vendor: list[str] = []
    vendor_class: list[str] = Field(default=[], description="substrings of DHCP option 60")
    subnet: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default=[], description="the client's address or subnet lies in one of these"
    )
    relay: list[ipaddress.IPv4Address] = Field(default=[], description="the DHCP relay (giaddr)")

    @property
    def empty(self) -> bool:
        return not (
            self.mac or self.oui or self.model or self.vendor or self.vendor_class
            or self.subnet or self.relay
        )  # fmt: skip


def _check_url(v: str) -> str:
    bad = unknown_placeholders(v)
    if bad:
        raise ValueError(
            f"unknown placeholder ${{{bad[0]}}} (known: ${{server}}, ${{server6}}, "
            "${http_port}, ${https_port})"
        )
    try:
        parse_url(fill_placeholders(v, _WORST_CASE_PLACEHOLDERS))
    except UrlError as e:
        raise ValueError(f"bad URL: {e}") from None
    return v


CheckedUrl = Annotated[str, AfterValidator(_check_url)]


class Rule(Strict):
    name: str = Field(min_length=1)
    match: Match = Match()
    url: CheckedUrl | None = Field(
        default=None, description="provisioning URL; phone macros {MAC} {mac} {MODEL} {fwver}"
    )
    url_base: CheckedUrl | None = Field(
        default=None,
        description="a base URL each vendor's plugin derives its phones' URL from "
        "(Panasonic: <base>/{MODEL}.cfg; the others: <base>/<vendor>/)",
    )
    urls: dict[str, CheckedUrl] = Field(
        default={}, description="per vendor key: that vendor's phones' URL, before url and url_base"
    )
    auth: Literal["any", "basic", "digest"] = "any"
    variables: dict[str, str | int | float | bool] = {}

    @model_validator(mode="after")
    def _one_url(self) -> Rule:
        if self.url is None and self.url_base is None and not self.urls:
            raise _LocatedValueError(("url",), "a rule needs url, url_base or urls")
        _vendor_keys(dict(self.urls))  # type: ignore[arg-type]
        return self

    def all_urls(self) -> list[tuple[tuple[str, ...], str]]:
        """Every URL the rule can send, with the key it comes from."""
        from .vendors import VENDORS

        out: list[tuple[tuple[str, ...], str]] = [(("urls", k), u) for k, u in self.urls.items()]
        if self.url is not None:
            out.append((("url",), self.url))
        elif self.url_base is not None:
            out += [(("url_base",), v.url_for(self.url_base)) for v in VENDORS]
        return out

    def url_for(self, vendor: str | None) -> str | None:
        """The URL this rule sends a phone of that vendor (its key), or None."""
        from .vendors import by_name

        maker = by_name(vendor)
        key = maker.key if maker else ""
        if key in self.urls:
            return self.urls[key]
        if self.url is not None:
            return self.url
        if self.url_base is not None:
            from .vendors import PANASONIC

            return (maker or PANASONIC).url_for(self.url_base)
        return None


class ServerSection(Strict):
    interfaces: list[str] = []
    address: ipaddress.IPv4Address | None = Field(
        default=None, description="IPv4 address put in URLs; default: the first interface's"
    )
    address6: ipaddress.IPv6Address | None = None
    state_dir: Path = Path("state")
    name: str | None = Field(
        default=None, max_length=64,
        description="this server's name on the events, devices and leases it writes; "
        "default: the host name",
    )  # fmt: skip


class HttpSection(Strict):
    enabled: bool = True
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    listen: list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None = Field(
        default=None, description="addresses to bind; default: the interfaces' addresses"
    )
    realm: str = "preprov"
    head_timeout: Annotated[float, Field(gt=0)] = Field(
        default=10.0, description="seconds from a request's first byte to the end of its head"
    )
    max_connections: Annotated[int, Field(ge=1)] = 4096
    max_connections_per_source: Annotated[int, Field(ge=1)] = 128


class HttpsSection(Strict):
    """HTTPS for the same files, with a lab CA made in the state directory."""

    enabled: bool = False
    port: Annotated[int, Field(ge=1, le=65535)] = 8443
    names: list[str] = Field(
        default=[], description="host names for the certificate besides the server's addresses"
    )


class FilesSection(Strict):
    templates: Path = BUNDLED_TEMPLATES
    variables: Path | None = Field(default=None, description="per-device variables, CSV or YAML")
    panasonic: list[str] = Field(
        default=["*.cfg"],
        description="globs of files in the Panasonic text format: sent with CRLF, linted",
    )
    raw: list[str] = Field(default=[], description="globs of files served as they are")
    device_binding: Literal["strict", "lenient", "off"] = Field(
        default="lenient",
        description="per-device files ({MAC} in the name) only to that device: its User-Agent "
        "names the MAC (strict: and) or (lenient: or) it asks from an address it holds",
    )

    @field_validator("device_binding", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        return "off" if v is False else v  # YAML reads a bare `off` as false


class RetentionSection(Strict):
    max_age_days: Annotated[float, Field(gt=0)] = Field(
        default=30.0, description="events, and devices neither registered nor leased, older"
    )
    max_events: Annotated[int, Field(ge=1000)] = 1_000_000


class InventorySection(Strict):
    auto_add: bool = True
    database: str | None = Field(
        default=None,
        description="postgresql://user:password@host:5432/db to share one inventory between "
        "servers; default: SQLite in the state directory",
    )
    synchronous: Literal["normal", "full"] = "normal"
    max_bytes: ByteSize = Field(
        default=ByteSize(256 * 1024 * 1024),
        description="the inventory's budget on disk, WAL included, e.g. 256MiB or 1GB",
    )
    retention: RetentionSection = RetentionSection()
    new_boot_after: Annotated[float, Field(gt=0)] = Field(
        default=30.0,
        description="seconds of quiet after which a DISCOVER, SOLICIT, SUBSCRIBE or a fetch of "
        "the pre-provisioning file starts a new boot of the device",
    )

    @field_validator("database")
    @classmethod
    def _database(cls, v: str | None) -> str | None:
        if not v:  # an empty PREPROV_DATABASE: the default
            return None
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("a postgresql:// URL (leave it out for the embedded SQLite)")
        return v

    @field_validator("max_bytes")
    @classmethod
    def _max_bytes(cls, v: ByteSize) -> ByteSize:
        if v < 16 * 1024 * 1024:
            raise ValueError("at least 16MiB")
        return v


class Allow(Strict):
    """Who a datagram channel answers. Empty lists allow everything of their kind."""

    mac: MacList = []
    oui: OuiList = []
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = Field(
        default=None, description="source subnets; default: the interface's own subnets"
    )


class PnpSection(Strict):
    """SIP PnP: answer multicast ua-profile SUBSCRIBEs with a NOTIFY (docs/protocol.md §3)."""

    enabled: bool = True
    group: ipaddress.IPv4Address = ipaddress.IPv4Address("224.0.1.75")
    port: Annotated[int, Field(ge=1, le=65535)] = 5060
    body: Literal["url", "external-body"] = Field(
        default="url",
        description="url: Content-Type application/url; external-body: message/external-body",
    )
    allow: Allow = Allow()
    rate_burst: Annotated[int, Field(ge=1)] = 20
    rate_per_second: Annotated[float, Field(gt=0)] = 10.0
    max_transactions: Annotated[int, Field(ge=1)] = Field(
        default=10000, description="open exchanges (NOTIFY not yet answered) at once"
    )
    max_answered: Annotated[int, Field(ge=0)] = Field(
        default=100_000, description="answered exchanges remembered 32 s for retransmissions"
    )
    max_answers_per_second: Annotated[float, Field(gt=0)] = Field(
        default=5000.0, description="new SUBSCRIBEs answered a second, all sources together"
    )


class Dhcp4Subnet(Strict):
    subnet: ipaddress.IPv4Network
    pool: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] = Field(
        description="first and last address handed out"
    )
    router: ipaddress.IPv4Address | None = None
    dns: list[ipaddress.IPv4Address] = []

    @model_validator(mode="after")
    def _pool_in_subnet(self) -> Dhcp4Subnet:
        lo, hi = self.pool
        if lo not in self.subnet or hi not in self.subnet:
            raise _LocatedValueError(("pool",), f"pool {lo}-{hi} is not inside {self.subnet}")
        if int(hi) < int(lo):
            raise _LocatedValueError(("pool",), f"pool {lo}-{hi} ends before it starts")
        return self


class Dhcp4Reservation(Strict):
    mac: str
    ip: ipaddress.IPv4Address

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        return _macs([v])[0]


class Dhcp4Options(Strict):
    """Which provisioning options go out (docs/protocol.md §4), built from the rule's URL."""

    option160: bool = Field(default=True, description="the URL's folder, no file name")
    option159: bool = Field(default=True, description="the URL's folder, no file name")
    option66: Literal["url", "folder", "host", "off"] = Field(
        default="url", description="url: the whole URL; folder: ending in /; host: TFTP host"
    )
    option67: bool = Field(default=True, description="the URL's file name, e.g. {MODEL}.cfg")
    always_send: list[Literal[66, 67, 159, 160]] = Field(
        default=[], description="send these even when the client's request list lacks them"
    )


class Dhcp4Section(Strict):
    """A DHCPv4 server for the staging segment (docs/protocol.md §4, RFC 2131)."""

    enabled: bool = True
    port: Annotated[int, Field(ge=1, le=65535)] = 67
    lease_time: Annotated[int, Field(ge=60)] = 3600
    offer_hold: Annotated[float, Field(gt=0)] = 30.0
    decline_quarantine: Annotated[float, Field(ge=0)] = 3600.0
    subnets: list[Dhcp4Subnet] | None = Field(
        default=None, description="default: each interface's subnet, upper half as the pool"
    )
    reservations: list[Dhcp4Reservation] = []
    options: Dhcp4Options = Dhcp4Options()
    allow: Allow = Allow()
    dry_run: bool = Field(default=False, description="log what would be answered, send nothing")


class Dhcp6Subnet(Strict):
    prefix: ipaddress.IPv6Network
    pool: tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]

    @model_validator(mode="after")
    def _pool_in_prefix(self) -> Dhcp6Subnet:
        lo, hi = self.pool
        if lo not in self.prefix or hi not in self.prefix:
            raise _LocatedValueError(("pool",), f"pool {lo}-{hi} is not inside {self.prefix}")
        if int(hi) < int(lo):
            raise _LocatedValueError(("pool",), f"pool {lo}-{hi} ends before it starts")
        return self


class Dhcp6Section(Strict):
    """A DHCPv6 server for the staging segment (RFC 8415; option 17: docs/protocol.md §5)."""

    enabled: bool = True
    port: Annotated[int, Field(ge=1, le=65535)] = 547
    preferred_lifetime: Annotated[int, Field(ge=60)] = 3600
    valid_lifetime: Annotated[int, Field(ge=60)] = 7200
    rapid_commit: bool = Field(default=True, description="answer SOLICIT with REPLY on request")
    offer_hold: Annotated[float, Field(gt=0)] = 30.0
    subnets: list[Dhcp6Subnet] | None = Field(
        default=None, description="default: each interface's prefix, ::1000-::ffff as the pool"
    )
    enterprise: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        default=258, description="option 17's enterprise number (PEN 258: Matsushita/Panasonic)"
    )
    suboption: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=1, description="the sub-option of option 17 that carries the URL"
    )
    always_send: bool = Field(default=False, description="send option 17 even when not in ORO")
    rate_burst: Annotated[int, Field(ge=1)] = Field(
        default=200, description="messages at once per source address (relayed ones: no limit)"
    )
    rate_per_second: Annotated[float, Field(gt=0)] = 50.0
    allow: Allow = Allow()
    dry_run: bool = False


class TftpSection(Strict):
    """Read-only TFTP for option 66 without a scheme (RFC 1350, 2347-2349)."""

    enabled: bool = True
    port: Annotated[int, Field(ge=1, le=65535)] = 69
    blksize_max: Annotated[int, Field(ge=8, le=65464)] = 1468
    timeout: Annotated[float, Field(gt=0, le=255)] = 1.0
    retries: Annotated[int, Field(ge=0, le=20)] = 5
    allow: Allow = Allow()
    rate_burst: Annotated[int, Field(ge=1)] = 20
    rate_per_second: Annotated[float, Field(gt=0)] = 10.0
    max_transfers: Annotated[int, Field(ge=1)] = Field(
        default=256, description="transfers at once, all interfaces together (a socket each)"
    )
    max_transfers_per_source: Annotated[int, Field(ge=1)] = 8


class AdminSection(Strict):
    """The administration listener: REST API, OpenAPI document, Prometheus metrics."""

    enabled: bool = True
    listen: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(
        default=[ipaddress.IPv4Address("127.0.0.1")],
        description="addresses to bind; default loopback only",
    )
    port: Annotated[int, Field(ge=0, le=65535)] = 8081
    token: str | None = Field(
        default=None, description="changes need 'Authorization: Bearer <token>'; none: refused"
    )
    names: list[str] = Field(
        default=[],
        description="host names the listener answers to besides its addresses and localhost",
    )


class VendorSettings(Strict):
    """What a vendor's phones are sent where the sources disagree or say nothing for
    sure (docs/vendors.md): the defaults are the likeliest forms."""

    pnp_notify: Literal["url", "folder", "root"] | None = Field(
        default=None,
        description="the SIP PnP NOTIFY's URL: the rule's URL, its folder, or the server's root",
    )
    dhcp4: dict[Annotated[int, Field(ge=1, le=254)],
                Literal["url", "folder", "base", "file", "host", "ip"]] | None = Field(
        default=None,
        description="DHCPv4 options sent to its phones and the form of each (replaces the "
        "vendor's default set)",
    )  # fmt: skip


def _vendor_keys(v: dict[str, VendorSettings]) -> dict[str, VendorSettings]:
    from .vendors import VENDORS

    known = [x.key for x in VENDORS]
    for key in v:
        if key not in known:
            raise ValueError(f"unknown vendor {key!r} (known: {', '.join(known)})")
    return v


class LogSection(Strict):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


def _default_rules() -> list[Rule]:
    # each vendor's phones their own URL: a Panasonic <base>/{MODEL}.cfg, a Yealink
    # <base>/yealink/, ... (the bundled templates are laid out the same way)
    return [Rule(name="default", url_base="http://${server}:${http_port}")]


class Config(Strict):
    server: ServerSection = ServerSection()
    log: LogSection = LogSection()
    http: HttpSection = HttpSection()
    https: HttpsSection = HttpsSection()
    pnp: PnpSection = PnpSection()
    dhcp4: Dhcp4Section = Dhcp4Section()
    dhcp6: Dhcp6Section = Dhcp6Section()
    tftp: TftpSection = TftpSection()
    admin: AdminSection = AdminSection()
    files: FilesSection = FilesSection()
    inventory: InventorySection = InventorySection()
    vendors: Annotated[dict[str, VendorSettings], AfterValidator(_vendor_keys)] = Field(
        default={}, description="per vendor key (yealink, grandstream, ...): VendorSettings"
    )
    models: list[str] = Field(default=DEFAULT_MODELS, min_length=1)
    fwver_sample: str = Field(default="00.000", description="sizes {fwver} in the length check")
    rules: list[Rule] = Field(default_factory=_default_rules)

    @model_validator(mode="after")
    def _check(self) -> Config:
        names = [r.name for r in self.rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rule names must be unique: {', '.join(dup)}")
        longest = max(self.models, key=len)
        values = self.placeholder_values(worst_case=True)
        problems = []
        for i, r in enumerate(self.rules):
            for key, url in r.all_urls():
                why = url_length_problem(fill_placeholders(url, values), longest, self.fwver_sample)
                if why:
                    problems.append(_LocatedValueError(("rules", i, *key), why))
        if problems:
            raise problems[0]
        return self

    def placeholder_values(self, worst_case: bool = False) -> dict[str, str]:
        values = dict(_WORST_CASE_PLACEHOLDERS)
        if self.server.address:
            values["server"] = str(self.server.address)
        if self.server.address6:
            values["server6"] = f"[{self.server.address6}]"
        if not worst_case and not self.server.address and self.server.address6:
            values["server"] = values["server6"]
        values["http_port"] = str(self.http.port)
        values["https_port"] = str(self.https.port)
        return values


class _LocatedValueError(ValueError):
    """A model-level problem that belongs to one key."""

    def __init__(self, loc: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.loc = loc
        self.reason = reason


class ConfigError(Exception):
    """A configuration was refused. Each problem names file, key path, line and reason."""

    def __init__(self, file: str, problems: Sequence[tuple[str, str, int | None]]) -> None:
        self.file = file
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        for key, reason, line in self.problems:
            where = f"{self.file}:{line}" if line else self.file
            lines.append(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")
        return "\n".join(lines)


def key_path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_of(node: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the YAML node at loc, or of its nearest ancestor."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == part:
                    nxt = v
                    line = k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
            if node is not None:
                line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def _pydantic_problems(
    err: ValidationError, root: yaml.Node | None
) -> list[tuple[str, str, int | None]]:
    problems = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and "[" in p)]
        reason = e["msg"]
        ctx = e.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, _LocatedValueError):
            loc = [*loc, *inner.loc]
            reason = inner.reason
        elif e["type"] == "extra_forbidden":
            reason = "unknown key"
        elif reason.startswith("Value error, "):
            reason = reason[len("Value error, ") :]
        problems.append((key_path(loc), reason, _line_of(root, loc)))
    return problems


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative paths in a file are relative to that file's folder."""
    files = data.get("files")
    if isinstance(files, dict):
        for key in ("templates", "variables"):
            v = files.get(key)
            if isinstance(v, str) and not Path(v).is_absolute():
                files[key] = str(base / v)
    server = data.get("server")
    if isinstance(server, dict):
        v = server.get("state_dir")
        if isinstance(v, str) and not Path(v).is_absolute():
            server["state_dir"] = str(base / v)


def duplicate_keys(node: yaml.Node | None, at: tuple[str | int, ...] = ()) -> list[tuple[str, int]]:
    """Keys given twice in one mapping, with the line of the second: YAML loaders keep the
    last one silently, so a setting written twice would be half ignored."""
    out: list[tuple[str, int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            name = str(k.value)
            if name in seen:
                out.append((key_path((*at, name)), k.start_mark.line + 1))
            seen.add(name)
            out += duplicate_keys(v, (*at, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += duplicate_keys(v, (*at, i))
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML file; overrides (from flags) are merged on top."""
    p = Path(path)
    name = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(name, [("", f"cannot read: {e.strerror}", None)]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(name, [("", f"not UTF-8: {e}", None)]) from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            name, [("", f"not valid YAML: {getattr(e, 'problem', e)}", line)]
        ) from None
    dup = duplicate_keys(root)
    if dup:
        raise ConfigError(name, [(k, "given twice (the second would win silently)", line)
                                 for k, line in dup])  # fmt: skip
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(name, [("", "the top level must be a mapping of sections", 1)])
    _resolve_paths(data, p.resolve().parent)
    return build_config(data, overrides, name, root)


def build_config(
    data: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    name: str = "<flags>",
    root: yaml.Node | None = None,
) -> Config:
    merged = _deep_merge(data, overrides or {})
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(name, _pydantic_problems(e, root)) from None


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
