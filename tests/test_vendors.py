"""Each vendor's phones recognised on every channel: User-Agents, option 60, request paths,
SIP PnP dialects; and a server that records who asked even when it cannot serve them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from preprov import vendors
from preprov.lab import Lab
from preprov.vendors.base import VendorFacts
from serverproc import start_server

# (User-Agent, vendor, model, firmware, MAC): samples published for each vendor
USER_AGENTS = [
    ("Panasonic_KX-UT113/01.133 (0080f0c8c381)", "Panasonic", "KX-UT113", "01.133", "0080F0C8C381"),
    ("Yealink SIP-T46G 28.72.0.1 00:15:65:4a:a9:37", "Yealink", "T46G", "28.72.0.1", "0015654AA937"),
    ("Yealink SIP-T56A 58.80.0.25 001565f429a4", "Yealink", "T56A", "58.80.0.25", "001565F429A4"),
    ("W52P 25.30.0.2 00:15:65:44:b3:7c", "Yealink", "W52P", "25.30.0.2", "00156544B37C"),
    ("FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application", "Polycom", "VVX_500", "5.9.7.4477", None),
    ("Cisco-CP-7832-3PCC/11.0.1 (00562b043615)", "Cisco", "CP-7832-3PCC", "11.0.1", "00562B043615"),
    ("Cisco/SPA508G-7.4.4 (0002FDFF2103)(CBT141400UK)", "Cisco", "SPA508G", "7.4.4", "0002FDFF2103"),
    ("Grandstream Model HW GXP2135 SW 1.0.7.97 DevId 000b828aa872", "Grandstream", "GXP2135", "1.0.7.97", "000B828AA872"),
    ("Mozilla/4.0 (compatible; snomD785-SIP 10.1.33.33 2010.12-00004-g9ba52f5 000413922D24 SXM:0 UXM:0)", "Snom", "snomD785", "10.1.33.33", "000413922D24"),
    ("Fanvil X4 2.10.2.6887 0c383e07e16c", "Fanvil", "X4", "2.10.2.6887", "0C383E07E16C"),
    ("Gigaset N870 IP PRO/83.V2.11.0+build.a546b91;7C2F80E0D605", "Gigaset", "N870 IP PRO", "83.V2.11.0+build.a546b91", "7C2F80E0D605"),
    ("AUDC-IPPhone/2.2.8.61 (440HDG-Rev0; 00908F602AAC)", "AudioCodes", "440HDG", "2.2.8.61", "00908F602AAC"),
]  # fmt: skip


def test_user_agents_of_every_vendor() -> None:
    for ua, vendor, model, fw, mac in USER_AGENTS:
        assert vendors.from_user_agent(ua) == VendorFacts(vendor, model, fw, mac), ua
    assert vendors.from_user_agent("curl/8.0") is None


def test_option_60_in_each_vendors_form() -> None:
    poly_model = b"SoundPointIP-SPIP_601"
    tlvs = b"\x01\x07Polycom" + bytes([2, len(poly_model)]) + poly_model + b"\xff"
    poly = (13885).to_bytes(4, "big") + bytes([len(tlvs)]) + tlvs  # RFC 3925, binary
    cases = [
        (poly, "Polycom", "SoundPointIP-SPIP_601"),
        (b"Cisco Systems, Inc. IP Phone CP-7841-3PCC\x00", "Cisco", "CP-7841-3PCC"),  # NUL-ended
        (b"snomD785", "Snom", "snomD785"),
        (b"yealink", "Yealink", None),
        (b"Gigaset_N720_DM_PRO", "Gigaset", "N720_DM_PRO"),
        (b"Panasonic", "Panasonic", None),
    ]
    for raw, vendor, model in cases:
        assert vendors.from_vendor_class(raw) == VendorFacts(vendor, model), raw
    assert vendors.from_vendor_class(b"MSFT 5.0") is None


def test_request_paths_that_name_the_phone() -> None:
    cases = [
        ("/y000000000028.cfg", VendorFacts("Yealink", "T46G")),
        ("/cfg000b82112233.xml", VendorFacts("Grandstream", None, None, "000B82112233")),
        ("/0004f2000001-boot.log", VendorFacts("Polycom", None, None, "0004F2000001")),
        ("/Cisco/CP-8851-3PCC/001234ab45de.cfg", VendorFacts("Cisco", "CP-8851-3PCC", None, "001234AB45DE")),
        ("/snomD345-000413A11FA7.htm", VendorFacts("Snom", "snomD345", None, "000413A11FA7")),
    ]  # fmt: skip
    for path, want in cases:
        assert vendors.from_path(path) == want, path
    assert vendors.notify_form("Grandstream", "http://h:8080/x/{MODEL}.cfg") == "http://h:8080/x/"
    assert vendors.notify_form("AudioCodes", "http://h:8080/x/{MODEL}.cfg") == "http://h:8080/x/"
    assert vendors.notify_form("AudioCodes", "http://h:8080/x/", {"audiocodes": "root"}) == "http://h:8080"
    assert vendors.notify_form("Snom", "http://h/{mac}.xml") == "http://h/{mac}.xml"


def test_every_vendors_fetch_is_recorded_with_who_asked(tmp_path: Path) -> None:
    """A zero-config server serves Panasonic files; a phone of another vendor asking for its
    own first file gets a 404 with the reason, not a Panasonic file (`{MODEL}.cfg` stands
    for a configured model only), and the inventory names it: vendor, model, firmware, MAC."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed")
    first_files = {"Yealink": "y000000000028.cfg", "Polycom": "0004f2000001.cfg",
                   "Cisco": "8851-3PCC.xml", "Grandstream": "cfg000b828aa872.xml",
                   "Snom": "snomD785.htm", "Fanvil": "0c383e07e16c.cfg",
                   "Gigaset": "7C2F80E0D605.xml", "AudioCodes": "00908f602aac.cfg"}  # fmt: skip
    sp = start_server(tmp_path)
    try:
        for ua, vendor, *_ in USER_AGENTS:
            path = first_files.get(vendor, "KX-UT113.cfg")
            r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-A", ua,
                                f"{sp.base}/{path}"], capture_output=True, text=True)  # fmt: skip
            assert r.stdout == ("200" if vendor == "Panasonic" else "404"), (ua, r.stdout)
    finally:
        assert sp.stop() == 0
    inv = subprocess.run([sys.executable, "-m", "preprov", "inventory", "--state-dir",
                          str(sp.state_dir), "--json"], capture_output=True, text=True,
                         check=True)  # fmt: skip
    rows = {d["mac"]: d for d in json.loads(inv.stdout)}
    for ua, vendor, model, fw, mac in USER_AGENTS:
        if mac is None:
            continue  # Poly's User-Agent names no MAC: its path (0004f2000001.cfg) does
        d = rows[mac]
        assert (d["vendor"], d["model"], d["fwver"]) == (vendor, model, fw), ua
        if vendor != "Panasonic":
            assert d["stage"] == "seen" and "no template matches" in d["last_error"], d
    assert rows["0004F2000001"]["vendor"] == "Polycom"


