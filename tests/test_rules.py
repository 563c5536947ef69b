from preprov.config import Match, Rule
from preprov.ident import DeviceFacts, facts_from_user_agent
from preprov.rules import decide, explain

P = {"server": "198.18.0.1", "server6": "[fd00::1]", "http_port": "8080"}

RULES = [
    Rule(
        name="one-phone",
        match=Match(mac=["00:80:f0:00:00:01"]),
        url="http://${server}/one/{MODEL}.cfg",
    ),
    Rule(
        name="hdv130",
        match=Match(model=["KX-HDV130"]),
        url="http://${server}/130/{MODEL}.cfg",
        variables={"line": 1},
    ),
    Rule(
        name="panasonic-oui",
        match=Match(oui=["00-80-F0"]),
        url="http://${server}:${http_port}/p/{MODEL}.cfg",
    ),
    Rule(name="yealink", match=Match(vendor=["yealink"]), url="tftp://${server6}/y/"),
    Rule(name="default", url="http://${server}/d/{MAC}.cfg"),
]


def test_mac_rule_first() -> None:
    d = decide(RULES, DeviceFacts(mac="0080F0000001", model="KX-HDV130"), P)
    assert d is not None and d.rule == "one-phone"
    assert d.url == "http://198.18.0.1/one/{MODEL}.cfg"


def test_region_suffix_matches_model_prefix() -> None:
    for model in ("KX-HDV130", "KX-HDV130N", "KX-HDV130NB", "kx-hdv130x"):
        d = decide(RULES, DeviceFacts(mac="0080F0AAAAAA", model=model), P)
        assert d is not None and d.rule == "hdv130", model
        assert d.variables == {"line": 1}
    d = decide(RULES, DeviceFacts(mac="0080F0AAAAAA", model="KX-HDV13"), P)
    assert d is not None and d.rule == "panasonic-oui"


def test_oui_then_placeholders_filled() -> None:
    d = decide(RULES, DeviceFacts(mac="0080F0AAAAAA", model="KX-TGP600"), P)
    assert d is not None and d.rule == "panasonic-oui"
    assert d.url == "http://198.18.0.1:8080/p/{MODEL}.cfg"


def test_vendor_from_oui_when_phone_says_oem() -> None:
    d = decide(RULES, DeviceFacts(mac="805EC0123456", vendor="OEM"), P)
    assert d is not None and d.rule == "yealink"
    assert d.parsed.host == "[fd00::1]"


def test_default_rule_and_none() -> None:
    d = decide(RULES, DeviceFacts(), P)
    assert d is not None and d.rule == "default"
    assert decide(RULES[:2], DeviceFacts(mac="001122334455"), P) is None


def test_explain_names_each_rule() -> None:
    why = explain(RULES[:2], DeviceFacts(mac="001122334455", model="KX-UT113"))
    assert "one-phone: MAC 001122334455 not in its list" in why
    assert "hdv130: model KX-UT113 matches none of its prefixes" in why


def test_credentials_from_url() -> None:
    rules = [Rule(name="r", url="http://u:pw@${server}/{MODEL}.cfg", auth="digest")]
    d = decide(rules, DeviceFacts(), P)
    assert d is not None and d.credentials == ("u", "pw") and d.auth == "digest"


def test_user_agent_extractor() -> None:
    f = facts_from_user_agent("Panasonic_KX-UT113/01.133 (0080f0c8c381)")
    assert f == DeviceFacts(
        mac="0080F0C8C381", model="KX-UT113", fwver="01.133", vendor="Panasonic"
    )
    assert facts_from_user_agent("curl/8.0") == DeviceFacts()
    assert facts_from_user_agent("Panasonic_KX-HDV130/01.000").mac is None
