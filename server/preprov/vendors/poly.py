"""Poly (Polycom) SoundPoint IP, VVX, Trio (UC Software). No SIP PnP. DHCP: option 66 or
a custom option; option 60 in RFC 3925's binary form. Files: `<mac>.cfg` (or
`000000000000.cfg`), then the files it names; the phone PUTs `<mac>-boot.log` and
`<mac>-app.log`, and may HEAD."""

from __future__ import annotations

from .base import vendor

ENTERPRISE = 13885  # Polycom's private enterprise number, first in its option 60


def vendor_class(raw: bytes) -> str | None:
    """RFC 3925 vendor-identifying vendor class: 4 octets of enterprise number, a length
    octet, then sub-options (code, length, value); sub-option 2 is the model, e.g.
    "SoundPointIP-SPIP_601". None when it is not Polycom's."""
    if len(raw) < 5 or int.from_bytes(raw[:4], "big") != ENTERPRISE:
        return None
    data, i = raw[5 : 5 + raw[4]], 0
    while i + 2 <= len(data) and data[i] != 0xFF:
        code, length = data[i], data[i + 1]
        if code == 2:
            return data[i + 2 : i + 2 + length].decode("ascii", "replace")
        i += 2 + length
    return ""


POLY = vendor(
    "Polycom", "poly", "00:04:F2, 64:16:7F, 48:25:67, 00:90:7A",
    pnp_names=["polycom", "poly"],
    # FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application: no MAC in it
    user_agents=[r"FileTransport Polycom(?:[A-Za-z]+)-(?P<model>[A-Za-z0-9_]+)-UA/(?P<fw>[\d.]+)"],
    vendor_class_parser=vendor_class,
    paths=[r"(?:^|/)(?P<mac>[0-9A-Fa-f]{12})-(?:boot\.log|app\.log|phone\.cfg|web\.cfg|"
           r"license\.cfg|directory\.xml|calls\.xml|user\.cfg)$"],
    # PUT at boot and after: its logs, and the settings changed on the phone or its web page
    uploads=[r"(?P<mac>[0-9A-Fa-f]{12})-(?:boot\.log|app\.log|phone\.cfg|web\.cfg|calls\.xml|"
             r"directory\.xml)"],
    # 66 (a custom boot-server option is a phone setting; 160 as that option: unverified)
    dhcp4={66: "folder"},
)  # fmt: skip
