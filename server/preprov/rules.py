"""Provisioning rules: which URL and which variables a device gets.

`decide` is a pure function from device facts to a Decision, so the HTTP,
SIP PnP and DHCP channels all ask the same question the same way. Rules are
tried in the order of the configuration; the first that matches wins.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import vendors
from .config import Rule
from .ident import NO_FACTS, DeviceFacts
from .macros import ServerUrl, fill_placeholders, parse_url


@dataclass(frozen=True)
class Decision:
    rule: str
    url: str  # placeholders filled, phone macros left for the phone
    parsed: ServerUrl
    variables: Mapping[str, object] = field(default_factory=dict)
    auth: str = "any"

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.parsed.user is None:
            return None
        return self.parsed.user, self.parsed.password or ""


def model_matches(model: str | None, prefixes: Sequence[str]) -> bool:
    """Region suffixes (KX-HDV130N, KX-HDV430NB) match the base model's rule."""
    if not model:
        return False
    m = model.upper()
    return any(m.startswith(p.upper()) for p in prefixes)


def why_not(rule: Rule, facts: DeviceFacts) -> str | None:
    """None when the rule matches the facts, else the first criterion that failed."""
    m = rule.match
    if m.mac and facts.mac not in m.mac:
        return f"MAC {facts.mac or '(unknown)'} not in its list"
    if m.oui and facts.oui not in m.oui:
        return f"OUI {facts.oui or '(unknown)'} not in its list"
    if m.model and not model_matches(facts.model, m.model):
        return f"model {facts.model or '(unknown)'} matches none of its prefixes"
    if m.vendor:
        v = (facts.vendor or "").lower()
        if v not in {x.lower() for x in m.vendor}:
            return f"vendor {facts.vendor or '(unknown)'} not in its list"
    if m.vendor_class:
        vc = facts.vendor_class or ""
        if not any(x in vc for x in m.vendor_class):
            return f"option 60 {vc or '(none)'!r} contains none of its strings"
    if m.subnet:
        where = facts.ip or facts.network
        if not where or not any(_within(where, net) for net in m.subnet):
            return f"address {where or '(unknown)'} in none of its subnets"
    if m.relay and (facts.relay is None or facts.relay not in {str(r) for r in m.relay}):
        return f"relay {facts.relay or '(none)'} not in its list"
    return None


def _within(where: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        if "/" in where:
            return ipaddress.ip_network(where, strict=False).subnet_of(net)  # type: ignore[arg-type]
        return ipaddress.ip_address(where) in net
    except (ValueError, TypeError):
        return False


class RuleSet:
    """The rules with the server's placeholders filled in once, ready to decide."""

    def __init__(self, rules: Sequence[Rule], placeholders: Mapping[str, str]) -> None:
        self.rules = list(rules)
        # What other channels said about a device (ident.Directory.known): set by the
        # server on each runtime's rule sets; the request's own facts come first.
        self.known: Callable[[str | None], DeviceFacts] = lambda _mac: NO_FACTS
        self.placeholders = dict(placeholders)
        # per vendor key ("" for none): each rule's decision, its URL for that vendor
        self._by_vendor: dict[str, list[Decision | None]] = {}
        self.decisions = [d for d in self.for_vendor(None) if d is not None] if all(
            r.url_for(None) is not None for r in self.rules) else []  # fmt: skip

    def for_vendor(self, vendor: str | None) -> list[Decision | None]:
        """Each rule's decision for a phone of that vendor (None: a rule without a URL
        for it), built once per vendor."""
        maker = vendors.by_name(vendor)
        key = maker.key if maker else ""
        got = self._by_vendor.get(key)
        if got is None:
            got = self._by_vendor[key] = []
            for rule in self.rules:
                raw = rule.url_for(vendor)
                if raw is None:
                    got.append(None)
                    continue
                url = fill_placeholders(raw, self.placeholders)
                got.append(Decision(rule=rule.name, url=url, parsed=parse_url(url),
                                    variables=dict(rule.variables), auth=rule.auth))  # fmt: skip
        return got

    def complete(self, facts: DeviceFacts) -> DeviceFacts:
        return facts.merged(self.known(facts.mac)).with_vendor_from_oui()

    def decide(self, facts: DeviceFacts) -> Decision | None:
        facts = self.complete(facts)
        for rule, decision in zip(self.rules, self.for_vendor(facts.vendor), strict=True):
            if decision is not None and why_not(rule, facts) is None:
                return decision
        return None

    def explain(self, facts: DeviceFacts) -> str:
        return explain(self.rules, self.complete(facts))


def decide(
    rules: Sequence[Rule], facts: DeviceFacts, placeholders: Mapping[str, str]
) -> Decision | None:
    return RuleSet(rules, placeholders).decide(facts)


def explain(rules: Sequence[Rule], facts: DeviceFacts) -> str:
    """Why no rule matched, rule by rule: what an operator reads in the event."""
    facts = facts.with_vendor_from_oui()
    parts = [f"{r.name}: {why_not(r, facts)}" for r in rules]
    return "no rule matched (" + "; ".join(parts) + ")" if parts else "no rules configured"