def test_a_poly_uploads_its_logs_and_nothing_else_is_accepted(tmp_path: Path) -> None:
    """PUT of `<mac>-boot.log` from the phone (device binding: the address it holds) is
    kept in the state directory; a PUT of any other name, or from elsewhere, is refused."""
    from preprov.config import build_config
    from preprov.files.service import FileRequest, fetch
    from preprov.runtime import build_runtime

    rt = build_runtime(build_config({"server": {"state_dir": str(tmp_path / "state")}}), None)
    ua = "FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Updater"
    holders = {"198.18.0.7": "0004F2000001"}

    def put(path: str, client: str = "198.18.0.7", body: bytes = b"boot log\n") -> int:
        req = FileRequest("http", client, path, method="PUT", user_agent=ua, body=body)
        return fetch(rt, req, holder=holders.get).status

    assert put("/0004f2000001-boot.log") == 201
    assert put("/0004f2000001-boot.log", body=b"second\n") == 204
    stored = tmp_path / "state" / "uploads" / "0004F2000001" / "0004f2000001-boot.log"
    assert stored.read_bytes() == b"second\n"
    assert put("/0004f2000001-boot.log", client="198.18.0.66") == 403  # not its address
    assert put("/0004f2000002-app.log") == 403  # another device's
    assert put("/KX-HDV130.cfg") == 405
    assert put("/../0004f2000001-boot.log") == 400


