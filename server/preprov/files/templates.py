"""A directory of configuration files whose names carry the phone's macros.

`Config{MAC}.cfg` answers `/Config0080F0C571EB.cfg` with MAC=0080F0C571EB.
Only files indexed from the directory can ever be served: a request path is
matched against the index, never joined to the directory, so `..`, encoded
dots, absolute paths and symlinks cannot reach outside it.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .lint import to_crlf

# What each macro can stand for in a request path. Macros are case-sensitive
# (docs/protocol.md §2): {MAC} is upper-case hex, {mac} lower-case.
MACRO_PATTERNS = {
    "MAC": r"[0-9A-F]{12}",
    "mac": r"[0-9a-f]{12}",
    "MODEL": r"[A-Za-z0-9][A-Za-z0-9_\-]*",
    "fwver": r"[A-Za-z0-9][A-Za-z0-9_.\-]*?",
}
# Fixed-width macros are more specific than free-form ones when two names tie.
_SPECIFICITY = {"MAC": 2, "mac": 2, "MODEL": 1, "fwver": 0}
_NAME_MACRO = re.compile(r"\{(MAC|mac|MODEL|fwver)\}")

CACHE_SIZE = 4096
STAT_INTERVAL = 1.0  # seconds
RAW_INLINE_MAX = 1 << 20  # raw files larger than this are streamed from disk, never held


class TemplateError(Exception):
    """A template could not be rendered; the message says why."""


@dataclass
class Entry:
    name: str  # path relative to the root, with macros, "/" separated
    path: Path
    regex: re.Pattern[str] | None  # None for a name without macros
    literal_len: int
    specificity: int
    panasonic: bool
    raw: bool
    mtime_ns: int = 0
    checked: float = 0.0  # monotonic time of the last stat
    compiled: jinja2.Template | None = None
    data: bytes | None = None
    size: int = 0  # of a raw file streamed from disk (data None)
    vendor: str | None = None  # the vendor key of its folder (yealink/...), if any

    @property
    def per_device(self) -> bool:
        """A file of one device ({MAC} or {mac} in its name): it may hold its secrets."""
        return "{MAC}" in self.name or "{mac}" in self.name


@dataclass(frozen=True)
class Resolved:
    entry: Entry
    macros: dict[str, str]  # what the path says of the device


@dataclass
class Skipped:
    name: str
    reason: str


def vendor_folder(rel: str) -> str | None:
    """The vendor whose folder a template is in (`yealink/{mac}.cfg`, `lab2/yealink/...`:
    yealink), if any other than Panasonic (whose files sit at the top)."""
    from ..vendors import by_name

    for folder in reversed(rel.split("/")[:-1]):  # a/yealink/x.cfg: the nearest folder
        maker = by_name(folder)
        if maker is not None:
            return maker.key if maker.key != "panasonic" else None
    return None


def model_pattern(models: Iterable[str]) -> str:
    """{MODEL} in a file name stands for a configured model (a prefix: KX-HDV130 also
    names KX-HDV130N), not for any name at all: `y000000000028.cfg` or
    `805ec0112233.cfg` is not a Panasonic's `{MODEL}.cfg`."""
    names = sorted({re.escape(m) for m in models if m}, key=len, reverse=True)
    return f"(?:{'|'.join(names)})[A-Za-z0-9_\\-]*" if names else MACRO_PATTERNS["MODEL"]


def _compile_name(
    name: str, patterns: Mapping[str, str] = MACRO_PATTERNS
) -> tuple[re.Pattern[str] | None, int, int]:
    parts = _NAME_MACRO.split(name)
    if len(parts) == 1:
        return None, len(name), 0
    out, seen, literal, spec = [], set(), 0, 0
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(part))
            literal += len(part)
        elif part in seen:
            out.append(f"(?P={part})")
        else:
            seen.add(part)
            out.append(f"(?P<{part}>{patterns[part]})")
            spec += _SPECIFICITY[part]
    return re.compile("".join(out)), literal, spec


class UnsafePath(Exception):
    pass


