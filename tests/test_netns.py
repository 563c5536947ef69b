"""Zero-config across a network: the server in one namespace, a phone in another."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from preprov.files.lint import lint
from preprov.lab import Lab
from serverproc import start_server


def test_zero_config_on_an_interface_serves_a_phone_on_another_host(
    lab: Lab, tmp_path: Path
) -> None:
    srv = lab.host("srv")
    phone = lab.host("phone")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        addr = str(srv.ipv4.ip)
        started = sp.wait_event("server.started")
        assert started["server_address"] == addr
        assert f"http://{addr}:8080/" in started["listening"]  # type: ignore[operator]
        assert f"http://[{srv.ipv6.ip}]:8080/" in started["listening"]  # type: ignore[operator]
        ua = "Panasonic_KX-HDV130/01.000 (0080f0c571eb)"
        curl = [*phone.prefix(), "curl", "-sS", "--max-time", "5", "-A", ua]
        pre = subprocess.run([*curl, f"http://{addr}:8080/KX-HDV130.cfg"], capture_output=True)
        assert pre.returncode == 0, pre.stderr
        assert lint(pre.stdout) == []
        want = f'CFG_STANDARD_FILE_PATH="http://{addr}:8080/Config{{MAC}}.cfg"\r\n'.encode()
        assert want in pre.stdout
        url = f"http://{addr}:8080/Config0080F0C571EB.cfg"
        per = subprocess.run([*curl, url], capture_output=True).stdout
        assert lint(per) == [] and f'SIP_RGSTR_ADDR_1="{addr}"'.encode() in per
        v6 = subprocess.run(
            [*curl, "-g", f"http://[{srv.ipv6.ip}]:8080/ConfigCommon.cfg"], capture_output=True
        )
        assert v6.returncode == 0 and lint(v6.stdout) == []
    finally:
        assert sp.stop() == 0
    inv = subprocess.run(
        [sys.executable, "-m", "preprov", "inventory", "--state-dir", str(sp.state_dir), "--json"],
        capture_output=True,
        check=True,
    )
    (dev,) = [d for d in json.loads(inv.stdout) if d["mac"] == "0080F0C571EB"]
    assert (dev["model"], dev["fwver"]) == ("KX-HDV130", "01.000")
    assert (dev["ipv4"], dev["ipv6"]) == (str(phone.ipv4.ip), str(phone.ipv6.ip))


def test_interfaces_from_the_file_alone_bring_pnp_and_dhcp(lab: Lab, tmp_path: Path) -> None:
    """`serve --config` with server.interfaces only in the file: no flag empties them."""
    cfg = tmp_path / "lab.yaml"
    cfg.write_text("server:\n  interfaces: [eth0]\n")
    srv = lab.host("srv")
    checked = subprocess.run([*srv.prefix(), sys.executable, "-m", "preprov", "check", "--config",
                              str(cfg)], capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "sip-pnp: on eth0" in checked.stdout and "dhcpv4: on eth0" in checked.stdout
    sp = start_server(tmp_path, "--config", str(cfg), netns=srv.ns, port=8080)
    try:
        services = sp.wait_event("server.started")["services"]
        assert {"sip-pnp", "dhcpv4", "dhcpv6", "tftp"} <= set(services)  # type: ignore[arg-type]
        for n, switches in enumerate(([], ["--no-sippnp"])):
            phone = lab.host(f"phone{n}", addresses=False)
            r = subprocess.run(
                [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface", "eth0",
                 "--mac", f"00:80:F0:00:00:0{n + 1}", *switches, "--timeout", "30"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr
            via = "sip-pnp" if not switches else "dhcpv4-option-160"
            assert f"provisioned through {via}" in r.stdout, r.stdout
    finally:
        assert sp.stop() == 0


def test_a_phone_booted_twice_is_judged_on_its_latest_boot(lab: Lab, tmp_path: Path) -> None:
    """First boot provisioned; a batch made; the second boot fails (the rules changed:
    none is for its model any more): the API's status and the batch say it failed on
    this boot, and why."""
    import signal
    import time

    cfg = tmp_path / "lab.yaml"
    cfg.write_text("inventory:\n  new_boot_after: 3\n")
    srv, phone = lab.host("srv"), lab.host("phone")
    sp = start_server(tmp_path, "--interface", "eth0", "--config", str(cfg), "--admin-token",
                      "t0ken", netns=srv.ns, port=8080)  # fmt: skip

    def api(path: str, *curl: str) -> object:
        r = subprocess.run([*srv.prefix(), "curl", "-sS", "--max-time", "5", *curl,
                            sp.admin + path], capture_output=True, text=True, check=True)  # fmt: skip
        return json.loads(r.stdout)

    def boot() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface", "eth0",
             "--mac", "00:80:F0:C5:71:EB", "--model", "KX-HDV130", "--timeout", "30"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    try:
        assert boot().returncode == 0
        (dev,) = api("/api/status")  # type: ignore[misc]
        assert (dev["stage"], dev["boots"]) == ("provisioned", 1)
        batch = api("/api/batches?name=second", "-H", "Authorization: Bearer t0ken",
                    "--data-binary", "mac\n0080F0C571EB\n")  # fmt: skip
        cfg.write_text("inventory:\n  new_boot_after: 3\nrules:\n  - name: only-430\n"
                       "    match: {model: [KX-HDV430]}\n"
                       "    url: http://${server}:${http_port}/{MODEL}.cfg\n")
        sp.proc.send_signal(signal.SIGHUP)
        sp.wait_event("config.reloaded")
        time.sleep(3.5)  # the quiet spell that makes the next SUBSCRIBE a new boot
        second = boot()
        assert second.returncode == 1 and "not provisioned" in second.stderr
        why = "only-430: model KX-HDV130 matches none of its prefixes"
        (dev,) = api("/api/status")  # type: ignore[misc]
        assert dev["boots"] == 2 and dev["stage"] == "seen" and dev["provisioned_at"] is None
        assert why in dev["last_error"]
        report = api(f"/api/batches/{batch['id']}")  # type: ignore[index]
        assert report["provisioned"] == 0  # type: ignore[index]
        (missing,) = report["missing"]  # type: ignore[index]
        assert missing["stage"] == "seen" and why in missing["reason"]
    finally:
        assert sp.stop() == 0
