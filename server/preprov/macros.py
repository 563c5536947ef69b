"""MAC notation, the phone's URL macros and the server-address grammar.

Source: Panasonic Administrator Guide "2.1.3 Server Address Formats" (the seed
in shared/seeds) and docs/protocol.md §2.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# "Maximum length: 384 characters" (seed, 2.1.3).
URL_MAX_LENGTH = 384
SCHEMES = ("http", "https", "tftp", "ftp")
DEFAULT_PORTS = {"http": 80, "https": 443, "tftp": 69, "ftp": 21}

_MAC_SEPARATED = re.compile(r"^[0-9A-Fa-f]{2}([:\-.]?)[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")
_MAC_DOTTED = re.compile(r"^[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}$")


class MacError(ValueError):
    pass


def normalize_mac(text: str) -> str:
    """Return the MAC as 12 upper-case hex digits.

    Accepts `0080F0C571EB`, `00:80:f0:c5:71:eb`, `00-80-F0-C5-71-EB`,
    `0080.f0c5.71eb` (Cisco); anything else raises MacError.
    """
    s = text.strip()
    if _MAC_SEPARATED.match(s) or _MAC_DOTTED.match(s):
        return re.sub(r"[:\-.]", "", s).upper()
    raise MacError(f"{text!r} is not a MAC address (12 hex digits, optionally separated)")


def try_mac(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return normalize_mac(text)
    except MacError:
        return None


def mac_colon(mac: str) -> str:
    return ":".join(mac[i : i + 2] for i in range(0, 12, 2)).lower()


# The phone's macros are case-sensitive; an unknown macro stays literal text
# (docs/protocol.md §2).
PHONE_MACROS = ("MAC", "mac", "MODEL", "fwver")
_MACRO = re.compile(r"\{(MAC|mac|MODEL|fwver)\}")


def expand_macros(url: str, mac: str | None, model: str | None, fwver: str | None) -> str:
    """Expand the phone's macros as the phone does. Missing facts leave the macro as it is."""
    values = {
        "MAC": mac.upper() if mac else None,
        "mac": mac.lower() if mac else None,
        "MODEL": model,
        "fwver": fwver,
    }

    def sub(m: re.Match[str]) -> str:
        v = values[m.group(1)]
        return v if v is not None else m.group(0)

    return _MACRO.sub(sub, url)


# Placeholders that preprov itself fills in before a URL leaves the server;
# written ${...} so they never collide with the phone's {...} macros.
SERVER_PLACEHOLDERS = ("server", "server6", "http_port", "https_port")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def fill_placeholders(url: str, values: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(name)
        return values[name]

    return _PLACEHOLDER.sub(sub, url)


def unknown_placeholders(url: str) -> list[str]:
    return [n for n in _PLACEHOLDER.findall(url) if n not in SERVER_PLACEHOLDERS]


@dataclass(frozen=True)
class ServerUrl:
    scheme: str
    user: str | None
    password: str | None
    host: str  # IPv6 literals keep their brackets
    port: int | None
    path: str  # starts with "/" or is empty

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.scheme]

    @property
    def directory(self) -> str:
        """The path up to and including its last '/'."""
        return self.path[: self.path.rfind("/") + 1] if "/" in self.path else "/"

    @property
    def filename(self) -> str:
        return self.path[self.path.rfind("/") + 1 :]


class UrlError(ValueError):
    pass


_URL = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?:(?P<user>[^:@/\s]*)(?::(?P<password>[^@/\s]*))?@)?"
    r"(?P<host>\[[^\]/\s]*\]|[^:/\s\[\]@]+)"
    r"(?::(?P<port>[^/\s]*))?"
    r"(?P<path>/\S*)?$"
)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def parse_url(url: str) -> ServerUrl:
    """Parse `scheme://user:password@host:port/path/file` (seed, 2.1.3).

    Macros may appear in the path. Raises UrlError with the reason.
    """
    authority = url.partition("://")[2].split("/", 1)[0].rpartition("@")[2]
    if authority.count(":") > 1 and not authority.startswith("["):
        raise UrlError(f"IPv6 literal in {authority!r} must be written in brackets")
    m = _URL.match(url)
    if not m:
        raise UrlError("not of the form scheme://[user[:password]@]host[:port][/path/file]")
    scheme = m.group("scheme").lower()
    if scheme not in SCHEMES:
        raise UrlError(f"scheme {scheme!r} is not one the phones fetch with ({', '.join(SCHEMES)})")
    host = m.group("host")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as e:
            raise UrlError(f"{host} is not an IPv6 literal: {e}") from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError as e:
            raise UrlError(f"{host} is not an IPv4 address: {e}") from None
    elif ":" in host:
        raise UrlError(f"IPv6 literal {host} must be written in brackets")
    elif not _HOSTNAME.match(host):
        raise UrlError(f"{host!r} is not a valid host name")
    port: int | None = None
    if m.group("port") is not None:
        p = m.group("port")
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise UrlError(f"port {p!r} is not a number from 1 to 65535")
        port = int(p)
    return ServerUrl(
        scheme=scheme,
        user=m.group("user"),
        password=m.group("password"),
        host=host,
        port=port,
        path=m.group("path") or "",
    )


def url_length_problem(url: str, longest_model: str, fwver_sample: str) -> str | None:
    """The reason a URL would exceed 384 characters once the phone expands it, or None."""
    expanded = expand_macros(url, "0" * 12, longest_model, fwver_sample)
    if len(expanded) > URL_MAX_LENGTH:
        return (
            f"{len(expanded)} characters after expanding the macros with model "
            f"{longest_model!r} (the longest configured); the phones accept at most "
            f"{URL_MAX_LENGTH}"
        )
    return None


def url_dir(url: str) -> str:
    """The URL up to its last '/': where the files a pre-provisioning file names live."""
    scheme_end = url.find("://") + 3
    slash = url.rfind("/")
    return url + "/" if slash < scheme_end else url[: slash + 1]