def test_put_and_head_over_http(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("files:\n  device_binding: off\n")
    sp = start_server(tmp_path, "--config", str(cfg))
    try:
        log = tmp_path / "boot.log"
        log.write_bytes(b"0911 booting\n" * 100)
        ua = "FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Updater"
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-A", ua,
                            "-T", str(log), f"{sp.base}/0004f282e824-boot.log"],
                           capture_output=True, text=True)  # fmt: skip
        assert r.stdout == "201", r.stderr
        kept = sp.state_dir / "uploads" / "0004F282E824" / "0004f282e824-boot.log"
        assert kept.read_bytes() == log.read_bytes()
        ev = sp.wait_event("file.uploaded")
        assert (ev["mac"], ev["vendor"], ev["size"]) == ("0004F282E824", "Polycom", 1300)
        r = subprocess.run(["curl", "-sS", "-I", "-o", "/dev/null", "-w", "%{http_code}", "-A", ua,
                            f"{sp.base}/0004f282e824-app.log"], capture_output=True, text=True)  # fmt: skip
        assert r.stdout == "404"  # HEAD: nothing there, but never a 405
    finally:
        assert sp.stop() == 0


def test_the_audiocodes_redirect_service_answered_from_the_rules(tmp_path: Path) -> None:
    """A lab that points redirect.audiocodes.com at preprov: `GET /<MAC>` gets a 302 to
    the folder of the phone's rule URL, as the vendor's service answers."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed")
    sp = start_server(tmp_path)
    try:
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                            "-A", "AUDC/3.4.6.604 AUDC-IPPhone-C450HD_UC_3.4.6.604/1",
                            f"{sp.base}/00908F9D8992"], capture_output=True, text=True)  # fmt: skip
        assert r.stdout == f"302 http://127.0.0.1:{sp.port}/audiocodes/", r.stdout
        ev = sp.wait_event("redirect.answered")
        assert (ev["mac"], ev["vendor"], ev["rule"]) == ("00908F9D8992", "AudioCodes", "default")
    finally:
        assert sp.stop() == 0


def test_a_bare_mac_path_is_a_redirect_only_for_that_vendors_phones() -> None:
    from preprov.config import build_config
    from preprov.files.service import FileRequest, fetch
    from preprov.runtime import build_runtime

    rt = build_runtime(build_config({}), None)
    assert fetch(rt, FileRequest("http", "198.18.0.9", "/00908F9D8992")).status == 302
    other = fetch(rt, FileRequest("http", "198.18.0.9", "/0080F0C571EB"))
    assert other.status == 404 and b"no template matches" in other.body
    # Yealink's RPS request form (unverified against a capture), answered the same way
    rps = fetch(rt, FileRequest("http", "198.18.0.9", "/service.do?method=redirect&mac="
                                "00-15-65-4a-a9-37", user_agent=USER_AGENTS[1][0]))  # fmt: skip
    assert rps.status == 302 and rps.headers == [("Location", "http://127.0.0.1:8080/yealink/")]


# (vendor, the phone's MAC, its option 60 as dhclient sends it (hex for binary), the options
# it asks for with their dhclient names and types, and what each must carry)
POLY60 = (13885).to_bytes(4, "big") + bytes([15]) + b"\x02\x0dVVX_500-Model" + b"\xff"
DHCP_PHONES = [
    ("Polycom", "00:04:f2:00:00:01", ":".join(f"{b:02x}" for b in POLY60), {66: "folder"}),
    ("Cisco", "d0:ec:35:00:00:02", ":".join(f"{b:02x}" for b in b"Cisco Systems, Inc. IP Phone CP-8851-3PCC\x00"),
     {66: "folder", 160: "folder", 159: "host", 150: "ip"}),
    ("Grandstream", "00:0b:82:00:00:03", '"Grandstream GXP2135"', {66: "folder", 160: "folder"}),
    ("Gigaset", "7c:2f:80:00:00:04", '"Gigaset_N720_DM_PRO"', {114: "folder", 66: "folder"}),
    ("AudioCodes", "00:90:8f:00:00:05", None, {160: "folder", 66: "folder"}),
    ("Yealink", "80:5e:c0:00:00:06", '"yealink"', {66: "folder"}),
    ("Snom", "00:04:13:00:00:07", '"snomD785"', {66: "folder"}),
    ("Panasonic", "00:80:f0:00:00:08", '"Panasonic"', {160: "base", 66: "url", 67: "file"}),
]  # fmt: skip


def test_dhclient_as_each_vendor_gets_the_options_its_phones_read(lab: Lab, tmp_path: Path) -> None:
    """ISC dhclient with each vendor's MAC, option 60 (binary for Poly, NUL-terminated for
    Cisco) and requested options: the lease carries the URL in the form that vendor reads."""
    if shutil.which("dhclient") is None:
        pytest.fail("dhclient is not installed")
    srv = lab.host("srv")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    names = {66: ("tftp-server-name", None), 67: ("bootfile-name", None),
             150: ("v-150", "array of ip-address"), 159: ("v-159", "text"),
             160: ("v-160", "text"), 114: ("v-114", "text")}  # fmt: skip
    server, base = str(srv.ipv4.ip), f"http://{srv.ipv4.ip}:8080"
    want_form = {"folder": base + "/", "base": base, "url": base + "/{MODEL}.cfg",
                 "file": "{MODEL}.cfg", "host": server, "ip": server}  # fmt: skip
    try:
        for n, (vendor, mac, sixty, options) in enumerate(DHCP_PHONES):
            phone = lab.host(f"ph{n}", addresses=False)
            phone.exec("ip", "link", "set", "eth0", "address", mac)
            conf = tmp_path / f"{vendor}.conf"
            conf.write_text(
                "".join(f"option {names[c][0]} code {c} = {names[c][1]};\n"
                        for c in options if names[c][1])
                + (f"send vendor-class-identifier {sixty};\n" if sixty else "")
                + "request subnet-mask, routers, "
                + ", ".join(names[c][0] for c in options) + ";\ntimeout 10;\nretry 1;\n"
            )  # fmt: skip
            lease, pid = tmp_path / f"{vendor}.leases", tmp_path / f"{vendor}.pid"
            r = subprocess.run([*phone.prefix(), "dhclient", "-1", "-cf", str(conf), "-lf",
                                str(lease), "-pf", str(pid), "-sf", "/bin/true", "eth0"],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
            if pid.exists():
                subprocess.run(["kill", pid.read_text().strip()], check=False)
            assert r.returncode == 0, r.stderr[-1000:]
            text = lease.read_text()
            key = vendors.by_name(vendor).key  # type: ignore[union-attr]
            want_form["folder"] = f"{base}/{key}/"  # the default rule's url_base: its folder
            for code, form in options.items():
                line = next((ln for ln in text.splitlines()
                             if f"option {names[code][0]} " in ln), "")  # fmt: skip
                got = line.strip().split(" ", 2)[-1].rstrip(";").strip('"') if line else None
                assert got == want_form[form], (vendor, code, text)
        answered = [e for e in sp.events() if e.get("event") == "dhcp4.answered"
                    and e["message"] == "DHCPACK"]  # fmt: skip
        vendors_seen = {e["vendor"] for e in answered}
        assert {v for v, *_ in DHCP_PHONES} <= vendors_seen
        poly = next(e for e in answered if e["vendor"] == "Polycom")
        assert poly["model"] == "VVX_500-Model"
    finally:
        assert sp.stop() == 0


def test_unverified_forms_are_settings() -> None:
    from preprov.config import ConfigError, build_config
    from preprov.dhcp4.server import Dhcp4Policy

    c = build_config({"vendors": {"yealink": {"pnp_notify": "url", "dhcp4": {66: "url"}}}})
    assert c.vendors["yealink"].pnp_notify == "url"
    assert vendors.notify_form("Yealink", "http://h/y/x.cfg", {"yealink": "url"}) == "http://h/y/x.cfg"
    assert vendors.notify_form("Yealink", "http://h/y/x.cfg") == "http://h/y/"
    # the DHCP core sends a Yealink option 66 in the configured form instead of its folder
    from pydhcp.packet import DHCPMessage, DHCPMessageType

    from preprov.dhcp4.leases import LeaseTable, default_subnet
    from preprov.dhcp4.server import Dhcp4Server
    from test_dhcp4_core import IFACE, RULES, SERVER, T, msg

    sub = default_subnet(IFACE)
    for forms, want in (({}, b"http://198.18.0.1:8080/"),
                        ({"yealink": {66: "url"}}, b"http://198.18.0.1:8080/{MODEL}.cfg")):  # fmt: skip
        s = Dhcp4Server(Dhcp4Policy(server_ip=SERVER, rules=RULES, local=sub, vendor_forms=forms),
                        LeaseTable([sub]))  # fmt: skip
        out = s.datagram_received(msg(DHCPMessageType.DHCPDISCOVER, "805ec0000001"),
                                  ("0.0.0.0", 68), T)  # fmt: skip
        assert bytes(DHCPMessage.decode(out.sends[0].data).options[66]) == want
    with pytest.raises(ConfigError) as e:
        build_config({"vendors": {"yelink": {}}})
    assert "unknown vendor 'yelink'" in str(e.value)


# each vendor's own file in the bundled templates: (vendor, User-Agent, path under its folder)
OWN_FILES = [
    ("yealink", "Yealink SIP-T46G 28.72.0.1 00:15:65:4a:a9:37", "0015654aa937.cfg"),
    ("poly", "FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application", "0004f282e824.cfg"),
    ("cisco", "Cisco-CP-8851-3PCC/11.0.1 (d0ec35000002)", "8851-3PCC.xml"),
    ("cisco", "Cisco-CP-8851-3PCC/11.0.1 (d0ec35000002)", "d0ec35000002.xml"),
    ("grandstream", "Grandstream Model HW GXP2135 SW 1.0.7.97 DevId 000b828aa872", "cfg000b828aa872.xml"),
    ("snom", "Mozilla/4.0 (compatible; snomD785-SIP 10.1.33.33 2010.12 000413922D24 SXM:0)", "snomD785-000413922D24.htm"),
    ("fanvil", "Fanvil X4 2.10.2.6887 0c383e07e16c", "0c383e07e16c.cfg"),
    ("gigaset", "Gigaset N870 IP PRO/83.V2.11.0;7C2F80E0D605", "7C2F80E0D605.xml"),
    ("audiocodes", "AUDC-IPPhone/2.2.8.61 (440HDG-Rev0; 00908F602AAC)", "00908f602aac.cfg"),
]  # fmt: skip


def test_zero_config_serves_each_vendor_its_own_files(tmp_path: Path) -> None:
    """The default rule's url_base sends each vendor's phone to its own folder of the
    bundled templates; each file it asks for there is served in its vendor's format."""
    from preprov.config import build_config
    from preprov.files.lint import lint_vendor
    from preprov.files.service import FileRequest, fetch
    from preprov.runtime import build_runtime

    rt = build_runtime(build_config({"server": {"address": "198.18.0.1"}}), None)
    for key, ua, leaf in OWN_FILES:
        maker = vendors.by_name(key)
        assert maker is not None
        facts = vendors.from_user_agent(ua)
        assert facts is not None
        from preprov.ident import DeviceFacts

        decision = rt.site.rules.decide(DeviceFacts(mac=facts.mac, vendor=facts.vendor))
        assert decision is not None and decision.url == f"http://198.18.0.1:8080/{key}/", key
        ans = fetch(rt, FileRequest("http", "198.18.0.7", f"/{key}/{leaf}", user_agent=ua),
                    holder={"198.18.0.7": "0004F282E824"}.get)  # fmt: skip
        assert ans.status == 200, (key, leaf, ans.body)
        assert lint_vendor(key, ans.body) == [], (key, leaf, ans.body)
        if facts.mac and facts.mac[-6:].lower() in leaf.lower():  # its own file: its settings
            assert facts.mac[-6:] in ans.body.decode(), (key, ans.body)
    # a Panasonic still gets {MODEL}.cfg at the top
    pana = rt.site.rules.decide(DeviceFacts(mac="0080F0C571EB"))
    assert pana is not None and pana.url == "http://198.18.0.1:8080/{MODEL}.cfg"


