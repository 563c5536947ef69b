import pytest
from hypothesis import given
from hypothesis import strategies as st

from preprov.macros import (
    URL_MAX_LENGTH,
    MacError,
    UrlError,
    expand_macros,
    mac_colon,
    normalize_mac,
    parse_url,
    url_length_problem,
)


@pytest.mark.parametrize(
    "text",
    [
        "0080F0C571EB",
        "0080f0c571eb",
        "00:80:f0:c5:71:eb",
        "00-80-F0-C5-71-EB",
        "0080.f0c5.71eb",
        " 00:80:F0:C5:71:EB ",
    ],
)
def test_mac_notations_normalise(text: str) -> None:
    assert normalize_mac(text) == "0080F0C571EB"


@pytest.mark.parametrize(
    "text", ["", "0080F0C571E", "0080F0C571EBA", "00:80-f0:c5:71:eb", "GG80F0C571EB", "00:80:f0"]
)
def test_bad_macs_are_refused(text: str) -> None:
    with pytest.raises(MacError):
        normalize_mac(text)


@given(st.binary(min_size=6, max_size=6), st.sampled_from(["", ":", "-"]))
def test_mac_round_trip(raw: bytes, sep: str) -> None:
    text = sep.join(f"{b:02x}" for b in raw)
    assert normalize_mac(text) == raw.hex().upper()
    assert mac_colon(normalize_mac(text)) == ":".join(f"{b:02x}" for b in raw)


def test_expand_macros_as_the_phone_does() -> None:
    url = "http://h/{MAC}/{mac}/{MODEL}-{fwver}/{UNKNOWN}/{model}.cfg"
    got = expand_macros(url, "0080F0C571EB", "KX-HDV130", "01.000")
    # macros are case-sensitive and an unknown macro stays literal (docs/protocol.md §2)
    assert got == "http://h/0080F0C571EB/0080f0c571eb/KX-HDV130-01.000/{UNKNOWN}/{model}.cfg"


def test_missing_facts_leave_macros() -> None:
    assert expand_macros("/{MAC}/{MODEL}", None, None, None) == "/{MAC}/{MODEL}"


def test_url_grammar_full_form() -> None:
    u = parse_url("https://user:p4ss@prov.example.com:8443/pana/{MODEL}.cfg")
    assert (u.scheme, u.user, u.password, u.host, u.port) == (
        "https",
        "user",
        "p4ss",
        "prov.example.com",
        8443,
    )
    assert u.path == "/pana/{MODEL}.cfg"
    assert u.directory == "/pana/"
    assert u.filename == "{MODEL}.cfg"


def test_url_grammar_ipv6_literal_and_defaults() -> None:
    u = parse_url("tftp://[fd00::1]/{MAC}.cfg")
    assert u.host == "[fd00::1]"
    assert u.effective_port == 69
    assert parse_url("ftp://198.18.0.1").path == ""


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("gopher://h/x", "scheme"),
        ("http://fd00::1/x", "brackets"),
        ("http://[fd00::zz]/x", "IPv6"),
        ("http://300.1.1.1/x", "IPv4"),
        ("http://h:0/x", "port"),
        ("http://h:70000/x", "port"),
        ("http://h:ab/x", "port"),
        ("http://bad_host/x", "host name"),
        ("http:/h/x", "form"),
        ("198.18.0.1/x", "form"),
    ],
)
def test_url_grammar_refusals(url: str, why: str) -> None:
    with pytest.raises(UrlError, match=why):
        parse_url(url)


def test_length_limit_counts_expanded_macros() -> None:
    # {MODEL} is 7 characters written, 12 expanded with KX-TGP500B09
    base = "http://h/"
    url = base + "a" * (URL_MAX_LENGTH - len(base) - len("KX-TGP500B09.cfg")) + "{MODEL}.cfg"
    assert len(url) < URL_MAX_LENGTH
    assert url_length_problem(url, "KX-TGP500B09", "00.000") is None
    assert "385 characters" in (url_length_problem(url + "x", "KX-TGP500B09", "00.000") or "")
