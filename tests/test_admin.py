"""The administration listener: REST API, token, OpenAPI, Prometheus metrics."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

from conftest import UA
from serverproc import ServerProc, start_server


def call(
    url: str, method: str = "GET", body: object = None, token: str | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def fetch_as_phone(sp: ServerProc, path: str) -> int:
    req = urllib.request.Request(sp.base + path, headers={"User-Agent": UA})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_api_reads_are_open_and_changes_need_the_token(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("admin:\n  token: s3cret-token\ninventory:\n  auto_add: false\n")
    sp = start_server(tmp_path, "--config", str(cfg))
    try:
        admin = sp.admin
        assert fetch_as_phone(sp, "/Config0080F0C571EB.cfg") == 404  # auto-add off
        status, body = call(admin + "/api/devices")
        assert status == 200 and json.loads(body)[0]["mac"] == "0080F0C571EB"
        status, body = call(admin + "/api/devices/00:80:f0:c5:71:eb/events")
        assert status == 200 and json.loads(body)[-1]["reason"].startswith(
            "MAC 0080F0C571EB not in the inventory"
        )
        assert call(admin + "/api/devices/0080F0000000")[0] == 404
        assert call(admin + "/api/devices/nonsense")[0] == 400
        # changes: refused without the token, and with a wrong one
        assert call(admin + "/api/devices", "POST", {"macs": ["0080F0C571EB"]})[0] == 401
        assert call(admin + "/api/reload", "POST", token="wrong")[0] == 401
        status, body = call(
            admin + "/api/devices", "POST", {"macs": ["00-80-F0-C5-71-EB"]}, "s3cret-token"
        )
        assert status == 200 and json.loads(body) == {"registered": ["0080F0C571EB"]}
        assert fetch_as_phone(sp, "/Config0080F0C571EB.cfg") == 200  # registered now
        assert call(admin + "/api/reload", "POST", token="s3cret-token") == (
            200,
            b'{"reloaded": true}',
        )
        spec = json.loads(call(admin + "/api/openapi.json")[1])
        assert spec["openapi"].startswith("3.") and "/api/devices/{mac}/events" in spec["paths"]
        assert call(admin + "/api/leases")[0] == 200
        status, text = call(admin + "/metrics")
        metrics = text.decode()
        assert status == 200
        assert 'preprov_events_total{channel="http",kind="file.served"} 1.0' in metrics
        assert 'preprov_refusals_total{channel="http",kind="file.refused"} 1.0' in metrics
        assert 'preprov_devices{last_event="file.served"} 1.0' in metrics
        assert "preprov_leases_in_use" in metrics
        # nothing waits for the writer once the answers are in: no lag
        assert "preprov_inventory_commit_lag_seconds 0.0" in metrics
        # answer latency: the two phone requests were observed
        assert 'preprov_answer_seconds_count{channel="http"} 2.0' in metrics
        assert "preprov_http_answers_reused 0.0" in metrics
        # the same request again (after the reload, a new runtime: decided afresh), then
        # once more: that answer reused, with an event of its own all the same
        assert fetch_as_phone(sp, "/Config0080F0C571EB.cfg") == 200
        assert fetch_as_phone(sp, "/Config0080F0C571EB.cfg") == 200
        metrics = call(admin + "/metrics")[1].decode()
        assert "preprov_http_answers_reused 1.0" in metrics
        assert 'preprov_events_total{channel="http",kind="file.served"} 3.0' in metrics
    finally:
        assert sp.stop() == 0


def test_without_a_token_changes_are_refused(tmp_path: Path) -> None:
    sp = start_server(tmp_path)
    try:
        status, body = call(sp.admin + "/api/reload", "POST", token="anything")
        assert status == 403 and b"no admin.token is configured" in body
    finally:
        assert sp.stop() == 0


def test_the_token_from_a_flag_or_the_environment_and_a_refused_reload_says_why(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("http:\n  realm: lab\n")
    for how in (("--admin-token", "flag-token"), ()):
        sp = start_server(tmp_path, "--config", str(cfg), *how,
                          env={} if how else {"PREPROV_ADMIN_TOKEN": "env-token"})
        token = "flag-token" if how else "env-token"
        try:
            assert call(sp.admin + "/api/reload", "POST", token="other")[0] == 401
            assert call(sp.admin + "/api/reload", "POST", token=token)[0] == 200
            cfg.write_text("http:\n  realm: lab\n  prot: 80\nrules:\n  - name: x\n"
                           "    url: gopher://nope\n")
            status, body = call(sp.admin + "/api/reload", "POST", token=token)
            answer = json.loads(body)
            assert status == 422 and answer["reloaded"] is False
            assert {(p["line"], p["key"]) for p in answer["problems"]} == {
                (3, "http.prot"), (6, "rules[0].url")}
            assert all(p["file"] == str(cfg) and p["reason"] for p in answer["problems"])
            cfg.write_text("http:\n  realm: lab\n")
            health = json.loads(call(sp.admin + "/api/health")[1])
            assert health["status"] == "ok" and "http" in health["services"]
        finally:
            assert sp.stop() == 0


def test_the_openapi_document_names_every_route_and_only_those() -> None:
    from preprov.web.admin import OPENAPI, Metrics, make_admin_app
    from preprov.web.dashboard import Stream

    app = make_admin_app(None, Metrics(), Stream())  # type: ignore[arg-type]
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    documented = {(m, path) for path, ops in OPENAPI["paths"].items() for m in ops}
    assert routes == documented
    refs = {v for v in json.dumps(OPENAPI).split('"') if v.startswith("#/components/schemas/")}
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(OPENAPI["components"]["schemas"])


def test_https_with_the_lab_ca_downloaded_from_the_api(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from serverproc import free_port

    if shutil.which("curl") is None:
        import pytest

        pytest.skip("curl is not installed")
    https_port = free_port()
    cfg = tmp_path / "tls.yaml"
    cfg.write_text(
        f"https:\n  enabled: true\n  port: {https_port}\n  names: [provisioning.lab]\n"
        "rules:\n  - name: tls\n    url: https://${server}:${https_port}/{MODEL}.cfg\n"
    )
    sp = start_server(tmp_path, "--config", str(cfg))
    try:
        status, ca = call(sp.admin + "/api/ca.crt")
        assert status == 200 and ca.startswith(b"-----BEGIN CERTIFICATE-----")
        (tmp_path / "ca.crt").write_bytes(ca)
        url = f"https://127.0.0.1:{https_port}/KX-HDV130.cfg"
        r = subprocess.run(["curl", "-sS", "--cacert", str(tmp_path / "ca.crt"), "-A", UA, url],
                           capture_output=True, timeout=10)  # fmt: skip
        assert r.returncode == 0, r.stderr
        # the pre-provisioning file names the HTTPS URLs of its rule
        assert (
            f'CFG_STANDARD_FILE_PATH="https://127.0.0.1:{https_port}/Config{{MAC}}.cfg"'.encode()
            in r.stdout
        )
        # without the CA the certificate is refused
        bad = subprocess.run(["curl", "-sS", url], capture_output=True, timeout=10)
        assert bad.returncode == 60  # curl: peer certificate cannot be authenticated
        served = [e for e in sp.events() if e.get("event") == "file.served"]
        assert served[-1]["channel"] == "https"
    finally:
        assert sp.stop() == 0
    # the CA is kept: after a restart the same one is served
    sp2 = start_server(tmp_path, "--config", str(cfg))
    try:
        assert call(sp2.admin + "/api/ca.crt") == (200, ca)
    finally:
        assert sp2.stop() == 0


def test_lists_are_paged_and_the_status_follows_a_cursor(tmp_path: Path) -> None:
    sp = start_server(tmp_path)
    try:
        admin = sp.admin
        macs = [f"0080F0C571{i:02X}" for i in range(5)]
        for mac in macs[:3]:
            ua = f"Panasonic_KX-HDV130/01.000 ({mac.lower()})"
            req = urllib.request.Request(f"{sp.base}/Config{mac}.cfg", headers={"User-Agent": ua})
            with urllib.request.urlopen(req, timeout=5) as r:
                assert r.status == 200
        with urllib.request.urlopen(admin + "/api/devices?limit=2", timeout=5) as r:
            first = [d["mac"] for d in json.loads(r.read())]
            link = r.headers["Link"]
        assert first == macs[:2] and link.endswith('>; rel="next"')
        nxt = link[link.index("<") + 1 : link.index(">")]
        with urllib.request.urlopen(admin + nxt, timeout=5) as r:
            assert [d["mac"] for d in json.loads(r.read())] == macs[2:3] and "Link" not in r.headers
        with urllib.request.urlopen(admin + "/api/status", timeout=5) as r:
            rows = json.loads(r.read())
            cursor = int(r.headers["X-Cursor"])
        assert [(x["mac"], x["stage"], x["files"]) for x in rows] == [
            (m, "provisioned", 1) for m in macs[:3]
        ]
        # only what changed after the cursor
        status, body = call(f"{admin}/api/status?since={cursor}")
        assert status == 200 and json.loads(body) == []
        ua = f"Panasonic_KX-HDV130/01.000 ({macs[4].lower()})"
        req = urllib.request.Request(f"{sp.base}/KX-HDV130.cfg", headers={"User-Agent": ua})
        urllib.request.urlopen(req, timeout=5).close()
        status, body = call(f"{admin}/api/status?since={cursor}")
        assert [(x["mac"], x["stage"]) for x in json.loads(body)] == [(macs[4], "fetching")]
        summary = json.loads(call(admin + "/api/summary")[1])
        assert summary["devices"] == 4 and summary["stages"] == {"provisioned": 3, "fetching": 1}
    finally:
        assert sp.stop() == 0


def test_odd_tokens_and_foreign_hosts_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("admin:\n  token: s3cret\n  names: [preprov.lab]\n")
    sp = start_server(tmp_path, "--config", str(cfg))
    try:
        host, port = sp.admin.removeprefix("http://").rsplit(":", 1)

        def raw(head: str) -> bytes:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(head.encode("utf-8") + b"\r\n\r\n")
                return s.recv(65536)

        # a token that is not ASCII is a 401, not a 500
        got = raw("POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer é\r\n"
                  "Content-Length: 0\r\nConnection: close")  # fmt: skip
        assert got.startswith(b"HTTP/1.1 401")
        # DNS rebinding: a name that is not this listener's
        got = raw("GET /api/devices HTTP/1.1\r\nHost: evil.example:8081\r\nConnection: close")
        assert got.startswith(b"HTTP/1.1 421") and b"admin.names" in got
        for ok in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", "preprov.lab:8081", "[::1]"):
            got = raw(f"GET /api/devices HTTP/1.1\r\nHost: {ok}\r\nConnection: close")
            assert got.startswith(b"HTTP/1.1 200"), ok
    finally:
        assert sp.stop() == 0


def test_manifests_in_the_forms_people_have() -> None:
    from preprov.web.dashboard import ManifestError, parse_manifest

    macs, extra, dup = parse_manifest("serial,mac,model\nS1,00:80:F0:00:00:01,KX-HDV130\n"
                                      "S2,0080f0000002,KX-HDV230\nS1b,00-80-F0-00-00-01,X\n")  # fmt: skip
    assert macs == ["0080F0000001", "0080F0000002"] and dup == ["0080F0000001"]
    assert extra["0080F0000002"] == {"serial": "S2", "model": "KX-HDV230"}
    assert parse_manifest("MAC;Serial\n0080F0000003;S3\n")[1] == {"0080F0000003": {"Serial": "S3"}}
    assert parse_manifest("0080F0000004\n00:80:f0:00:00:05\n")[0] == ["0080F0000004",
                                                                      "0080F0000005"]  # fmt: skip
    assert parse_manifest('[{"mac": "0080F0000006", "serial": "S6"}, "0080F0000007"]')[0] == [
        "0080F0000006", "0080F0000007"]  # fmt: skip
    for bad, why in (("mac\nnot-a-mac\n", "not MACs: not-a-mac"), ("mac\n", "no MAC"),
                     ("[1, 2]", "neither a MAC")):  # fmt: skip
        try:
            parse_manifest(bad)
            raise AssertionError(f"{bad!r} accepted")
        except ManifestError as e:
            assert why in str(e)


def test_batches_renamed_deleted_devices_forgotten_inventory_exported(tmp_path: Path) -> None:
    import subprocess
    import sys

    sp = start_server(tmp_path, "--admin-token", "tok")
    try:
        assert fetch_as_phone(sp, "/Config0080F0C571EB.cfg") == 200
        req = urllib.request.Request(
            sp.admin + "/api/batches?name=one", method="POST", headers={
                "Authorization": "Bearer tok"},
            data=b"serial,mac\nS1,0080F0C571EB\nS2,0080F0C571EB\nS3,0080F0000009\n")  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as r:
            made = json.loads(r.read())
        assert made["expected"] == 2 and made["duplicates"] == ["0080F0C571EB"]
        bid = made["id"]
        assert call(f"{sp.admin}/api/batches/{bid}", "PATCH", {"name": "two"})[0] == 401
        assert call(f"{sp.admin}/api/batches/{bid}", "PATCH", {"name": "two"}, "tok")[0] == 200
        report = json.loads(call(f"{sp.admin}/api/batches/{bid}")[1])
        assert report["name"] == "two" and report["devices"][0]["manifest"] == {"serial": "S1"}
        csv_text = call(f"{sp.admin}/api/batches/{bid}.csv")[1].decode()
        assert csv_text.splitlines()[0].endswith(",last_error,server,serial")
        inv = call(f"{sp.admin}/api/status.csv")[1].decode().splitlines()
        assert inv[0].startswith("mac,stage,reason,model,fwver,ipv4")
        assert inv[1].startswith("0080F0C571EB,")
        assert call(f"{sp.admin}/api/batches/{bid}", "DELETE", token="tok")[0] == 200
        assert call(f"{sp.admin}/api/batches/{bid}")[0] == 404
        assert call(f"{sp.admin}/api/devices/0080F0C571EB", "DELETE", token="tok")[0] == 200
        assert call(f"{sp.admin}/api/devices/0080F0C571EB")[0] == 404
        assert call(f"{sp.admin}/api/devices/0080F0C571EB/events")[1] == b"[]"
        assert fetch_as_phone(sp, "/KX-HDV130.cfg") == 200  # it comes back when it asks again
    finally:
        assert sp.stop() == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"server:\n  state_dir: {sp.state_dir}\n")
    out = subprocess.run([sys.executable, "-m", "preprov", "inventory", "--config", str(cfg),
                          "--csv", "--stage", "fetching"], capture_output=True, text=True,
                         check=True).stdout.splitlines()  # fmt: skip
    assert out[0].startswith("mac,stage") and out[1].startswith("0080F0C571EB,fetching")
    table = subprocess.run([sys.executable, "-m", "preprov", "inventory", "--state-dir",
                            str(sp.state_dir)], capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert re.search(r"0080F0C571EB .* fetching +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", table)
