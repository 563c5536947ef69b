"""The commands as a user types them: check, render, inventory, serve refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from preprov.config import BUNDLED_TEMPLATES, CONFIGS_DIR


def preprov(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "preprov", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_check_accepts_the_bundled_example() -> None:
    r = preprov("check", "--config", str(CONFIGS_DIR / "lab.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("ok")


def test_check_refuses_a_url_too_long_after_expansion(tmp_path: Path) -> None:
    url = "http://198.18.0.1/" + "d" * 360 + "/{MODEL}.cfg"  # 390 once KX-TGP500B09 is in
    cfg = tmp_path / "long.yaml"
    cfg.write_text(f"rules:\n  - name: long\n    url: {url}\n")
    r = preprov("check", "--config", str(cfg))
    assert r.returncode == 1
    assert f"{cfg}:3: rules[0].url: 395 characters after expanding the macros" in r.stderr
    assert "at most 384" in r.stderr


def test_check_refuses_a_template_that_breaks_the_format(tmp_path: Path) -> None:
    t = tmp_path / "t"
    shutil.copytree(BUNDLED_TEMPLATES, t)
    (t / "Config{MODEL}.cfg").write_text(
        "# Panasonic SIP Phone Standard Format File # DO NOT CHANGE THIS LINE!\n"
        "# comment\n"
        'CFG_RESYNC_TIME="03:00"\n'
        "SIP_PRXY_ADDR_1 = {{ server }}\n"
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text("files:\n  templates: t\n")
    r = preprov("check", "--config", str(cfg))
    assert r.returncode == 1
    assert "Config{MODEL}.cfg:4: error: spaces around '='" in r.stdout
    assert "(rendered for 0080F0000001 KX-HDV100)" in r.stdout
    assert "1 error(s)" in r.stderr


def test_check_reports_a_template_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "x.cfg").write_text("line one\n{{ broken\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"files:\n  templates: {tmp_path}\n")
    r = preprov("check", "--config", str(cfg))
    assert r.returncode == 1
    assert "files.templates: x.cfg:2: template syntax" in r.stderr


def test_serve_refuses_to_start_on_what_check_reports(tmp_path: Path) -> None:
    """A template that does not compile, a rule on a misspelt model: no server starts."""
    import subprocess
    import sys

    (tmp_path / "x.cfg").write_text("line one\n{{ broken\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"files:\n  templates: {tmp_path}\n")
    from serverproc import free_port

    serve = [sys.executable, "-m", "preprov", "serve", "--http-port", str(free_port()),
             "--admin-port", "0",
             "--state-dir", str(tmp_path / "state"), "--config", str(cfg)]  # fmt: skip
    r = subprocess.run(serve, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "x.cfg:2: template syntax" in r.stderr
    (tmp_path / "x.cfg").unlink()
    cfg.write_text("models: [KX-HDV130]\nrules:\n  - name: typo\n    match: {model: [KX-HVD130]}\n"
                   "    url: http://${server}:${http_port}/{MODEL}.cfg\n")
    r = subprocess.run(serve, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"{cfg}:4: rules[0].match.model: error: 'KX-HVD130' starts none" in r.stderr


def test_check_reports_each_mistake_with_file_line_key_and_reason(tmp_path: Path) -> None:
    t = tmp_path / "t"
    shutil.copytree(BUNDLED_TEMPLATES, t)
    cfg = tmp_path / "lab.yaml"
    cfg.write_text(
        "files:\n  templates: t\n"
        "models: [KX-HDV130, KX-HDV430]\n"
        "rules:\n"
        "  - name: typo\n    match: {model: [KX-HVD130]}\n"
        "    url: http://${server}:${http_port}/{MODEL}.cfg\n"
        "  - name: nowhere\n    url: http://${server}:${http_port}/sub/x{MODEL}.xml\n"
        "  - name: locked\n    url: http://${server}:${http_port}/{MODEL}.cfg\n"
        "    auth: digest\n"
    )
    r = preprov("check", "--config", str(cfg), "-i", "lo")
    assert r.returncode == 1
    out = r.stdout
    assert f"{cfg}:6: rules[0].match.model: error: 'KX-HVD130' starts none" in out
    assert f"{cfg}:6: rules[0].match.model: warning: DHCP requests carry no model" in out
    assert (f"{cfg}:9: rules[1].url: error: a KX-HDV130 is sent to /sub/xKX-HDV130.xml, which"
            " matches no template") in out
    assert f"{cfg}:12: rules[2].auth: error: auth: digest, but the URL has no user:password" in out
    assert "3 error(s)" in r.stderr
    # YAML keys given twice, and a ;-separated variables file
    cfg.write_text("http:\n  port: 80\n  port: 81\n")
    r = preprov("check", "--config", str(cfg))
    assert r.returncode == 1 and f"{cfg}:3: http.port: given twice" in r.stderr
    (tmp_path / "v.csv").write_text("mac;sip_user\n0080F0000001;1\n")
    cfg.write_text("files:\n  variables: v.csv\n")
    r = preprov("check", "--config", str(cfg))
    assert r.returncode == 1 and "v.csv:1: the header is separated by ';'" in r.stderr


def test_render_prints_what_the_phone_receives(tmp_path: Path) -> None:
    r = preprov(
        "render",
        "--config",
        str(CONFIGS_DIR / "lab.yaml"),
        "--mac",
        "00-80-F0-C5-71-EB",
        "--model",
        "KX-HDV130N",
    )
    assert r.returncode == 0, r.stderr
    assert "rule=reception-phone template={MODEL}.cfg path=/KX-HDV130N.cfg status=200" in r.stderr
    assert 'CFG_STANDARD_FILE_PATH="http://127.0.0.1:8080/Config{MAC}.cfg"' in r.stdout
    r = preprov(
        "render",
        "--config",
        str(CONFIGS_DIR / "lab.yaml"),
        "--mac",
        "0080f0c571eb",
        "--model",
        "KX-HDV130",
        "--path",
        "/Config0080F0C571EB.cfg",
    )
    assert 'DISPLAY_NAME_1="Reception"' in r.stdout
    r = preprov("render", "--mac", "0080f0c571eb", "--model", "KX-HDV130", "--path", "/nope")
    assert r.returncode == 1 and "no template matches /nope" in r.stderr


def test_serve_refuses_a_bad_config_naming_file_key_and_reason(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("http:\n  port: 8080\n  tls: yes\n")
    r = preprov("serve", "--config", str(cfg))
    assert r.returncode == 1
    assert f"{cfg}:3: http.tls: unknown key" in r.stderr


def test_serve_refuses_an_unknown_interface(tmp_path: Path) -> None:
    r = preprov("serve", "--interface", "nosuch0", "--state-dir", str(tmp_path))
    assert r.returncode == 1
    assert "server.interfaces: interface 'nosuch0' does not exist (this host has: " in r.stderr


def test_inventory_without_state() -> None:
    r = preprov("inventory", "--state-dir", "/nonexistent")
    assert r.returncode == 1 and "no inventory at /nonexistent/preprov.db" in r.stderr


def test_demo_provisions_its_phones() -> None:
    from conftest import lab_or_skip

    lab_or_skip()  # skips (or fails under CI) when no namespaces can be made
    r = preprov("demo", "--phones", "2", "--vendors", "all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "10 of 10 phones provisioned" in r.stdout  # 2 Panasonic, one of each other vendor
    assert r.stdout.count(" provisioned\n") == 10
    for name in ("Yealink T46S", "Poly VVX_500", "Cisco CP-8851-3PCC", "Grandstream GXP2135",
                 "Snom snomD785", "Fanvil X4", "Gigaset N870 IP PRO", "Audiocodes 440HD"):
        assert name in r.stdout
    bad = preprov("demo", "--vendors", "nokia")
    assert bad.returncode == 2 and "unknown vendor 'nokia'" in bad.stderr


def test_check_warns_of_vendor_folders_missing_under_url_base(tmp_path: Path) -> None:
    t = tmp_path / "t"
    t.mkdir()
    for f in BUNDLED_TEMPLATES.glob("*.cfg"):  # the Panasonic files only
        shutil.copy(f, t / f.name)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("files:\n  templates: t\n")
    r = preprov("check", "--config", str(cfg))
    assert r.returncode == 0, r.stderr  # a warning: a Panasonic-only lab is right
    assert "rules[0].url_base: warning: phones of yealink, poly, cisco" in r.stdout
    assert "holds no template" in r.stdout
