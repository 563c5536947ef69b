"""Basic and Digest verification, with the client side computed here by RFC 7616's formulas."""

from __future__ import annotations

import base64
import hashlib

from preprov.web.auth import NONCE_LIFETIME, Authenticator

A = Authenticator("preprov", secret=b"s" * 32)


def digest_header(
    nonce: str,
    user: str = "lab",
    password: str = "pw",
    uri: str = "/x.cfg",
    algo: str = "MD5",
    qop: bool = True,
    realm: str = "preprov",
    nc: str = "00000001",
) -> str:
    h = (
        (lambda s: hashlib.md5(s.encode()).hexdigest())
        if algo == "MD5"
        else (lambda s: hashlib.sha256(s.encode()).hexdigest())
    )
    ha1, ha2 = h(f"{user}:{realm}:{password}"), h(f"GET:{uri}")
    if qop:
        resp = h(f"{ha1}:{nonce}:{nc}:abc:auth:{ha2}")
        extra = f', qop=auth, nc={nc}, cnonce="abc"'
    else:
        resp, extra = h(f"{ha1}:{nonce}:{ha2}"), ""
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{resp}", algorithm={algo}{extra}'
    )


def check(header: str | None, scheme: str = "any", now: float | None = None) -> tuple[bool, str]:
    r = A.check(header, "GET", "/x.cfg", "lab", "pw", scheme, now=now)
    return r.ok, r.reason


def test_digest_md5_sha256_and_rfc2069() -> None:
    n = A.nonce()
    assert check(digest_header(n)) == (True, "")
    assert check(digest_header(n, algo="SHA-256", nc="00000002")) == (True, "")
    assert check(digest_header(n, qop=False)) == (True, "")


def test_digest_nonce_count_replayed_is_refused() -> None:
    n = A.nonce()
    assert check(digest_header(n)) == (True, "")
    assert check(digest_header(n)) == (False, "nonce count 00000001 replayed")
    assert check(digest_header(n, nc="00000002")) == (True, "")
    # a wrong password does not use up a count
    assert check(digest_header(n, nc="00000003", password="bad"))[0] is False
    assert check(digest_header(n, nc="00000003")) == (True, "")
    # two challenges issued in the same millisecond are two nonces: counts are not shared
    a, b = A.nonce(now=5000.0), A.nonce(now=5000.0)
    assert a != b
    r = A.check(digest_header(a), "GET", "/x.cfg", "lab", "pw", now=5001.0)
    s = A.check(digest_header(b), "GET", "/x.cfg", "lab", "pw", now=5001.0)
    assert r.ok and s.ok


def test_digest_refusals() -> None:
    n = A.nonce()
    assert check(digest_header(n, password="bad")) == (False, "wrong user or password for 'lab'")
    assert check(digest_header(n, user="eve")) == (False, "wrong user or password for 'eve'")
    assert check(digest_header(n, uri="/other.cfg"))[1] == "Digest uri differs from the request"
    assert check(digest_header(n, realm="x"))[1] == "wrong realm 'x'"
    forged = base64.b64encode(b"1.0:" + b"0" * 32).decode()
    assert check(digest_header(forged))[1] == "nonce not issued by this server"
    other = Authenticator("preprov", secret=b"t" * 32).nonce()
    assert check(digest_header(other))[1] == "nonce not issued by this server"
    old = A.nonce(now=1000.0)
    r = A.check(digest_header(old), "GET", "/x.cfg", "lab", "pw", now=1000.0 + NONCE_LIFETIME + 1)
    assert (r.ok, r.reason, r.stale) == (False, "nonce expired", True)
    assert check('Digest username="lab"')[1] == "Digest credentials without realm"
    assert check(digest_header(n), scheme="basic")[1] == "digest authorization is not accepted here"


def test_basic() -> None:
    good = "Basic " + base64.b64encode(b"lab:pw").decode()
    assert check(good) == (True, "")
    assert check(good, scheme="digest")[0] is False
    assert check("Basic " + base64.b64encode(b"lab:nope").decode())[0] is False
    assert check("Basic !!!")[1] == "malformed Basic credentials"
    assert (
        check("Basic " + base64.b64encode(b"nocolon").decode())[1] == "malformed Basic credentials"
    )
    assert check(None)[1] == "no credentials sent"


def test_challenges() -> None:
    any_ = A.challenges("any")
    assert [c.split()[0] for c in any_] == ["Digest", "Digest", "Basic"]
    assert "algorithm=SHA-256" in any_[0] and "algorithm=MD5" in any_[1]
    assert A.challenges("basic") == ['Basic realm="preprov", charset="UTF-8"']
    assert "stale=true" in A.challenges("digest", stale=True)[0]
