"""Invariants, checked on generated inputs: the URL grammar, macro expansion,
template-name resolution, and the request-path check."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from preprov.files.templates import MACRO_PATTERNS, TemplateSet, UnsafePath, check_request_path
from preprov.macros import SCHEMES, expand_macros, parse_url

# a host name whose labels start with a letter (all digits would read as an IPv4 address)
label = st.from_regex(r"[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hosts = st.one_of(
    st.lists(label, min_size=1, max_size=3).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
userinfo = st.from_regex(r"[A-Za-z0-9._~-]{1,12}", fullmatch=True)
segment = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
macro = st.sampled_from(["{MAC}", "{mac}", "{MODEL}", "{fwver}"])


@settings(max_examples=500)
@given(
    scheme=st.sampled_from(sorted(SCHEMES)),
    user=st.none() | userinfo,
    password=st.none() | userinfo,
    host=hosts,
    port=st.none() | st.integers(1, 65535),
    parts=st.lists(st.one_of(segment, macro), max_size=4),
)
def test_url_grammar_round_trip(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    parts: list[str],
) -> None:
    """Whatever is built from valid parts parses back into the same parts."""
    auth = "" if user is None else user + ("" if password is None else f":{password}") + "@"
    path = "".join("/" + p for p in parts)
    url = f"{scheme}://{auth}{host}{'' if port is None else f':{port}'}{path}"
    u = parse_url(url)
    assert (u.scheme, u.host, u.port, u.path) == (scheme, host, port, path)
    assert (u.user, u.password) == (user, password if user is not None else None)


macs = st.binary(min_size=6, max_size=6).map(lambda b: b.hex().upper())
models = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}", fullmatch=True)
fwvers = st.from_regex(r"[0-9]{1,2}\.[0-9]{3}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(
    name=st.lists(st.one_of(segment.map(lambda s: s.replace(".", "_")), macro), min_size=1,
                  max_size=4).map(lambda ps: "".join(ps) + ".cfg"),
    mac=macs, model=models, fwver=fwvers,
)  # fmt: skip
def test_a_file_named_with_macros_resolves_back_to_its_template(
    tmp_path_factory: object, name: str, mac: str, model: str, fwver: str
) -> None:
    """Expand a template's name as a phone would; the server finds that template and
    reads back the values (when two macros can split the name another way, the
    values found still expand to the same name)."""
    root = Path(tmp_path_factory.mktemp("t"))  # type: ignore[attr-defined]
    (root / name).write_text("x")
    ts = TemplateSet(root)
    requested = expand_macros(name, mac, model, fwver)
    found = ts.resolve(requested)
    assert found is not None and found.entry.name == name
    m = found.macros
    again = expand_macros(
        name,
        m.get("MAC") or (m["mac"].upper() if "mac" in m else mac),
        m.get("MODEL", model),
        m.get("fwver", fwver),
    )
    assert again == requested
    for k, v in m.items():
        assert re.fullmatch(MACRO_PATTERNS[k], v)


dot_heavy = st.text(alphabet="./%2eE5cC\\Aa-_", max_size=30)


@settings(max_examples=2000)
@given(st.one_of(dot_heavy, st.text(max_size=40), dot_heavy.map(lambda s: quote(s, safe=""))))
def test_no_accepted_request_path_climbs_out(path: str) -> None:
    """A path the check accepts has no '..' or '.' segment however often it is decoded."""
    try:
        rel = check_request_path("/" + path)
    except (UnsafePath, UnicodeDecodeError):
        return
    form = rel
    for _ in range(4):
        assert ".." not in form.split("/") and not form.startswith("/")
        assert "\\" not in form and "\x00" not in form
        form = unquote(form)
