"""What phones would hit, found before they do: `preprov check` prints it, `serve` refuses
to start on an error and a reload refuses to take one.

- every template rendered for every device of the variables file and for every
  configured model, each Panasonic file linted;
- every rule's URL, when it points at this server, resolved to a template for each
  configured model;
- a rule's model prefixes that start none of the configured models (a misspelt
  model would disable the rule without a word);
- `auth: basic|digest` with no credentials anywhere (the URL or the devices' own);
- rules on facts a channel does not carry (the model on DHCP, option 60 and the relay
  on SIP PnP) while that channel is on: warnings, as the device's record may know
  them from another channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import vendors
from .config import _line_of
from .files.lint import lint, lint_vendor
from .files.service import FileRequest, fetch
from .files.templates import UnsafePath, check_request_path
from .macros import expand_macros
from .rules import model_matches
from .runtime import Runtime, SetupError

SAMPLE_MAC = "0080F0000001"


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" or "warning"
    where: str  # a configuration key (rules[0].url) or a template (Config{MAC}.cfg:3)
    reason: str
    file: str | None = None
    line: int | None = None

    def render(self) -> str:
        at = f"{self.file}:{self.line}: " if self.file and self.line else (
            f"{self.file}: " if self.file else "")  # fmt: skip
        return f"{at}{self.where}: {self.severity}: {self.reason}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "key": self.where,
                "reason": f"{self.severity}: {self.reason}"}  # fmt: skip


class ChecksFailed(SetupError):
    """A configuration that phones would fail on: refused at start and on reload."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(p.render() for p in self.problems))


def find_problems(
    rt: Runtime, macs: Sequence[str] = (), models: Sequence[str] = ()
) -> list[Problem]:
    """`macs` and `models`: checked besides those of the variables file and `models`."""
    out = [*_rule_problems(rt, models), *_template_problems(rt, macs, models)]
    return _locate(rt.config_file, out)


