"""SIP PnP across namespaces: sipp as the phone, preprov serve --interface as the server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from preprov.files.lint import lint
from preprov.lab import Lab
from preprov.macros import expand_macros
from serverproc import ServerProc, start_server
from sipp import SCENARIOS, injection, run_sipp

pytestmark = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp (sip-tester) is not installed"
)


def events(sp: ServerProc, kind: str) -> list[dict[str, object]]:
    return [e for e in sp.events() if e.get("event") == kind]


@pytest.mark.parametrize(
    ("scenario", "mac", "port", "model"),
    [
        ("panasonic", "0080F0C571EB", 5060, "KX-HDV130"),
        ("yealink", "805EC0123456", 5059, "T46S"),
        ("snom", "000413874B49", 5060, None),
        ("grandstream", "000B82AABBCC", 5080, "GRP2612W"),
        # no MAC in its SUBSCRIBE, and this phone holds no lease: found by nothing
        ("audiocodes", None, 5060, "440HD"),
    ],
)
def test_sipp_scenarios_against_zero_config(
    lab: Lab, tmp_path: Path, scenario: str, mac: str | None, port: int, model: str | None
) -> None:
    srv = lab.host("srv")
    phone = lab.host("phone")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        run = run_sipp(phone, scenario, tmp_path, [mac or "00908F000001"], port=port)
        assert (run.returncode, run.successful, run.failed) == (0, 1, 0), (
            run.stdout[-2000:] + run.errors
        )
        # each sent its own URL under the default rule's url_base: a Panasonic
        # {MODEL}.cfg, the others their vendor's folder of the bundled templates
        want = "{MODEL}.cfg" if scenario == "panasonic" else f"{scenario}/"
        assert run.urls == [f"http://{srv.ipv4.ip}:8080/{want}"]
        # the phone's 200 to the NOTIFY is sipp's last step: it may exit before the server
        # has read that 200 and logged it
        sp.wait_event("pnp.notify-acked")
        acked = events(sp, "pnp.notify-acked")
        assert len(acked) == 1 and acked[0]["mac"] == mac and acked[0]["status"] == 200
        assert acked[0].get("model") == model
        sub = events(sp, "pnp.subscribe")[0]
        assert sub["client"] == str(phone.ipv4.ip)
        if scenario == "panasonic":
            # the URL, with the phone's macros expanded, serves the Panasonic file
            url = expand_macros(run.urls[0], mac, "KX-HDV130", "01.000")
            ua = f"Panasonic_KX-HDV130/01.000 ({mac.lower()})"
            body = subprocess.run(
                [*phone.prefix(), "curl", "-sS", "--max-time", "5", "-A", ua, url],
                capture_output=True, check=True,
            ).stdout  # fmt: skip
            assert lint(body) == [] and b"CFG_STANDARD_FILE_PATH" in body
    finally:
        assert sp.stop() == 0


def test_one_server_answers_phones_on_two_interfaces(tmp_path: Path) -> None:
    from conftest import lab_or_skip

    with lab_or_skip() as a, Lab(index=a.index + 1) as b:
        srv = a.host("srv")
        leg2 = b.attach(srv.ns, "eth1")
        phone_a = a.host("pa")
        phone_b = b.host("pb")
        sp = start_server(
            tmp_path, "--interface", "eth0", "--interface", "eth1", netns=srv.ns, port=8080
        )
        try:
            ra = run_sipp(phone_a, "panasonic", tmp_path, ["0080F0000A01"])
            rb = run_sipp(phone_b, "panasonic", tmp_path, ["0080F0000B01"])
            assert (ra.successful, rb.successful) == (1, 1), ra.stdout[-1500:] + rb.stdout[-1500:]
            # each phone is sent the address of the interface it can reach
            assert ra.urls == [f"http://{srv.ipv4.ip}:8080/{{MODEL}}.cfg"]
            assert rb.urls == [f"http://{leg2.ipv4.ip}:8080/{{MODEL}}.cfg"]
            # and the pre-provisioning file fetched over eth1 points at eth1's address
            ua = "Panasonic_KX-HDV130/01.000 (0080f0000b01)"
            body = subprocess.run(
                [*phone_b.prefix(), "curl", "-sS", "--max-time", "5", "-A", ua,
                 f"http://{leg2.ipv4.ip}:8080/KX-HDV130.cfg"], capture_output=True, check=True,
            ).stdout  # fmt: skip
            assert f'"http://{leg2.ipv4.ip}:8080/Config{{MAC}}.cfg"'.encode() in body
        finally:
            assert sp.stop() == 0


def test_a_flood_from_one_source_is_rate_limited_and_others_are_served(
    lab: Lab, tmp_path: Path
) -> None:
    srv = lab.host("srv")
    flooder = lab.host("flood")
    phone = lab.host("phone")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        flood_dir = tmp_path / "flood"
        flood_dir.mkdir()
        macs = [f"0080F0{i:06X}" for i in range(1000)]
        proc = subprocess.Popen(
            [*flooder.prefix(), "sipp", "-sf", str(SCENARIOS / "panasonic.xml"),
             "224.0.1.75:5060", "-i", str(flooder.ipv4.ip), "-p", "5060", "-m", "1000",
             "-r", "1000", "-inf", str(injection(flood_dir / "f.csv", macs)),
             "-timeout", "15s", "-nostdin", "-recv_timeout", "2000", "-max_retrans", "1"],
            cwd=flood_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        run = run_sipp(phone, "panasonic", tmp_path, ["0080F0C571EB"], timeout=10)
        flood_out, _ = proc.communicate(timeout=60)
        assert run.successful == 1, run.stdout[-1500:]
        # most of the flood went unanswered
        failed = re.search(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", flood_out)
        assert failed and int(failed.group(1)) > 900, flood_out[-1500:]
        limited = [
            e for e in events(sp, "pnp.ignored") if str(e["reason"]).startswith("rate limit")
        ]
        assert limited and all(e["client"] == str(flooder.ipv4.ip) for e in limited)
        answered = [e for e in events(sp, "pnp.answered") if e["client"] == str(flooder.ipv4.ip)]
        # 20 at once, then 10 a second, for the ~1 s the flood lasts (and its retransmissions)
        assert 20 <= len(answered) <= 60, len(answered)
    finally:
        assert sp.stop() == 0


def test_simulated_phone_is_provisioned_over_pnp(lab: Lab, tmp_path: Path) -> None:
    srv = lab.host("srv")
    phone = lab.host("phone")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        r = subprocess.run(
            [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface", "eth0",
             "--mac", "0080F0C571EB", "--model", "KX-HDV130", "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr
        report = json.loads(r.stdout)
        assert report["provisioned"] and report["channel"] == "sip-pnp"
        base = f"http://{srv.ipv4.ip}:8080/"
        assert report["url"] == base + "{MODEL}.cfg"
        assert [(f["url"], f["status"]) for f in report["files"]] == [
            (base + "KX-HDV130.cfg", 200),
            (base + "Config0080F0C571EB.cfg", 200),
            (base + "ConfigKX-HDV130.cfg", 200),
            (base + "ConfigCommon.cfg", 200),
        ]
        assert report["settings"]["SIP_AUTHID_1"] == "0080f0c571eb"
        steps = [s["step"] for s in report["steps"]]
        assert steps[:4] == ["boot", "pnp.subscribe-sent", "pnp.200", "pnp.notify"]
        assert steps[-1] == "provisioned"
        # the server's inventory saw the whole flow for this device
        kinds = [e["event"] for e in sp.events() if e.get("mac") == "0080F0C571EB"]
        assert kinds[:4] == ["pnp.subscribe", "pnp.answered", "pnp.notify-sent", "pnp.notify-acked"]
        assert kinds.count("file.served") == 4
    finally:
        assert sp.stop() == 0


def test_simulated_phone_without_a_server_says_why(lab: Lab) -> None:
    phone = lab.host("phone")
    r = subprocess.run(
        [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface", "eth0",
         "--mac", "0080F0C571EB"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1
    assert "not provisioned: no channel gave a URL (sip-pnp: no answer within 5 s;" in r.stderr


def test_simulated_phone_over_https_trusting_the_lab_ca(lab: Lab, tmp_path: Path) -> None:
    srv = lab.host("srv")
    phone = lab.host("phone")
    cfg = tmp_path / "tls.yaml"
    cfg.write_text(
        "https:\n  enabled: true\n"
        "rules:\n  - name: tls\n    url: https://${server}:${https_port}/{MODEL}.cfg\n"
    )
    sp = start_server(
        tmp_path, "--interface", "eth0", "--config", str(cfg), netns=srv.ns, port=8080
    )
    try:
        # the CA, as an operator downloads it (the admin listener is on the server's loopback)
        ca = subprocess.run(
            [*srv.prefix(), "curl", "-sS", sp.admin + "/api/ca.crt"],
            capture_output=True,
            check=True,
        ).stdout
        (tmp_path / "ca.crt").write_bytes(ca)
        base = [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface", "eth0",
                "--mac", "0080F0C571EB", "--json"]  # fmt: skip
        untrusted = subprocess.run(base, capture_output=True, text=True, timeout=60)
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout
        r = subprocess.run([*base, "--cacert", str(tmp_path / "ca.crt")], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr + r.stdout[-1500:]
        report = json.loads(r.stdout)
        assert report["url"].startswith(f"https://{srv.ipv4.ip}:8443/")
        assert all(f["url"].startswith("https://") and f["status"] == 200 for f in report["files"])
    finally:
        assert sp.stop() == 0
