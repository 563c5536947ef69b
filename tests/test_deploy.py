"""The compose file: valid, and its `ci` topology run for real with namespaces on a bridge."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from preprov.lab import Lab
from serverproc import start_server

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict[str, object]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_docker_compose_accepts_the_file() -> None:
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is not installed")
        pytest.skip("docker-compose is not installed")
    for profile in ([], ["--profile", "ci"]):
        r = subprocess.run(["docker-compose", *profile, "config", "-q"], cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
    services = subprocess.run(["docker-compose", "--profile", "ci", "config", "--services"],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert set(services) == {"preprov", "server-ci", "phones"}
    c = compose()
    assert c["services"]["preprov"]["network_mode"] == "host"  # type: ignore[index]


def test_the_ci_profile_topology_on_a_bridge(lab: Lab, tmp_path: Path) -> None:
    """The server and the phones service of the `ci` profile, with the phones' own
    commands, as network namespaces on one Linux bridge (no Docker engine here)."""
    services = compose()["services"]
    script = services["phones"]["command"][0]  # type: ignore[index]
    commands = [shlex.split(part.strip()) for part in script.split("&&") if "preprov phone" in part]
    assert len(commands) == 3
    srv = lab.host("server-ci")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        for i, argv in enumerate(commands):
            phone = lab.host(f"phone{i}")
            r = subprocess.run([*phone.prefix(), sys.executable, "-m", *argv], capture_output=True,
                               text=True, timeout=90)  # fmt: skip
            assert r.returncode == 0, f"{argv}: {r.stderr[-500:]}"
            assert "provisioned through" in r.stdout
    finally:
        assert sp.stop() == 0
