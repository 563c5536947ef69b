import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import UA
from preprov.events import FileRefused, FileServed
from preprov.files.lint import lint
from preprov.files.service import FileRequest, fetch
from preprov.files.templates import TemplateSet, UnsafePath, check_request_path
from preprov.files.variables import VariablesError, load_variables
from preprov.macros import url_dir
from preprov.runtime import Runtime


def get(rt: Runtime, path: str, ua: str | None = UA, **kw: object) -> tuple[int, bytes, object]:
    ans = fetch(rt, FileRequest("http", "198.18.0.2", path, user_agent=ua, **kw))  # type: ignore[arg-type]
    return ans.status, ans.body, ans.event


def test_resolution_prefers_exact_then_most_specific(templates: Path) -> None:
    (templates / "{MODEL}-{fwver}.bin").write_bytes(b"\x00\x01firmware")
    ts = TemplateSet(templates)
    cases = {
        "KX-HDV130.cfg": ("{MODEL}.cfg", {"MODEL": "KX-HDV130"}),
        "ConfigCommon.cfg": ("ConfigCommon.cfg", {}),
        "Config0080F0C571EB.cfg": ("Config{MAC}.cfg", {"MAC": "0080F0C571EB"}),
        "ConfigKX-HDV130.cfg": ("Config{MODEL}.cfg", {"MODEL": "KX-HDV130"}),
        "KX-HDV130-01.000.bin": ("{MODEL}-{fwver}.bin", {"MODEL": "KX-HDV130", "fwver": "01.000"}),
    }
    for path, (name, macros) in cases.items():
        r = ts.resolve(path)
        assert r is not None, path
        assert (r.entry.name, r.macros) == (name, macros), path
    # {mac} is lower case: an upper-case MAC under a lower-case name does not match
    assert ts.resolve("a.b.cfg") is None
    assert ts.resolve("sub/KX-HDV130.cfg") is None


def test_subdirectories_and_repeated_macros(tmp_path: Path) -> None:
    (tmp_path / "{mac}").mkdir()
    (tmp_path / "{mac}" / "{mac}.cfg").write_text("x")
    ts = TemplateSet(tmp_path)
    assert ts.resolve("0080f0c571eb/0080f0c571eb.cfg") is not None
    assert ts.resolve("0080f0c571eb/0080f0c571ec.cfg") is None
    assert ts.resolve("0080F0C571EB/0080F0C571EB.cfg") is None


@pytest.mark.parametrize(
    "path",
    [
        "/../etc/passwd",
        "/a/../../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/%2E%2E%2Fetc%2Fpasswd",
        "/%252e%252e/etc/passwd",
        "/%25252e%25252e/x",
        "//etc/passwd",
        "/..%5c..%5cwin.ini",
        "/a\\..\\b",
        "/./KX-HDV130.cfg",
        "/%00.cfg",
        "/C:/boot.ini",
    ],
)
def test_traversal_forms_are_refused(path: str, make_runtime: Callable[..., Runtime]) -> None:
    with pytest.raises((UnsafePath, UnicodeDecodeError)):
        check_request_path(path)
    status, body, ev = get(make_runtime(), path)
    assert status == 400
    assert isinstance(ev, FileRefused) and "refused path" in ev.reason
    assert b"root:" not in body


