"""Fanvil X, V, H, i series (and OEMs such as Planet). PnP: `MAC=<hex>` in From/To (an OEM
capture), sent periodically; the NOTIFY may carry a file URL with `$mac`. DHCP: a
custom option, 66, 43. Files: a model common file, then `<mac>.cfg` (lower case)."""

from .base import vendor

FANVIL = vendor(
    "Fanvil", "fanvil", "00:A8:59, 0C:38:3E",
    pnp_names=["fanvil", "planet"],
    # Fanvil X4 2.10.2.6887 0c383e07e16c; Fanvil X6U Pro 0.0.10 0c383e2cd782
    user_agents=[r"Fanvil (?P<model>[A-Za-z0-9-]+(?: Pro)?) (?P<fw>[\d.]+) (?P<mac>[0-9a-fA-F]{12})"],
    vendor_classes=[r"^Fanvil (?P<model>[A-Za-z0-9-]+)"],
    # 66 (its default DHCP option)
    dhcp4={66: "folder"},
)  # fmt: skip