def errors(problems: Sequence[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def _models(rt: Runtime, extra: Sequence[str] = ()) -> list[str]:
    return list(dict.fromkeys([*extra, *rt.config.models]))


def _rule_problems(rt: Runtime, extra_models: Sequence[str]) -> list[Problem]:
    c = rt.config
    out = []
    models = _models(rt, extra_models)
    mac = next(iter(rt.variables), SAMPLE_MAC)
    own_credentials = any(v.get("http_user") for v in rt.variables.values())
    panasonic = rt.site.rules.for_vendor("panasonic")  # {MODEL}.cfg: what check can resolve
    for i, (rule, decision) in enumerate(zip(c.rules, panasonic, strict=True)):
        at = f"rules[{i}]"
        for prefix in rule.match.model:
            if not any(model_matches(m, [prefix]) for m in models):
                out.append(Problem("error", f"{at}.match.model", (
                    f"{prefix!r} starts none of the configured models ({', '.join(models)}):"
                    " a phone can never match it; add the model to `models` or correct it")))
        if decision is None:
            continue  # no URL for a Panasonic: its other vendors' URLs are theirs to check
        if rule.auth != "any" and decision.credentials is None and not own_credentials:
            out.append(Problem("error", f"{at}.auth", (
                f"auth: {rule.auth}, but the URL has no user:password and no device of "
                "files.variables has http_user: nothing to check a phone against")))
        if rule.match.model and (c.dhcp4.enabled or c.dhcp6.enabled) and rt.interfaces:
            out.append(Problem("warning", f"{at}.match.model", (
                "DHCP requests carry no model: DHCP answers this rule only for phones that "
                "told their model before, by SIP PnP or HTTP")))
        if (rule.match.vendor_class or rule.match.relay) and c.pnp.enabled and rt.interfaces:
            what = "option 60" if rule.match.vendor_class else "a relay"
            out.append(Problem("warning", f"{at}.match", (
                f"a SIP PnP SUBSCRIBE carries no {what}: PnP answers this rule only for "
                "phones whose DHCP request told it before")))
        if rule.url_base is not None and "${server" in rule.url_base:
            folders = {e.vendor for e in rt.templates.entries if e.vendor}
            missing = [v.key for v in vendors.VENDORS
                       if v.key != "panasonic" and v.key not in rule.urls and v.key not in folders]
            if missing:
                out.append(Problem("warning", f"{at}.url_base", (
                    "phones of " + ", ".join(missing) + " are sent <base>/<vendor>/, where "
                    f"{rt.templates.root} holds no template (only a lab without them is right)")))
        if "${server" not in (rule.url_for("panasonic") or ""):
            continue  # a URL of another server: its files are not ours to check
        for model in models:
            path = expand_macros(decision.parsed.path or "/", mac, model, c.fwver_sample)
            if path.endswith("/"):
                path += f"{model}.cfg"  # a folder URL: the phone asks for {MODEL}.cfg
            try:
                found = rt.templates.resolve(check_request_path(path))
            except UnsafePath as e:
                out.append(Problem("error", f"{at}.url", f"the path {path} is refused: {e}"))
                break
            if found is None:
                out.append(Problem("error", f"{at}.url", (
                    f"a {model} is sent to {path}, which matches no template in "
                    f"{rt.templates.root}")))
                break
    return out


def _template_problems(
    rt: Runtime, extra_macs: Sequence[str], extra_models: Sequence[str]
) -> list[Problem]:
    """Each template rendered as a phone would get it: per-device ones for every device
    of the variables file (a sample MAC without one), the others for every model."""
    out: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    models = _models(rt, extra_models)
    macs = list(dict.fromkeys([*extra_macs, *rt.variables])) or [SAMPLE_MAC]
    fw = rt.config.fwver_sample
    for entry in rt.templates.entries:
        if entry.raw:
            continue
        own = macs
        if entry.vendor is not None:  # a vendor's folder: that vendor's devices (or one)
            own = [m for m in macs if getattr(vendors.by_oui(m), "key", None) == entry.vendor]
            own = own or macs[:1]
        cases = ([(m, models[0]) for m in own] if entry.per_device
                 else [(own[0], model) for model in models])  # fmt: skip
        for mac, model in cases:
            path = "/" + expand_macros(entry.name, mac, model, fw)
            ua = f"Panasonic_{model}/{fw} ({mac.lower()})"
            # as registered: auto-add off must not keep a template from being checked
            ans = fetch(rt, FileRequest("check", None, path, user_agent=ua),
                        lambda _m: True, trusted=True)  # fmt: skip
            if ans.status == 500:  # the template failed (a 403, no rule for it: not ours)
                reason = ans.body.decode(errors="replace").strip()
                if (entry.name, reason) not in seen:
                    seen.add((entry.name, reason))
                    out.append(Problem("error", entry.name, f"for {mac} {model}: {reason}"))
            if ans.status != 200:
                continue
            findings = lint(ans.body) if entry.panasonic else (
                lint_vendor(entry.vendor, ans.body) if entry.vendor else [])  # fmt: skip
            if findings:
                for f in findings:
                    key = (entry.name, f.message)
                    if key not in seen:
                        seen.add(key)
                        where = f"{entry.name}:{f.line}" if f.line else entry.name
                        why = f"{f.message} (rendered for {mac} {model})"
                        out.append(Problem(f.severity, where, why))
    return out


def _locate(file: str | None, problems: list[Problem]) -> list[Problem]:
    """The configuration file and line of each problem about a key."""
    if not file or not any(p.where.startswith("rules[") for p in problems):
        return problems
    try:
        root = yaml.compose(Path(file).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return problems
    if not (isinstance(root, yaml.MappingNode)
            and any(k.value == "rules" for k, _ in root.value)):  # fmt: skip
        return [Problem(p.severity, p.where, p.reason, file) for p in problems]  # default rules
    out = []
    for p in problems:
        if p.where.startswith("rules["):
            loc: list[str | int] = []
            for part in p.where.replace("]", "").replace("[", ".").split("."):
                loc.append(int(part) if part.isdigit() else part)
            p = Problem(p.severity, p.where, p.reason, file, _line_of(root, loc))
        out.append(p)
    return out
