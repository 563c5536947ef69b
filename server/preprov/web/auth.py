"""HTTP Basic (RFC 7617) and Digest (RFC 7616, MD5 and SHA-256) for config files.

Which one a Panasonic phone's HTTP client answers is OPEN (docs/protocol.md §6), so
by default a 401 offers both. Written here because aiohttp has Basic only on
its client side and no maintained aiohttp server middleware does Digest; it is
about a hundred lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass

NONCE_LIFETIME = 300.0  # seconds
MAX_COUNTS_PER_NONCE = 10_000  # past this a client is sent a fresh nonce (stale=true)

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    user: str | None = None
    reason: str = ""
    stale: bool = False


class Authenticator:
    def __init__(self, realm: str, secret: bytes | None = None) -> None:
        self.realm = realm
        self.secret = secret or os.urandom(32)
        # nonce -> (issued, the nonce counts accepted with it): a request replayed
        # with the same nc is refused (RFC 7616 §3.4). Entries leave with their
        # nonce's lifetime, so the map holds at most the last 300 s of clients.
        self._seen: dict[str, tuple[float, set[str]]] = {}
        self._pruned = 0.0

    # -- challenges --------------------------------------------------------------

    def nonce(self, now: float | None = None) -> str:
        """Issue time and a random part, signed: unique per challenge (so that two
        clients never share nonce counts) and checked without server state."""
        ts = f"{now if now is not None else time.time():.3f}:{os.urandom(6).hex()}"
        mac = hmac.new(self.secret, ts.encode(), hashlib.sha256).hexdigest()[:32]
        return base64.b64encode(f"{ts}:{mac}".encode()).decode()

    def challenges(self, scheme: str, stale: bool = False) -> list[str]:
        out = []
        if scheme in ("any", "digest"):
            nonce = self.nonce()
            for algo in ("SHA-256", "MD5"):
                out.append(
                    f'Digest realm="{self.realm}", qop="auth", algorithm={algo}, '
                    f'nonce="{nonce}", opaque="{self.realm}"' + (", stale=true" if stale else "")
                )
        if scheme in ("any", "basic"):
            out.append(f'Basic realm="{self.realm}", charset="UTF-8"')
        return out

    # -- verification ------------------------------------------------------------

    def check(
        self,
        header: str | None,
        method: str,
        uri: str,
        user: str,
        password: str,
        scheme: str = "any",
        now: float | None = None,
    ) -> AuthResult:
        if not header:
            return AuthResult(False, reason="no credentials sent")
        kind, _, rest = header.partition(" ")
        kind = kind.lower()
        if kind == "basic" and scheme in ("any", "basic"):
            return self._basic(rest.strip(), user, password)
        if kind == "digest" and scheme in ("any", "digest"):
            return self._digest(rest, method, uri, user, password, now)
        return AuthResult(False, reason=f"{kind or 'empty'} authorization is not accepted here")

    def _basic(self, token: str, user: str, password: str) -> AuthResult:
        try:
            got_user, sep, got_pass = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return AuthResult(False, reason="malformed Basic credentials")
        if not sep:
            return AuthResult(False, reason="malformed Basic credentials")
        if hmac.compare_digest(got_user, user) and hmac.compare_digest(got_pass, password):
            return AuthResult(True, user=got_user)
        return AuthResult(False, user=got_user, reason=f"wrong user or password for {got_user!r}")

    def _digest(
        self, params: str, method: str, uri: str, user: str, password: str, now: float | None
    ) -> AuthResult:
        p = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
             for m in _PARAM.finditer(params)}  # fmt: skip
        for k in ("username", "realm", "nonce", "uri", "response"):
            if k not in p:
                return AuthResult(False, reason=f"Digest credentials without {k}")
        got_user = p["username"]
        if p["realm"] != self.realm:
            return AuthResult(False, user=got_user, reason=f"wrong realm {p['realm']!r}")
        if p["uri"] != uri:
            return AuthResult(False, user=got_user, reason="Digest uri differs from the request")
        fresh = self._nonce_age(p["nonce"], now)
        if fresh is None:
            return AuthResult(False, user=got_user, reason="nonce not issued by this server")
        algo = (p.get("algorithm") or "MD5").upper()
        if algo not in ("MD5", "SHA-256"):
            return AuthResult(False, user=got_user, reason=f"unsupported algorithm {algo}")

        def h(s: str) -> str:
            fn = hashlib.md5 if algo == "MD5" else hashlib.sha256
            return fn(s.encode()).hexdigest()

        ha1 = h(f"{user}:{self.realm}:{password}")
        ha2 = h(f"{method}:{uri}")
        qop = p.get("qop")
        if qop:
            if qop != "auth" or "nc" not in p or "cnonce" not in p:
                return AuthResult(False, user=got_user, reason=f"unsupported qop {qop!r}")
            expected = h(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:{qop}:{ha2}")
        else:  # RFC 2069 compatibility, as older phone firmware sends it
            expected = h(f"{ha1}:{p['nonce']}:{ha2}")
        if not (hmac.compare_digest(got_user, user)
                and hmac.compare_digest(expected, p["response"].lower())):  # fmt: skip
            return AuthResult(
                False, user=got_user, reason=f"wrong user or password for {got_user!r}"
            )
        if fresh > NONCE_LIFETIME:
            return AuthResult(False, user=got_user, reason="nonce expired", stale=True)
        if qop:
            return self._count(p["nonce"], p["nc"], fresh, got_user, now)
        # RFC 2069 has no nonce count: a replay within the nonce's lifetime passes
        return AuthResult(True, user=got_user)

    def _count(self, nonce: str, nc: str, age: float, user: str, now: float | None) -> AuthResult:
        t = now if now is not None else time.time()
        if t - self._pruned > NONCE_LIFETIME / 10:
            self._pruned = t
            self._seen = {n: v for n, v in self._seen.items() if t - v[0] <= NONCE_LIFETIME}
        counts = self._seen.setdefault(nonce, (t - age, set()))[1]
        if nc.lower() in counts:
            return AuthResult(False, user=user, reason=f"nonce count {nc} replayed")
        if len(counts) >= MAX_COUNTS_PER_NONCE:
            return AuthResult(False, user=user, reason="nonce used too often", stale=True)
        counts.add(nc.lower())
        return AuthResult(True, user=user)

    def _nonce_age(self, nonce: str, now: float | None) -> float | None:
        try:
            ts, _, mac = base64.b64decode(nonce, validate=True).decode().rpartition(":")
            issued = float(ts.partition(":")[0])
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        want = hmac.new(self.secret, ts.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(mac, want):
            return None
        return (now if now is not None else time.time()) - issued