def test_symlinks_are_not_served(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    t = tmp_path / "t"
    t.mkdir()
    os.symlink(secret, t / "link.cfg")
    os.symlink(tmp_path, t / "up")
    ts = TemplateSet(t)
    assert ts.resolve("link.cfg") is None and ts.resolve("up/secret.txt") is None
    assert {s.name for s in ts.skipped} == {"link.cfg", "up"}


def test_zero_config_chain_for_one_phone(make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime()
    status, body, ev = get(rt, "/KX-HDV130.cfg")
    assert status == 200 and lint(body) == []
    text = body.decode()
    assert 'CFG_STANDARD_FILE_PATH="http://198.18.0.1:8080/Config{MAC}.cfg"\r\n' in text
    assert 'CFG_PRODUCT_FILE_PATH="http://198.18.0.1:8080/Config{MODEL}.cfg"\r\n' in text
    assert 'CFG_MASTER_FILE_PATH="http://198.18.0.1:8080/ConfigCommon.cfg"\r\n' in text
    assert isinstance(ev, FileServed)
    assert (ev.mac, ev.model, ev.fwver, ev.vendor, ev.rule, ev.template) == (
        "0080F0C571EB",
        "KX-HDV130",
        "01.000",
        "Panasonic",
        "default",
        "{MODEL}.cfg",
    )
    for path in ("/Config0080F0C571EB.cfg", "/ConfigKX-HDV130.cfg", "/ConfigCommon.cfg"):
        status, body, _ = get(rt, path)
        assert status == 200 and lint(body) == [], path


def test_per_device_files_differ(make_runtime: Callable[..., Runtime], devices_csv: Path) -> None:
    rt = make_runtime(files={"variables": str(devices_csv)})
    _, a, _ = get(rt, "/Config0080F0C571EB.cfg")
    _, b, _ = get(rt, "/Config0080F0C571EC.cfg", ua=ua_of("0080F0C571EC"))
    _, c, _ = get(rt, "/Config0080F0AAAAAA.cfg", ua=ua_of("0080F0AAAAAA"))
    assert b'SIP_AUTHID_1="1001"' in a and b'DISPLAY_NAME_1="Reception"' in a
    assert b'SIP_AUTHID_1="1002"' in b and b'SIP_PASS_1="s3cret-1002"' in b
    assert b'SIP_AUTHID_1="0080f0aaaaaa"' in c  # the template's default for unlisted phones
    assert len({a, b, c}) == 3


def test_refusals_say_why(make_runtime: Callable[..., Runtime], templates: Path) -> None:
    rt = make_runtime(inventory={"auto_add": False})
    status, _, ev = get(rt, "/Config0080F0AABBCC.cfg", ua=ua_of("0080F0AABBCC"))
    assert status == 404
    assert isinstance(ev, FileRefused)
    assert ev.reason == "MAC 0080F0AABBCC not in the inventory and auto-add is off"
    status, _, ev = get(rt, "/x.txt")
    assert (status, ev.reason) == (404, "no template matches /x.txt")  # type: ignore[attr-defined]
    rt = make_runtime(
        rules=[{"name": "only-yealink", "match": {"vendor": ["Yealink"]}, "url": "http://h/"}]
    )
    status, _, ev = get(rt, "/KX-HDV130.cfg")
    assert status == 403
    assert "only-yealink: vendor Panasonic not in its list" in ev.reason  # type: ignore[attr-defined]
    (templates / "Broken{MAC}.cfg").write_text("{{ sip_user }}\n")
    status, _, ev = get(make_runtime(), "/Broken0080F0C571EB.cfg")
    assert status == 500 and "'sip_user' is undefined" in ev.reason  # type: ignore[attr-defined]
    status, _, _ = get(make_runtime(), "/KX-HDV130.cfg", method="POST")
    assert status == 405


def test_registered_devices_pass_when_auto_add_is_off(make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime(inventory={"auto_add": False})
    req = FileRequest("http", None, "/Config0080F0AABBCC.cfg", user_agent=ua_of("0080F0AABBCC"))
    assert fetch(rt, req, lambda m: m == "0080F0AABBCC").status == 200


def ua_of(mac: str) -> str:
    return f"Panasonic_KX-HDV130/01.000 ({mac.lower()})"


def test_per_device_files_go_to_their_device_only(
    make_runtime: Callable[..., Runtime], devices_csv: Path
) -> None:
    mac, path = "0080F0C571EC", "/Config0080F0C571EC.cfg"
    holders = {"198.18.0.2": mac}

    def ask(binding: str, ua: str | None, client: str = "198.18.0.2") -> tuple[int, str]:
        rt = make_runtime(files={"variables": str(devices_csv), "device_binding": binding})
        ans = fetch(rt, FileRequest("http", client, path, user_agent=ua), holder=holders.get)
        return ans.status, ans.body.decode()

    # nobody else gets its SIP password: no User-Agent, another phone's, another address
    status, body = ask("lenient", None, "198.18.0.66")
    assert status == 403 and "User-Agent names no MAC, 198.18.0.66 is held by no device" in body
    assert ask("lenient", ua_of("0080F0C571EB"), "198.18.0.66")[0] == 403
    assert ask("lenient", ua_of(mac), "198.18.0.66")[0] == 200  # its User-Agent
    assert ask("lenient", None)[0] == 200  # its address (its lease, its SUBSCRIBE)
    assert ask("strict", ua_of(mac), "198.18.0.66")[0] == 403  # strict: both
    assert ask("strict", ua_of(mac))[0] == 200
    assert ask("off", None, "198.18.0.66")[0] == 200
    # shared files are for anybody
    rt = make_runtime()
    assert fetch(rt, FileRequest("http", "198.18.0.66", "/ConfigCommon.cfg")).status == 200


def test_per_device_http_credentials(make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("mac,sip_user,http_user,http_password\n0080F0C571EB,1001,ph1,pw1\n")
    rt = make_runtime(files={"variables": str(csv)})
    ans = fetch(rt, FileRequest("http", "198.18.0.2", "/Config0080F0C571EB.cfg", user_agent=UA))
    assert ans.status == 401 and "no credentials sent" in ans.body.decode()
    basic = "Basic " + base64.b64encode(b"ph1:pw1").decode()
    ok = FileRequest("http", "198.18.0.2", "/Config0080F0C571EB.cfg", user_agent=UA,
                     authorization=basic)  # fmt: skip
    assert fetch(rt, ok).status == 200


def test_a_template_swapped_for_a_symlink_is_not_followed(
    templates: Path, make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    (templates / "notes.txt").write_text("hello\n")
    rt = make_runtime(files={"templates": str(templates), "raw": ["*.txt"]})
    assert get(rt, "/notes.txt")[:2] == (200, b"hello\n")
    (templates / "notes.txt").unlink()
    (templates / "notes.txt").symlink_to(secret)  # after the index was made
    for e in rt.templates.entries:
        e.checked = 0.0  # as after STAT_INTERVAL
    status, body, _ = get(rt, "/notes.txt")
    assert status == 500 and b"root" not in body and b"symlink" in body


def test_raw_files_are_served_as_they_are(
    templates: Path, make_runtime: Callable[..., Runtime]
) -> None:
    blob = bytes(range(256)) * 4
    (templates / "fw.bin").write_bytes(blob)
    (templates / "notes.txt").write_text("{{ not rendered }}\n")
    rt = make_runtime(files={"templates": str(templates), "raw": ["*.txt"]})
    assert get(rt, "/fw.bin")[:2] == (200, blob)
    assert get(rt, "/notes.txt")[:2] == (200, b"{{ not rendered }}\n")


def test_templates_are_sandboxed(templates: Path, make_runtime: Callable[..., Runtime]) -> None:
    (templates / "evil.cfg").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    status, _, ev = get(make_runtime(), "/evil.cfg")
    assert status == 500 and "unsafe" in ev.reason  # type: ignore[attr-defined]


def test_edited_template_is_picked_up(
    templates: Path, make_runtime: Callable[..., Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    import preprov.files.templates

    monkeypatch.setattr(preprov.files.templates, "STAT_INTERVAL", 0.0)
    rt = make_runtime()
    p = templates / "ConfigCommon.cfg"
    before = get(rt, "/ConfigCommon.cfg")[1]
    p.write_text(p.read_text() + 'EXTRA="1"\n')
    os.utime(p, ns=(0, os.stat(p).st_mtime_ns + 10**9))
    after = get(rt, "/ConfigCommon.cfg")[1]
    assert after == before + b'EXTRA="1"\r\n'


def test_url_dir() -> None:
    assert url_dir("http://h:1/a/{MODEL}.cfg") == "http://h:1/a/"
    assert url_dir("http://h") == "http://h/"
    assert url_dir("tftp://[fd00::1]/") == "tftp://[fd00::1]/"


def test_variables_files(tmp_path: Path) -> None:
    y = tmp_path / "v.yaml"
    y.write_text("00:80:f0:00:00:01: {sip_user: 7, name: null}\n0080F0000002:\n  sip_user: x\n")
    assert load_variables(y) == {
        "0080F0000001": {"sip_user": "7", "name": ""},
        "0080F0000002": {"sip_user": "x"},
    }
    c = tmp_path / "v.csv"
    for text, err in [
        ("user,mac\n", ":1: the first column of the header must be 'mac'"),
        ("mac,a\nzz,1\n", ":2: 'zz' is not a MAC"),
        ("mac,a\n0080F0000001,1\n00:80:f0:00:00:01,2\n", ":3: MAC 0080F0000001 appears twice"),
        ("mac,a\n0080F0000001,1,2\n", ":2: 3 columns, the header has 2"),
    ]:
        c.write_text(text)
        with pytest.raises(VariablesError, match=err):
            load_variables(c)
    y.write_text("0080F0000001: 5\n")
    with pytest.raises(VariablesError, match=":1: variables of 0080F0000001 must be a mapping"):
        load_variables(y)


def test_etag_and_304(make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime()
    first = fetch(rt, FileRequest("http", "198.18.0.2", "/KX-HDV130.cfg", user_agent=UA))
    headers = dict(first.headers)
    etag = headers["ETag"]
    assert first.status == 200 and etag.startswith('"') and "GMT" in headers["Last-Modified"]
    again = fetch(rt, FileRequest("http", "198.18.0.2", "/KX-HDV130.cfg", user_agent=UA,
                                  if_none_match=f'W/"x", {etag}'))  # fmt: skip
    assert (again.status, again.body) == (304, b"") and dict(again.headers)["ETag"] == etag
    assert isinstance(again.event, FileServed) and again.event.status == 304
    # another phone's file is other bytes: another tag
    other = fetch(rt, FileRequest("http", "198.18.0.2", "/KX-HDV230N.cfg",
                                  user_agent=UA.replace("KX-HDV130", "KX-HDV230N"),
                                  if_none_match=etag))  # fmt: skip
    assert other.status == 200 and dict(other.headers)["ETag"] != etag
