"""Snom D3xx/D7xx/D8xx, M-series DECT. PnP on by default: `MAC%3a<HEX>`,
`vendor="snom";model="snomD785"`; the NOTIFY carries the whole setting-server URL,
which the phone expands (`{mac}`). DHCP 66/67, option 60 `snom<model>`. Files, for
a URL without a file name: `snom<model>.htm`, `snom<model>-<MAC>.htm`."""

from .base import vendor

SNOM = vendor(
    "Snom", "snom", "00:04:13, 00:08:7B",
    pnp_names=["snom"],
    # Mozilla/4.0 (compatible; snomD785-SIP 10.1.33.33 2010.12-00004-g9ba52f5 000413922D24 ...)
    # snomM700/03.23.0005 (MAC=0004136*****; ...) from an M700's SUBSCRIBE
    user_agents=[
        r"(?P<model>snom[A-Za-z]?[0-9]+[A-Za-z0-9]*)-SIP (?P<fw>[\d.]+)"
        r"(?:[^)]*?\s(?P<mac>[0-9A-F]{12})(?=[\s)]))?",
        r"(?P<model>snom[A-Za-z]?[0-9]+[A-Za-z0-9]*)/(?P<fw>[\d.]+)",
    ],
    vendor_classes=[r"^(?P<model>snom[A-Za-z]?[0-9]+[A-Za-z0-9]*)"],
    paths=[r"(?:^|/)(?P<model>snom[A-Za-z]?[0-9]+[A-Za-z0-9]*)-(?P<mac>[0-9A-Fa-f]{12})\.htm$",
           r"(?:^|/)(?P<model>snom[A-Za-z]?[0-9]+[A-Za-z0-9]*)\.htm$"],
    # 66 without 67: the phone then asks for snom<model>.htm and snom<model>-<MAC>.htm
    dhcp4={66: "folder"},
)  # fmt: skip