def check_request_path(raw_path: str) -> str:
    """The request path relative to the root, or UnsafePath with the reason.

    The path is percent-decoded up to three times, so that `%2e%2e` and
    `%252e%252e` are seen for what they are.
    """
    path = raw_path.split("?", 1)[0]
    if "%" not in path and "\\" not in path and "/." not in path and not path.startswith("//"):
        if "\x00" in path or re.match(r"^/?[A-Za-z]:", path):
            raise UnsafePath("NUL byte or drive letter in path")
        return path.lstrip("/")  # the common case: nothing encoded, no dot segment
    forms = [path]
    for _ in range(3):
        nxt = unquote(forms[-1], errors="strict")
        if nxt == forms[-1]:
            break
        forms.append(nxt)
    for form in forms:
        if "\x00" in form:
            raise UnsafePath("NUL byte in path")
        if "\\" in form:
            raise UnsafePath("backslash in path")
        if form.startswith("//") or re.match(r"^/?[A-Za-z]:", form):
            raise UnsafePath("absolute path")
        segments = form.split("/")
        if any(s in ("..", ".") for s in segments):
            raise UnsafePath("'..' or '.' segment escapes the template directory")
    if len(forms) > 2:
        raise UnsafePath("percent-encoding inside percent-encoding")
    return forms[-1].lstrip("/")


