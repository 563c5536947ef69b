"""The compose file: valid, and its `ci` topology run for real with namespaces on a bridge."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from preprov.lab import Lab
from serverproc import start_server

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict[str, object]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is not installed")
        pytest.skip("docker-compose is not installed")
    return found


def test_docker_compose_accepts_every_profile() -> None:
    dc = docker_compose()
    env = {k: v for k, v in os.environ.items() if k != "PREPROV_INTERFACE"}
    for profile in ([], ["--profile", "lan"], ["--profile", "ci"], ["--profile", "scale"]):
        r = subprocess.run([dc, *profile, "config", "-q"], cwd=ROOT, env=env,
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
    c = compose()["services"]

    def services(profile: str) -> set[str]:  # docker-compose 1.29 lists all in `config`
        return {name for name, svc in c.items() if profile in svc.get("profiles", [])}  # type: ignore[attr-defined]

    # a bare `up` starts nothing (every service has a profile): no DHCP on the host's LAN
    assert all(svc.get("profiles") for svc in c.values())  # type: ignore[attr-defined]
    assert services("lan") == {"preprov"}
    assert services("ci") == {"server-ci", "phones"}
    assert services("scale") == {"postgres", "server-1", "server-2", "scale-phones"}
    assert c["preprov"]["network_mode"] == "host"  # type: ignore[index]
    assert c["phones"]["depends_on"]["server-ci"]["condition"] == "service_healthy"  # type: ignore[index]


def lan_script(lab_dir: Path, state: Path) -> str:
    """The lan service's start script, with its container paths moved to the test's."""
    script = str(compose()["services"]["preprov"]["command"][0])  # type: ignore[index]
    return (script.replace("$$", "$").replace("/etc/preprov", str(lab_dir))
            .replace("/var/lib/preprov", str(state)))  # fmt: skip


def test_the_lan_service_refuses_without_an_interface(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREPROV_INTERFACE"}
    r = subprocess.run(["sh", "-c", lan_script(tmp_path, tmp_path)], env=env,
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2
    assert "set PREPROV_INTERFACE to the phone-facing interface" in r.stderr


def test_the_lan_service_serves_the_mounted_lab(lab: Lab, tmp_path: Path) -> None:
    """Its script in a namespace, with a folder made by `preprov init` where the bind mount
    would be: the server takes lab.yaml from there, on the named interface."""
    lab_dir = tmp_path / "lab"
    subprocess.run([sys.executable, "-m", "preprov", "init", str(lab_dir)], check=True,
                   capture_output=True)  # fmt: skip
    (lab_dir / "lab.yaml").write_text((lab_dir / "lab.yaml").read_text().replace(
        "  port: 8081 ", "  port: 0 "))  # fmt: skip
    srv = lab.host("srv")
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PREPROV_INTERFACE="eth0", PATH=f"{bindir}:{os.environ['PATH']}")
    log = tmp_path / "lan.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*srv.prefix(), "sh", "-c", lan_script(lab_dir, tmp_path / "state")],
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while b'"server.started"' not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        started = next(json.loads(line) for line in log.read_text().splitlines()
                       if '"server.started"' in line)  # fmt: skip
        assert started["config"] == str(lab_dir / "lab.yaml")
        assert {"sip-pnp", "dhcpv4", "http"} <= set(started["services"])
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, log.read_text()[-2000:]


def test_the_ci_profile_topology_on_a_bridge(lab: Lab, tmp_path: Path) -> None:
    """The server-ci and phones services of the `ci` profile, with their own commands, as
    network namespaces on one Linux bridge (no Docker engine here): the image's health
    check passes before the phones start, the phones and the final API check succeed."""
    services = compose()["services"]
    argv = list(services["server-ci"]["command"])  # type: ignore[index]
    for flag in ("--state-dir", "--log-format"):  # start_server sets its own
        i = argv.index(flag)
        del argv[i : i + 2]
    srv = lab.host("server-ci")
    sp = start_server(tmp_path, *argv[1:], "--admin-port", "8081", netns=srv.ns, port=8080)
    try:
        dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
        health = json.loads(re.search(r"HEALTHCHECK .*?CMD (\[.*?\])\n", dockerfile, re.S)[1])  # type: ignore[index]
        health[0] = sys.executable
        assert subprocess.run([*srv.prefix(), *health], timeout=10).returncode == 0
        script = services["phones"]["command"][0]  # type: ignore[index]
        script = script.replace("198.18.250.2", str(srv.ipv4.ip))
        phone = lab.host("phones")
        bindir = str(Path(sys.executable).parent)
        r = subprocess.run([*phone.prefix(), "sh", "-c", script], capture_output=True, text=True,
                           timeout=180, env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"))  # fmt: skip
        assert r.returncode == 0, f"{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
        assert r.stdout.count("provisioned through") == 3
        assert "server says: {" in r.stdout
    finally:
        assert sp.stop() == 0


def test_the_scale_profile_two_servers_one_postgres(
    lab: Lab, tmp_path: Path, pg_url: str
) -> None:
    """The `scale` profile's servers and phones with their own commands, as namespaces on
    one bridge, the database the tests' own PostgreSQL (no Docker engine here): every
    phone provisioned, server 1's API lists them all with the server that answered."""
    services = compose()["services"]
    procs = []
    try:
        for name in ("server-1", "server-2"):
            argv = list(services[name]["command"])  # type: ignore[index]
            for flag in ("--state-dir", "--log-format"):  # start_server sets its own
                i = argv.index(flag)
                del argv[i : i + 2]
            argv[argv.index("--database") + 1] = pg_url
            host = lab.host(name)
            (tmp_path / name).mkdir()
            procs.append((host, start_server(tmp_path / name, *argv[1:], "--admin-port", "8081",
                                             netns=host.ns, port=8080)))  # fmt: skip
        script = services["scale-phones"]["command"][0]  # type: ignore[index]
        script = script.replace("198.18.250.11", str(procs[0][0].ipv4.ip))
        phone = lab.host("phones")
        bindir = str(Path(sys.executable).parent)
        r = subprocess.run([*phone.prefix(), "sh", "-c", script], capture_output=True, text=True,
                           timeout=240, env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"))  # fmt: skip
    finally:
        for _, sp in procs:
            assert sp.stop() == 0
    assert r.returncode == 0, f"{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
    assert r.stdout.count("provisioned through") == 4
    said = r.stdout.split("server 1 says provisioned:", 1)[1]
    assert said.count("0080F00001") == 4 and "bench-" in said


def test_the_systemd_install_verifies_rates_and_serves_as_its_user(
    lab: Lab, tmp_path: Path
) -> None:
    """deploy/install.sh into a folder; the unit passes `systemd-analyze verify`, rates 3.0
    or better in `security`; its ExecStart, run as the unit's user with the unit's ambient
    capabilities (setpriv: no systemd as PID 1 here), serves a phone."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    made_user = subprocess.run(["id", "preprov"], capture_output=True).returncode != 0
    # a folder the service's user can reach (pytest's tmp_path is 0700), and Debian's own
    # python3 as on a fresh machine (a python under /root would be out of its reach)
    root = Path(tempfile.mkdtemp(prefix="preprov-install-"))
    root.chmod(0o755)
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    env = dict(os.environ, PREFIX=str(root / "opt"), ETC=str(root / "etc"),
               UNIT_DIR=str(root / "unit"), PYTHON=python)  # fmt: skip
    try:
        r = subprocess.run(["sh", str(ROOT / "deploy" / "install.sh"), "eth0"], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        unit = root / "unit" / "preprov.service"
        v = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
        assert v.returncode == 0, v.stderr
        sec = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                             capture_output=True, text=True).stdout  # fmt: skip
        level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", sec)[1])  # type: ignore[index]
        assert level <= 3.0, sec
        exec_start = next(line.split("=", 1)[1] for line in unit.read_text().splitlines()
                          if line.startswith("ExecStart="))  # fmt: skip
        state = root / "state"
        state.mkdir()
        shutil.chown(state, "preprov", "preprov")
        argv = shlex.split(exec_start.replace("/var/lib/preprov", str(state)))
        caps = "+net_bind_service,+net_raw"
        srv = lab.host("srv")
        log = tmp_path / "unit.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*srv.prefix(), "setpriv", "--reuid", "preprov", "--regid", "preprov",
                 "--init-groups", "--inh-caps", caps, "--ambient-caps", caps, *argv],
                cwd=state, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            phone = lab.host("phone")
            p = subprocess.run(
                [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface",
                 "eth0", "--mac", "00:80:F0:00:00:01", "--no-sippnp", "--timeout", "30"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert p.returncode == 0, p.stdout + p.stderr + log.read_text()[-2000:]
        finally:
            proc.terminate()
            assert proc.wait(10) == 0, log.read_text()[-2000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if made_user:
            subprocess.run(["userdel", "preprov"], check=False)
