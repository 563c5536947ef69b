"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from preprov.lab import Lab
from serverproc import start_server

BROWSER_SCRIPT = r"""
import json, sys, time
from playwright.sync_api import sync_playwright
admin, shot, mac = sys.argv[1], sys.argv[2], sys.argv[3]
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])
    page = b.new_page(viewport={"width": 1400, "height": 700})
    page.goto(admin + "/")
    page.wait_for_selector("#live:has-text('live')", timeout=10000)
    print("READY", flush=True)
    sys.stdin.readline()  # the test boots a phone now
    row = page.locator(f"tr.device[data-mac='{mac}'] td.stage")
    row.wait_for(timeout=20000)
    page.wait_for_function(
        "mac => [...document.querySelectorAll('tr.device')].some(tr => tr.dataset.mac === mac"
        " && tr.querySelector('td.stage').textContent === 'provisioned')", arg=mac, timeout=20000)
    page.locator(f"tr.device[data-mac='{mac}']").click()
    page.wait_for_selector("#timeline pre", timeout=5000)
    page.fill("#manifest", f"{mac}\n0080F0FFFFFF\n")
    page.fill("#bname", "shipment-1")
    page.fill("#token", "t0ken")
    page.click("#upload")
    page.wait_for_selector(".batch", timeout=5000)
    page.screenshot(path=shot, full_page=True)
    print(json.dumps({"stage": row.text_content(), "timeline": page.text_content("#timeline"),
                      "batch": page.text_content("#batches")}), flush=True)
    b.close()
"""


def test_dashboard_shows_a_phone_reach_provisioned(lab: Lab, tmp_path: Path) -> None:
    if not Path("/usr/bin/chromium").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed")
        pytest.skip("chromium is not installed")
    pytest.importorskip("playwright")
    srv = lab.host("srv")
    phone = lab.host("phone")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("admin:\n  token: t0ken\n")
    sp = start_server(
        tmp_path, "--interface", "eth0", "--config", str(cfg), netns=srv.ns, port=8080
    )
    shot = tmp_path / "dashboard.png"
    try:
        # the browser runs in the server's namespace, where the admin listener is (loopback)
        browser = subprocess.Popen(
            [*srv.prefix(), sys.executable, "-c", BROWSER_SCRIPT, sp.admin, str(shot), "0080F0C571EB"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert browser.stdout is not None and browser.stdin is not None
        assert browser.stdout.readline().strip() == "READY", (
            browser.stderr.read() if browser.stderr else ""
        )
        r = subprocess.run(
            [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface", "eth0",
             "--mac", "0080F0C571EB", "--model", "KX-HDV130"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        browser.stdin.write("go\n")
        browser.stdin.flush()
        out, err = browser.communicate(timeout=90)
        assert browser.returncode == 0, err[-2000:]
        seen = json.loads(out.strip().splitlines()[-1])
        assert seen["stage"] == "provisioned"
        assert "pnp.notify-acked" in seen["timeline"] and "file.served" in seen["timeline"]
        # the batch was made after the phone's boot: that boot does not count for it
        assert (
            "shipment-1: 0 of 2" in seen["batch"]
            and "0080F0C571EB (no boot since the batch was created" in seen["batch"]
            and "0080F0FFFFFF (no packet from this MAC)" in seen["batch"]
        )
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("PREPROV_SCREENSHOT_DIR")  # to look at it afterwards
        if keep:
            shutil.copy(shot, Path(keep) / "dashboard.png")
    finally:
        assert sp.stop() == 0
