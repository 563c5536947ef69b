from pathlib import Path

import pytest

from preprov.config import CONFIGS_DIR, ConfigError, build_config, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    return str(e.value)


def test_bundled_example_is_valid() -> None:
    c = load_config(CONFIGS_DIR / "lab.yaml")
    assert [r.name for r in c.rules][-1] == "default"
    assert c.files.variables == CONFIGS_DIR / "devices.csv"
    assert c.rules[0].match.mac == ["0080F0C571EB"]


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, ""))
    assert c.http.port == 8080
    assert c.rules[0].url_base == "http://${server}:${http_port}"
    assert c.rules[0].url_for("panasonic") == "http://${server}:${http_port}/{MODEL}.cfg"
    assert c.rules[0].url_for("Grandstream") == "http://${server}:${http_port}/grandstream/"


def test_unknown_key_names_file_key_and_line(tmp_path: Path) -> None:
    msg = problems(tmp_path, "http:\n  port: 8080\n  prot: 1\n")
    assert msg == f"{tmp_path / 'c.yaml'}:3: http.prot: unknown key"


def test_wrong_type(tmp_path: Path) -> None:
    msg = problems(tmp_path, "http:\n  port: eighty\n")
    assert ":2: http.port: " in msg and "integer" in msg


def test_bad_url_in_rule(tmp_path: Path) -> None:
    text = "rules:\n  - name: a\n    url: http://a\n  - name: b\n    url: gopher://x/y\n"
    msg = problems(tmp_path, text)
    assert ":5: rules[1].url: bad URL: scheme 'gopher'" in msg


def test_unknown_placeholder(tmp_path: Path) -> None:
    msg = problems(tmp_path, "rules:\n  - name: a\n    url: http://${srv}/x\n")
    assert "rules[0].url: unknown placeholder ${srv}" in msg


def test_url_longer_than_384_after_expansion(tmp_path: Path) -> None:
    # 380 characters as written: fits, but not once {MODEL} becomes KX-TGP500B09
    path = "p" * (380 - len("http://198.18.0.1/") - len("{MODEL}.cfg"))
    url = f"http://198.18.0.1/{path}{{MODEL}}.cfg"
    assert len(url) == 380
    text = f"models: [KX-HDV130, KX-TGP500B09]\nrules:\n  - name: long\n    url: {url}\n"
    msg = problems(tmp_path, text)
    assert ":4: rules[0].url: 385 characters after expanding" in msg
    assert "384" in msg
    # the same URL with short model names passes
    load_config(write(tmp_path, text.replace(", KX-TGP500B09", "")))


def test_server_placeholder_checked_at_its_longest(tmp_path: Path) -> None:
    # ${server} counts as 15 characters (255.255.255.255), the port as configured
    path = "p" * (384 - len("http://:8080/") - 15 - 4)
    ok = f"rules:\n  - name: r\n    url: http://${{server}}:${{http_port}}/{path}.cfg\n"
    load_config(write(tmp_path, ok))
    msg = problems(tmp_path, ok.replace(".cfg", "x.cfg"))
    assert "rules[0].url: 385 characters" in msg


def test_bad_mac_and_oui(tmp_path: Path) -> None:
    msg = problems(
        tmp_path,
        "rules:\n  - name: a\n    match: {mac: [xyz], oui: ['00:80']}\n    url: http://h/\n",
    )
    assert "rules[0].match.mac: 'xyz' is not a MAC address" in msg
    assert "rules[0].match.oui: '00:80' is not an OUI" in msg


def test_duplicate_rule_names(tmp_path: Path) -> None:
    msg = problems(
        tmp_path, "rules:\n  - {name: a, url: 'http://h/'}\n  - {name: a, url: 'http://h/'}\n"
    )
    assert "rule names must be unique: a" in msg


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    assert ":3: not valid YAML" in problems(tmp_path, "http:\n  port: [1\n")
    assert "top level must be a mapping" in problems(tmp_path, "- a\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_flags_override_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "http:\n  port: 8080\nserver:\n  interfaces: [eth9]\n")
    c = load_config(p, {"http": {"port": 9090}, "server": {"interfaces": ["lo"]}})
    assert c.http.port == 9090 and c.server.interfaces == ["lo"]


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "files:\n  templates: t\nserver:\n  state_dir: s\n"))
    assert c.files.templates == tmp_path / "t"
    assert c.server.state_dir == tmp_path / "s"


def test_build_config_from_flags_only() -> None:
    with pytest.raises(ConfigError, match=r"<flags>: http\.port"):
        build_config({}, {"http": {"port": 0}})


def test_the_bundled_example_shows_every_key_with_its_default() -> None:
    """configs/lab.yaml holds every key config.py accepts, and, but for the keys it says
    are examples, each with the value the key takes when left out."""
    import yaml
    from pydantic import BaseModel

    from preprov.config import Config

    data = yaml.safe_load((CONFIGS_DIR / "lab.yaml").read_text())
    examples = {"models", "rules", "files.variables", "files.templates", "server.state_dir"}

    def walk(model: type[BaseModel], given: dict[str, object], default: object, at: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{at}{name}"
            assert name in given, f"{key} is missing from configs/lab.yaml"
            ann = field.annotation
            sub = given[name]
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                assert isinstance(sub, dict), key
                walk(ann, sub, getattr(default, name), key + ".")
            elif key not in examples:
                got = getattr(model.model_validate({**given}), name)
                assert got == getattr(default, name), f"{key}: {got!r} is not the default"

    walk(Config, data, Config(), "")
    # the one example rule shows every key a rule and its match accept
    rule = data["rules"][0]
    assert set(rule) == set(type(Config().rules[0]).model_fields)
    assert set(rule["match"]) == set(type(Config().rules[0].match).model_fields)
