"""Panasonic KX-HDV, KX-TGP, KX-UT (docs/protocol.md): PnP with `vender=`, options 160,
159, 66, DHCPv6 option 17, `{MODEL}.cfg` then the CFG_*_FILE_PATH chain."""

from .base import vendor

PANASONIC = vendor(
    "Panasonic", "panasonic", "00:80:F0, BC:C3:42, 08:00:23",
    pnp_names=["panasonic"],
    # Panasonic_KX-UT113/01.133 (0080f0c8c381)
    user_agents=[r"Panasonic_(?P<model>[A-Za-z0-9][A-Za-z0-9_.\-]*)/(?P<fw>[^\s(]+)"
                 r"(?:\s*\((?P<mac>[0-9A-Fa-f:.\-]{12,17})\))?"],
    vendor_classes=[r"^Panasonic"],
    paths=[r"(?:^|/)Config(?P<mac>[0-9A-Fa-f]{12})\.cfg$"],
    # the pre-provisioning file at the top of the templates, as the guides show it
    base_form="{base}/{MODEL}.cfg",
)  # fmt: skip