def test_check_lints_every_vendors_templates(tmp_path: Path) -> None:
    from preprov.config import BUNDLED_TEMPLATES

    t = tmp_path / "t"
    shutil.copytree(BUNDLED_TEMPLATES, t)
    (t / "yealink" / "{mac}.cfg").write_text("account.1.enable = 1\n")  # no #!version line
    (t / "grandstream" / "cfg{mac}.xml").write_text("<gs_provision><config></gs_provision>\n")
    (t / "cisco" / "{mac}.xml").write_text("<flat>x</flat>\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("files:\n  templates: t\n")
    r = subprocess.run([sys.executable, "-m", "preprov", "check", "--config", str(cfg)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1
    assert "yealink/{mac}.cfg:1: error: the first line must be #!version:1.0.0.1" in r.stdout
    assert "grandstream/cfg{mac}.xml:1: error: not well-formed XML" in r.stdout
    assert "cisco/{mac}.xml: error: root element <flat>, expected <flat-profile>" in r.stdout
    assert "3 error(s)" in r.stderr


PERSONA_MACS = {"yealink": "80:5e:c0:00:01:01", "poly": "00:04:f2:00:01:02",
                "cisco": "d0:ec:35:00:01:03", "grandstream": "00:0b:82:00:01:04",
                "snom": "00:04:13:00:01:05", "fanvil": "0c:38:3e:00:01:06",
                "gigaset": "7c:2f:80:00:01:07", "audiocodes": "00:90:8f:00:01:08"}  # fmt: skip


def test_every_vendors_simulated_phone_is_provisioned_by_each_of_its_channels(
    lab: Lab, tmp_path: Path
) -> None:
    """`preprov phone --vendor X` against `serve --interface eth0` with no configuration:
    each vendor's phone boots without an address (DORA with its option 60), then takes
    its URL by SIP PnP in its dialect where it has one, else (and with PnP switched off)
    from the DHCP options it reads, and fetches its own files from the bundled templates
    in its vendor's format."""
    from preprov.phone.personas import PERSONAS

    srv = lab.host("srv")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        n = 0
        for key, mac in PERSONA_MACS.items():
            ways = ([[], ["--no-sippnp"]] if PERSONAS[key].pnp_user is not None else [[]])
            for switches in ways:
                n += 1
                phone = lab.host(f"v{n}", addresses=False)
                r = subprocess.run(
                    [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface",
                     "eth0", "--mac", mac, "--vendor", key, "--json", "--timeout", "30",
                     *switches], capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert r.returncode == 0, f"{key} {switches}: {r.stdout[-1500:]} {r.stderr[-500:]}"
                report = json.loads(r.stdout)
                via = report["channel"]
                if switches or PERSONAS[key].pnp_user is None:
                    assert via.startswith("dhcpv4-option-"), (key, via)
                else:
                    assert via == "sip-pnp", (key, via)
                assert report["url"].endswith(f"/{key}/"), report["url"]
                assert all(f["status"] == 200 for f in report["files"] if f["required"]), report
        subs = [e for e in sp.events() if e.get("event") == "pnp.subscribe"]
        audiocodes = next(e for e in subs if e.get("vendor") == "AudioCodes")
        assert audiocodes["mac"] == "00908F000108" and "no MAC in the SUBSCRIBE" in audiocodes["note"]
    finally:
        assert sp.stop() == 0


def test_tftp_hpa_fetches_a_cisco_first_profile(lab: Lab, tmp_path: Path) -> None:
    """A Cisco given only the server's address tries TFTP first: its `$PSN.xml` from
    the bundled templates, over tftp-hpa, in its format, sending it on to `$MA.xml`."""
    from preprov.files.lint import lint_vendor

    if shutil.which("tftp") is None:
        pytest.fail("tftp-hpa is not installed")
    srv, phone = lab.host("srv"), lab.host("phone")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        got = tmp_path / "8851-3PCC.xml"
        r = subprocess.run([*phone.prefix(), "tftp", "-m", "binary", str(srv.ipv4.ip), "-c",
                            "get", "cisco/8851-3PCC.xml", str(got)], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
        assert r.returncode == 0 and got.exists(), r.stdout + r.stderr
        body = got.read_bytes()
        assert lint_vendor("cisco", body) == []
        assert f"http://{srv.ipv4.ip}:8080/cisco/$MA.xml".encode() in body
    finally:
        assert sp.stop() == 0


def test_a_crafted_long_user_agent_costs_no_more_than_a_phones() -> None:
    """Only the first 256 characters are looked at: a 16 KiB User-Agent made to make the
    vendors' patterns backtrack is read like a short one (the pattern steps, not time,
    are what is compared: the same answer as for its first 256 characters)."""
    crafted = "Grandstream GXP" + "1" * 16000
    assert vendors.from_user_agent(crafted) == vendors.from_user_agent(crafted[:256])
    assert vendors.MAX_USER_AGENT == 256
    assert vendors.from_user_agent("x" * 300 + "Panasonic_KX-HDV130/01.000 (0080f0c571eb)") is None
