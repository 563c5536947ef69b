"""Installed as a user installs it: a wheel built from the checkout, put in a fresh venv
outside the repository, serves a simulated phone end to end with zero configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from preprov.lab import Lab

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_in_a_fresh_venv_serves_a_phone_with_zero_config(
    lab: Lab, tmp_path: Path
) -> None:
    # from a copy of what a clean checkout holds: a build leaves build/ where it runs
    src = tmp_path / "src"
    shutil.copytree(ROOT / "server", src / "server",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(dist), str(src)], check=True, cwd=tmp_path)  # fmt: skip
    (wheel,) = dist.glob("preprov-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True,
                   cwd=tmp_path)  # fmt: skip
    # the installed package, not the checkout: nothing of the repository on its path
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import preprov.config as c; print(c.CONFIGS_DIR)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout  # fmt: skip
    assert where.startswith(str(venv)), where
    srv = lab.host("srv")
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [*srv.prefix(), str(venv / "bin" / "preprov"), "serve", "--interface", "eth0",
             "--log-format", "json"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        phone = lab.host("phone")
        r = subprocess.run(
            [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface", "eth0",
             "--mac", "00:80:F0:00:00:01", "--model", "KX-HDV130", "--timeout", "30"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{log.read_text()[-2000:]}"
        assert "provisioned through sip-pnp" in r.stdout
        assert (tmp_path / "state" / "preprov.db").exists()  # ./state of where it was started
    finally:
        server.terminate()
        assert server.wait(10) == 0, log.read_text()[-2000:]
