"""Cisco Multiplatform (MPP/3PCC) 68xx/78xx/88xx and the older SPA. No SIP PnP. DHCP options
66, 160, 159, 150 (their default order 66,160,159,150,60,43,125), option 60 ending in
the product name and a NUL. Files: `/$PSN.xml` (e.g. `8851-3PCC.xml`), then
`/Cisco/$PN/$MA.cfg`; SPA: `/spa$PSN.cfg`."""

from .base import vendor

CISCO = vendor(
    "Cisco", "cisco",
    "00:26:99, 50:3D:E5, D0:EC:35, 00:18:73, A4:4C:11, 00:21:A0, 30:E4:DB, 00:21:55, 68:EF:BD",
    pnp_names=["cisco"],
    # Cisco-CP-7832-3PCC/11.0.1 (00562b043615); Cisco/SPA508G-7.4.4 (0002FDFF2103)(CBT...)
    user_agents=[
        r"Cisco-(?P<model>CP-[A-Za-z0-9-]+)/(?P<fw>[^\s(]+) \((?P<mac>[0-9A-Fa-f]{12})\)",
        r"(?:Cisco|Linksys)/(?P<model>SPA-?[A-Za-z0-9]+)-(?P<fw>[^\s(]+) \((?P<mac>[0-9A-Fa-f]{12})\)",
    ],
    # "Cisco Systems, Inc. IP Phone CP-7911G\0"; "...CP-7841-3PCC\0"; "Cisco SPA504G"
    vendor_classes=[r"(?P<model>CP-[0-9]{4}[A-Za-z0-9-]*)$", r"(?:Cisco|CISCO|LINKSYS) (?P<model>SPA-?\w+)"],
    paths=[r"(?:^|/)Cisco/(?P<model>CP-[A-Za-z0-9-]+)/(?P<mac>[0-9a-fA-F]{12})\.cfg$",
           r"(?:^|/)(?P<model>[0-9]{4}-3PCC)\.xml$", r"(?:^|/)spa(?P<model>[0-9A-Za-z]+)\.cfg$"],
    # its default order 66,160,159,150: a folder in 66 and 160, the server in 159 and 150
    dhcp4={66: "folder", 160: "folder", 159: "host", 150: "ip"},
)  # fmt: skip
