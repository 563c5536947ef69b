"""Gigaset N510/N720/N870 DECT, Maxwell. PnP on the N610/N670/N870 (`MAC%3a<HEX>`); DHCP
option 114 (a URL) before 66; option 60 `Gigaset_N720_DM_PRO`. Files:
`<phoneType>.htm`, `<phoneType>-<mac>.htm`, or `<MAC>.xml` (N510 with option 66)."""

from .base import vendor

GIGASET = vendor(
    "Gigaset", "gigaset", "7C:2F:80, 00:21:04, 58:9E:C6, 14:B3:70",
    pnp_names=["gigaset"],
    # Gigaset N870 IP PRO/83.V2.11.0+build.a546b91;7C2F80E0D605; N510 IP PRO/42.245.00.000.000;7C2F804DF9A9
    user_agents=[
        r"(?:Gigaset )?(?P<model>(?:N|C|Maxwell)[0-9A-Za-z]*[0-9][A-Za-z0-9 -]*?)/(?P<fw>[^;\s]+)"
        r"(?:;(?P<mac>[0-9A-Fa-f]{12}))?",
    ],
    vendor_classes=[r"^(?:Gigaset_)?(?P<model>N[0-9]{3}[A-Za-z0-9_]*)"],
    paths=[r"(?:^|/)(?P<model>Gigaset[A-Za-z0-9]+)-(?P<mac>[0-9A-Fa-f]{12})\.htm$"],
    # 114 (a URL, read first) and 66
    dhcp4={114: "folder", 66: "folder"},
)  # fmt: skip
