from preprov.files.lint import HEADER, lint, parse, to_crlf

GOOD = HEADER + b' DO NOT CHANGE THIS LINE!\r\n# comment\r\n\r\nA="1"\r\nB=""\r\n'


def msgs(data: bytes) -> list[str]:
    return [f"{f.line}:{f.severity}:{f.message}" for f in lint(data)]


def test_good_file() -> None:
    assert len(HEADER) == 44
    assert lint(GOOD) == []


def test_header_crlf_and_last_line() -> None:
    out = msgs(b'# Panasonic SIP Phone #\nA="1"')
    assert any(m.startswith("1:error:first line must start") for m in out)
    assert any("LF alone" in m for m in out)
    assert any("end with CRLF" in m for m in out)


def test_parameter_syntax() -> None:
    body = GOOD + b'C = "x"\r\nD=x\r\nE-F="1"\r\nG="a"b"\r\nno equals\r\n'
    out = msgs(body)
    assert "6:error:spaces around '=' are not allowed: 'C = \"x\"'" in out
    assert any(m.startswith("7:error:value of D must be in double quotes") for m in out)
    assert any(m.startswith("8:error:parameter name 'E-F'") for m in out)
    assert any(m.startswith("9:error:value of G must not contain a double quote") for m in out)
    assert any(m.startswith("10:error:not NAME=") for m in out)


def test_lengths_and_duplicates() -> None:
    body = GOOD + b"N" * 33 + b'="1"\r\nV="' + b"v" * 501 + b'"\r\n' + b'A="2"\r\n'
    out = msgs(body)
    assert any(m.startswith("6:error:name " + "N" * 33 + " is 33 characters") for m in out)
    assert any(m.startswith("7:error:value of V is 501 characters") for m in out)
    assert "8:warning:A repeats line 4; the first occurrence wins" in out
    long_line = GOOD + b'L="' + b"x" * 500 + b'"' + b"#" * 40 + b"\r\n"
    assert any("more than 537" in m for m in msgs(long_line))


def test_file_size_limit() -> None:
    big = GOOD + b'X="' + b"x" * 400 + b'"\r\n'
    big = big * (120 * 1024 // len(big) + 1)
    assert any(m.startswith("0:error:file is") for m in msgs(big))


def test_parse_first_wins_and_crlf() -> None:
    assert parse(GOOD + b'A="2"\r\n') == {"A": "1", "B": ""}
    assert to_crlf(b"a\nb\r\nc") == b"a\r\nb\r\nc\r\n"
