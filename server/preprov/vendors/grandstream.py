"""Grandstream GXP16xx/17xx/21xx, GRP26xx, HT8xx. PnP: `MAC%3A<HEX>`, from port 5080,
sent five times; the NOTIFY's URL must be a folder ending in `/` (anything else is
ignored without a word). Files: `cfg<mac>` / `cfg<mac>.bin`, `cfg<mac>.xml`,
`cfg<model>.xml`, `cfg.xml`, lower case."""

from .base import vendor

GRANDSTREAM = vendor(
    "Grandstream", "grandstream", "00:0B:82, C0:74:AD, EC:74:D7",
    pnp_names=["grandstream"],
    # Grandstream Model HW GXP1628 SW 1.0.4.138 DevId c074ad2bd859 (HTTP);
    # Grandstream GRP2612W 1.0.5.67 (its SIP User-Agent)
    user_agents=[
        r"Grandstream Model HW (?P<model>[A-Za-z0-9]+)(?: V[\w.]+)? SW (?P<fw>[\d.]+)"
        r"(?: DevId (?P<mac>[0-9A-Fa-f]{12}))?",
        r"Grandstream (?P<model>[A-Z]{2,3}[0-9]+[A-Za-z0-9]*)\b.*?DevId (?P<mac>[0-9A-Fa-f]{12})",
        r"Grandstream (?P<model>[A-Z]{2,3}[0-9]+[A-Za-z0-9]*) (?P<fw>\d+(?:\.\d+){2,})",
    ],
    vendor_classes=[r"^Grandstream"],
    paths=[r"(?:^|/)cfg(?P<mac>[0-9a-fA-F]{12})(?:\.xml|\.bin)?$",
           r"(?:^|/)cfg(?P<model>(?:gxp|grp|ht|gxv|wp)[0-9]+[a-z0-9]*)\.xml$"],
    notify="folder",
    # 66 and 160 (their order between them: unverified)
    dhcp4={66: "folder", 160: "folder"},
)  # fmt: skip
