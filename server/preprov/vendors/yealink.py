"""Yealink T2x/T4x/T5x, W5x/W7x DECT. PnP: `MAC<hex>` with no separator, from port
5059 on some; a folder URL in the NOTIFY works on every firmware seen (a file URL
only on some), so the NOTIFY carries the folder. Files: `<mac>.boot`,
`y000000000000.boot`, `y0000000000NN.cfg` (NN: the hardware id), `<mac>.cfg`."""

from .base import vendor

# y0000000000NN.cfg: hardware id -> model (a published table; not every model)
HARDWARE_IDS = {
    "000": "T28P", "004": "T26P", "005": "T22P", "007": "T20P", "025": "W52P",
    "028": "T46G", "029": "T42G", "032": "T32G", "035": "T48G", "036": "T41P",
    "038": "T38G", "044": "T23G", "045": "T27P", "046": "T29G", "051": "T49G",
    "052": "T21P_E2", "053": "T19P_E2", "054": "T40P", "056": "T56A", "058": "T58A",
    "065": "T48S", "066": "T46S", "067": "T42S", "068": "T41S", "069": "T27G",
    "070": "T54S", "074": "T52S", "076": "T40G", "095": "T53", "096": "T54W",
    "097": "T57W", "107": "T43U", "108": "T46U", "109": "T48U", "116": "T42U",
    "123": "T31G", "124": "T33G", "150": "T58W",
}  # fmt: skip

YEALINK = vendor(
    "Yealink", "yealink",
    "00:15:65, E4:34:D7, 80:5E:C0, 80:5E:0C, 24:9A:D8, 44:DB:D2, 64:4F:56, EC:1D:A9, "
    "34:97:D7, B0:61:A9, C4:FC:22, F0:16:53",
    pnp_names=["yealink"],
    # Yealink SIP-T46G 28.72.0.1 00:15:65:4a:a9:37; Yealink SIP-T56A 58.80.0.25 001565f429a4;
    # Yealink W52P 25.81.0.10 (its SIP User-Agent); W52P 25.30.0.2 00:15:65:44:b3:7c
    user_agents=[
        r"[Yy]ealink[ -](?:SIP[ -])?(?:VP-)?(?P<model>[A-Z]+\d+\w*) (?P<fw>\d+(?:\.\d+){2,})"
        r"(?: (?P<mac>[0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2}){5}))?",
        r"^(?P<model>W\d\dP) (?P<fw>\d+(?:\.\d+){2,})(?: (?P<mac>[0-9A-Fa-f:]{12,17}))?",
    ],
    vendor_classes=[r"^[Yy]ealink"],
    paths=[r"(?:^|/)y000000000(?P<code>\d{3})\.(?:cfg|boot)$"],
    path_models=HARDWARE_IDS,
    notify="folder",
    # RPS: /service.do?method=redirect&mac=00-15-65-.. (the form from firmware code of
    # unclear provenance: unverified against a capture)
    redirect=r"/service\.do\?method=redirect&mac=(?P<mac>[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5})",
    # 66 (the custom option 128-254 it reads first is off until configured on the phone)
    dhcp4={66: "folder"},
)  # fmt: skip
