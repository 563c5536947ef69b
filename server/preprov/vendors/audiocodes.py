"""AudioCodes 405HD/420HD/430HD/440HD, C450HD. PnP without a MAC:
`SUBSCRIBE sip:224.0.1.75:5060`, `profile-type="application";model="440HD"`, no vendor
parameter; the manual's NOTIFY carries a server root (`tftp://host`), where the phone
asks for `<mac>.cfg`; that it takes a folder as well, as it does from DHCP, is an
inference (unverified): preprov sends the folder (vendors.audiocodes.pnp_notify: root
for the other form). DHCP: 160 before 66/67 before 43. The device is found by the
address its SUBSCRIBE came from (its lease)."""

from .base import vendor

AUDIOCODES = vendor(
    "AudioCodes", "audiocodes", "00:90:8F",
    pnp_names=["audiocodes"],
    # AUDC-IPPhone/2.2.8.61 (440HDG-Rev0; 00908F602AAC); AUDC-IPPhone/2.2.2 (its SUBSCRIBE)
    user_agents=[r"AUDC-IPPhone(?:-[\w]+)?/(?P<fw>[\w.]+)"
                 r"(?: \((?P<model>[A-Za-z0-9]+)[^;]*; (?P<mac>[0-9A-Fa-f]{12})\))?"],
    notify="folder",
    # its redirect service: GET /<MAC> at redirect.audiocodes.com, answered with a 302
    redirect=r"/(?P<mac>[0-9A-Fa-f]{12})",
    # 160 (read first) and 66: a folder, where it asks for <mac>.cfg
    dhcp4={160: "folder", 66: "folder"},
)  # fmt: skip
