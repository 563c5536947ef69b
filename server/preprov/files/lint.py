"""A linter for the Panasonic SIP phone text configuration format (docs/protocol.md §6).

Sources: KX-UT670 guide p.117, KX-HDV230 guide p.51, KX-UT133 guide p.46.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEADER = b"# Panasonic SIP Phone Standard Format File #"  # 44 bytes, first line
MAX_LINE = 537  # bytes, without the CRLF
MAX_NAME = 32
MAX_VALUE = 500
MAX_FILE = 120 * 1024  # KX-UT

_PARAM = re.compile(rb'^([A-Za-z0-9_]+)="([^"]*)"$')


@dataclass(frozen=True)
class Finding:
    line: int  # 1-based; 0 for the whole file
    severity: str  # "error" or "warning"
    message: str

    def render(self, name: str) -> str:
        where = f"{name}:{self.line}" if self.line else name
        return f"{where}: {self.severity}: {self.message}"


def looks_panasonic(data: bytes) -> bool:
    return data.startswith(HEADER)


def lint(data: bytes) -> list[Finding]:
    out: list[Finding] = []
    if len(data) > MAX_FILE:
        out.append(Finding(0, "error", f"file is {len(data)} bytes, more than {MAX_FILE}"))
    if not data.startswith(HEADER):
        out.append(
            Finding(1, "error", f"first line must start with {HEADER.decode()!r} (44 bytes)")
        )
    if data and not data.endswith(b"\r\n"):
        out.append(Finding(0, "error", "file must end with CRLF (an empty last line)"))
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    seen: dict[bytes, int] = {}
    for i, raw in enumerate(lines, start=1):
        if not raw.endswith(b"\r") and (i < len(lines) or data.endswith(b"\n")):
            out.append(Finding(i, "error", "line ends in LF alone; the format needs CRLF"))
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if len(line) > MAX_LINE:
            out.append(Finding(i, "error", f"line is {len(line)} bytes, more than {MAX_LINE}"))
        if i == 1 or not line.strip() or line.lstrip().startswith(b"#"):
            continue
        m = _PARAM.match(line)
        if not m:
            out.append(Finding(i, "error", _why_not_param(line)))
            continue
        name, value = m.group(1), m.group(2)
        if len(name) > MAX_NAME:
            out.append(
                Finding(
                    i,
                    "error",
                    f"name {name.decode()} is {len(name)} characters, more than {MAX_NAME}",
                )
            )
        if len(value) > MAX_VALUE:
            out.append(
                Finding(
                    i,
                    "error",
                    f"value of {name.decode()} is {len(value)} characters, more than {MAX_VALUE}",
                )
            )
        if name in seen:
            out.append(
                Finding(
                    i,
                    "warning",
                    f"{name.decode()} repeats line {seen[name]}; the first occurrence wins",
                )
            )
        else:
            seen[name] = i
    return out


def _why_not_param(line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    if "=" not in text:
        return f'not NAME="value": {text[:60]!r}'
    name, _, value = text.partition("=")
    if name != name.rstrip() or value != value.lstrip():
        return f"spaces around '=' are not allowed: {text[:60]!r}"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        return f"parameter name {name[:40]!r} has characters other than A-Z, 0-9 and _"
    if not (value.startswith('"') and value.endswith('"') and len(value) >= 2):
        return f"value of {name} must be in double quotes: {text[:60]!r}"
    return f"value of {name} must not contain a double quote: {text[:60]!r}"


def parse(data: bytes) -> dict[str, str]:
    """NAME="value" pairs; the first occurrence of a name wins (docs/protocol.md §6)."""
    out: dict[str, str] = {}
    for raw in data.split(b"\n"):
        m = _PARAM.match(raw.rstrip(b"\r"))
        if m:
            out.setdefault(m.group(1).decode(), m.group(2).decode("utf-8", "replace"))
    return out


def to_crlf(data: bytes) -> bytes:
    """Normalise line ends to CRLF and end the file with one."""
    text = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text


# The root element each vendor's XML files have (docs/vendors.md)
_XML_ROOTS = {
    "poly": {"APPLICATION", "polycomConfig"},
    "cisco": {"flat-profile"},
    "grandstream": {"gs_provision"},
    "snom": {"settings", "setting-files"},
    "fanvil": {"sysConf"},
    "gigaset": {"provisioning"},
}


def lint_vendor(vendor: str, data: bytes) -> list[Finding]:
    """Another vendor's file, checked for the shape its phones parse: Yealink's
    `#!version:1.0.0.1` header and `key = value` lines, AudioCodes' `path=value`
    lines, the others' XML (well-formed, with their root element)."""
    import xml.etree.ElementTree as ET

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return [Finding(0, "error", f"not UTF-8: {e}")]
    lines = text.splitlines()
    out: list[Finding] = []
    if vendor in ("yealink", "audiocodes"):
        if vendor == "yealink" and (not lines or lines[0].strip() != "#!version:1.0.0.1"):
            out.append(Finding(1, "error", "the first line must be #!version:1.0.0.1"))
        sep = " = " if vendor == "yealink" else "="
        for n, line in enumerate(lines, 1):
            s = line.strip()
            if s and not s.startswith("#") and sep.strip() not in s:
                out.append(Finding(n, "error", f"not a key{sep}value line: {s[:60]!r}"))
        return out
    roots = _XML_ROOTS.get(vendor)
    if roots is None:
        return out
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        return [Finding(e.position[0], "error", f"not well-formed XML: {e}")]
    if root.tag not in roots:
        out.append(Finding(0, "error", f"root element <{root.tag}>, expected "
                           + " or ".join(f"<{r}>" for r in sorted(roots))))  # fmt: skip
    return out