class TemplateSet:
    def __init__(
        self, root: Path, panasonic: Iterable[str] = ("*.cfg",), raw: Iterable[str] = (),
        models: Iterable[str] = (),
    ) -> None:  # fmt: skip
        """`models`: what {MODEL} may stand for (see model_pattern); any name when empty."""
        self.root = root.resolve()
        self.patterns_by_macro = dict(MACRO_PATTERNS, MODEL=model_pattern(models))
        self.panasonic_globs = list(panasonic)
        self.raw_globs = list(raw)
        self.skipped: list[Skipped] = []
        self.exact: dict[str, Entry] = {}
        self.patterns: list[Entry] = []
        self.env = SandboxedEnvironment(
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )
        self._cache: OrderedDict[Hashable, bytes] = OrderedDict()
        # told of an edit that did not compile (the last good version stays served)
        self.on_problem: Callable[[str], None] = lambda _reason: None
        self._index()

    def compile_all(self) -> list[str]:
        """Load and compile every template now: the problems, one line each (empty when
        all are good). A server refuses to start, or a reload to take, on any."""
        problems = []
        for e in self.entries:
            try:
                self._load_or_explain(e)
            except TemplateError as err:
                problems.append(str(err))
        return problems

    # -- index -----------------------------------------------------------------

    def _index(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"template directory {self.root} does not exist")
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            base = Path(dirpath)
            for d in list(dirnames):
                if d.startswith(".") or (base / d).is_symlink():
                    dirnames.remove(d)
                    if not d.startswith("."):
                        self.skipped.append(Skipped(self._rel(base / d), "symlink not followed"))
            for f in sorted(filenames):
                p = base / f
                rel = self._rel(p)
                if f.startswith("."):
                    continue
                if p.is_symlink():
                    self.skipped.append(Skipped(rel, "symlink not served"))
                    continue
                self._add(rel, p)
        self.patterns.sort(key=lambda e: (-e.literal_len, -e.specificity, e.name))

    def _rel(self, p: Path) -> str:
        return p.relative_to(self.root).as_posix()

    def _add(self, rel: str, p: Path) -> None:
        # a folder named after a vendor (yealink/, grandstream/) holds that vendor's files:
        # its own format (not Panasonic's), its own models for {MODEL}
        vendor = vendor_folder(rel)
        patterns = MACRO_PATTERNS if vendor else self.patterns_by_macro
        regex, literal, spec = _compile_name(rel, patterns)
        leaf = rel.rsplit("/", 1)[-1]
        raw = any(fnmatch.fnmatch(leaf, g) for g in self.raw_globs) or not _is_text(p)
        entry = Entry(
            name=rel,
            path=p,
            regex=regex,
            literal_len=literal,
            specificity=spec,
            panasonic=not raw and vendor is None
            and any(fnmatch.fnmatch(leaf, g) for g in self.panasonic_globs),
            raw=raw,
            vendor=vendor,
        )
        if regex is None:
            self.exact[rel] = entry
        else:
            self.patterns.append(entry)

    @property
    def entries(self) -> list[Entry]:
        return [*self.exact.values(), *self.patterns]

    # -- lookup ----------------------------------------------------------------

    def resolve(self, rel_path: str) -> Resolved | None:
        e = self.exact.get(rel_path)
        if e is not None:
            return Resolved(e, {})
        for e in self.patterns:
            assert e.regex is not None
            m = e.regex.fullmatch(rel_path)
            if m:
                return Resolved(e, m.groupdict())
        return None

    # -- rendering -------------------------------------------------------------

    def _load(self, e: Entry) -> None:
        # An edited file is picked up within STAT_INTERVAL seconds, without a
        # stat per request.
        now = time.monotonic()
        if now - e.checked < STAT_INTERVAL and (e.compiled is not None or e.data is not None):
            return
        e.checked = now
        with self._open(e) as f:
            st = os.fstat(f.fileno())
            if st.st_mtime_ns == e.mtime_ns and (e.compiled is not None or e.data is not None):
                return
            if e.raw and st.st_size > RAW_INLINE_MAX:
                e.data, e.size, e.mtime_ns = None, st.st_size, st.st_mtime_ns
                return  # streamed: see big_file
            data = f.read()
        e.mtime_ns = st.st_mtime_ns
        if e.raw:
            e.data = data
            return
        try:
            e.compiled = self.env.from_string(data.decode("utf-8"))
        except (jinja2.TemplateSyntaxError, UnicodeDecodeError) as err:
            why = (f"{e.name}:{err.lineno}: template syntax: {err.message}"
                   if isinstance(err, jinja2.TemplateSyntaxError)
                   else f"{e.name}: not UTF-8 text: {err}")  # fmt: skip
            if e.compiled is not None:
                # an edit that does not compile: phones keep getting the last good one
                self.on_problem(f"{why} (the edit is not served; the last good version is)")
                return
            raise TemplateError(why) from None

    def _open(self, e: Entry) -> BinaryIO:
        """The file, opened through a descriptor that cannot have been reached
        through a symlink: O_NOFOLLOW refuses a link put in place of the file after
        it was indexed, and the descriptor's real path must still be inside the
        root (a folder swapped for a link on the way)."""
        try:
            fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise TemplateError(f"{e.name} is now a symlink: not served") from None
            raise
        f = os.fdopen(fd, "rb")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TemplateError(f"{e.name} is no longer a regular file: not served")
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if not real.is_relative_to(self.root):
                raise TemplateError(f"{e.name} now resolves outside the template directory")
        except BaseException:
            f.close()
            raise
        return f

    def big_file(self, e: Entry) -> tuple[int, int] | None:
        """(size, mtime_ns) of a raw file too large to hold, which is streamed from disk
        (open_raw), or None for a file served from memory. TemplateError as render."""
        if not e.raw:
            return None
        self._load_or_explain(e)
        return (e.size, e.mtime_ns) if e.data is None else None

    def _load_or_explain(self, e: Entry) -> None:
        try:
            self._load(e)
        except FileNotFoundError:
            raise TemplateError(f"{e.name} was removed; send SIGHUP to re-index") from None
        except OSError as err:
            raise TemplateError(f"{e.name}: cannot read: {err.strerror}") from None

    def open_raw(self, e: Entry) -> BinaryIO:
        """The file itself, opened as _open does (no symlink followed, inside the root)."""
        return self._open(e)

    def render(
        self,
        e: Entry,
        context: Callable[[], Mapping[str, object]],
        cache_key: Hashable | None = None,
    ) -> bytes:
        """The bytes a device receives. Panasonic files go out with CRLF line ends."""
        self._load_or_explain(e)
        if e.raw:
            assert e.data is not None
            return e.data
        key = (e.name, e.mtime_ns, cache_key) if cache_key is not None else None
        if key is not None:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        assert e.compiled is not None
        try:
            text = e.compiled.render(context())
        except jinja2.UndefinedError as err:
            raise TemplateError(f"{e.name}: {err.message}") from None
        except jinja2.TemplateError as err:
            raise TemplateError(f"{e.name}: {err}") from None
        out = text.encode("utf-8")
        if e.panasonic:
            out = to_crlf(out)
        if key is not None:
            self._cache[key] = out
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return out


def _is_text(p: Path) -> bool:
    try:
        head = p.read_bytes()[:8192]
    except OSError:
        return False
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 4  # a character cut at the 8 KiB boundary
    return True
