"""Command line: serve, check, render, inventory."""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import uvloop

from .config import Config, ConfigError, build_config, load_config
from .files.service import FileRequest, fetch, whole_body
from .inventory.store import SchemaTooNew, StoreUnavailable, open_store
from .macros import expand_macros, normalize_mac
from .runtime import Runtime, SetupError, build_runtime
from .server import Server, plan

GC_YOUNG = 10_000  # see serve()

SAMPLE_MAC = "0080F0000001"


def _overrides(**flags: Any) -> dict[str, Any]:
    """Flags override the file (the brief: --interface, --state-dir, --http-port, ...)."""
    o: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None and value != ():
            o.setdefault(section, {})[key] = value

    # only what a flag sets: an absent --interface leaves server.interfaces of the file
    put("server", "interfaces", list(flags.get("interface") or ()) or None)
    put("server", "state_dir", flags.get("state_dir"))
    put("server", "address", flags.get("address"))
    put("http", "port", flags.get("http_port"))
    put("http", "listen", list(flags.get("http_listen") or ()) or None)
    put("admin", "listen", list(flags.get("admin_listen") or ()) or None)
    put("admin", "port", flags.get("admin_port"))
    put("log", "format", flags.get("log_format"))
    put("log", "level", flags.get("log_level"))
    put("files", "templates", flags.get("templates"))
    put("files", "variables", flags.get("variables"))
    put("admin", "token", flags.get("admin_token"))
    put("inventory", "database", flags.get("database"))
    put("server", "name", flags.get("name"))
    return o


def _loader(config: str | None, overrides: dict[str, Any]) -> tuple[Config, str | None]:
    if config:
        return load_config(config, overrides), config
    return build_config({}, overrides), None


def _fail(msg: str, code: int = 1) -> None:
    click.echo(msg, err=True)
    sys.exit(code)


config_option = click.option(
    "--config", "-c", type=click.Path(dir_okay=False), help="YAML configuration file"
)
interface_option = click.option(
    "--interface", "-i", multiple=True, help="phone-facing interface (repeatable)"
)
state_option = click.option("--state-dir", help="where the inventory lives (default ./state)")
database_option = click.option(
    "--database", envvar="PREPROV_DATABASE", show_envvar=True,
    help="postgresql://user:password@host:5432/db: an inventory shared with other servers "
    "(default: SQLite in the state directory)",
)  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="preprov")
def main() -> None:
    """preprov: the server side of SIP phone pre-provisioning."""


@main.command()
@config_option
@interface_option
@state_option
@database_option
@click.option("--name", help="this server's name in a shared inventory (default: the host name)")
@click.option("--http-port", type=int, help="port phones fetch files from (default 8080)")
@click.option("--admin-port", type=int, help="port of the API and metrics (default 8081; 0: any)")
@click.option("--address", help="IPv4 address put in URLs (default: the interface's)")
@click.option(
    "--http-listen",
    multiple=True,
    help="address phones fetch files from (repeatable; default: the interfaces')",
)
@click.option(
    "--admin-listen",
    multiple=True,
    help="address of the API, dashboard and metrics (repeatable; default 127.0.0.1)",
)
@click.option("--templates", help="template directory (default: the bundled configs/templates)")
@click.option("--variables", help="per-device variables, CSV or YAML")
@click.option("--log-format", type=click.Choice(["console", "json"]))
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option(
    "--admin-token", envvar="PREPROV_ADMIN_TOKEN", show_envvar=True,
    help="bearer token for changes through the API (batches, devices, reload)",
)  # fmt: skip
def serve(config: str | None, **flags: Any) -> None:
    """Run the server. With --interface alone it derives everything from that interface;
    with neither --interface nor --config it serves on loopback."""
    overrides = _overrides(**flags)

    def load() -> tuple[Config, str | None]:
        return _loader(config, overrides)

    try:
        load()
    except ConfigError as e:
        _fail(f"preprov: configuration refused\n{e}", 1)
    server = Server(load)
    # The cyclic garbage collector's young generation at 10,000 objects instead of 700:
    # every packet allocates events and dicts, and at 700 the collector ran about
    # fifty times a second, its older generations in proportion (pauses up to 77 ms
    # over the growing lease tables). Measured: DHCPv4 sustained 3,500 exchanges/s
    # with the defaults, 4,000 with this (README, "Speed"); HTTP the same.
    gc.set_threshold(GC_YOUNG, 10, 10)
    try:
        # uvloop: 44k against 33k answers/s for aiohttp on one core here (README, "Speed")
        uvloop.run(server.run())
    except (ConfigError, SetupError, SchemaTooNew, StoreUnavailable) as e:
        _fail(f"preprov: cannot start\n{e}", 1)
    except OSError as e:
        hint = ""
        if e.errno == 98:
            hint = " (another process holds that port: choose one with --http-port)"
        elif e.errno == 13:
            hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        elif e.errno == 99:
            hint = " (that address is not on this host)"
        _fail(f"preprov: cannot listen: {e.strerror}{hint}", 1)


def _runtime(config: str | None, overrides: dict[str, Any]) -> Runtime:
    try:
        cfg, file = _loader(config, overrides)
        return build_runtime(cfg, file)
    except (ConfigError, SetupError) as e:
        _fail(f"preprov: configuration refused\n{e}", 1)
        raise  # unreachable


def _sample_facts(rt: Runtime, mac: str | None, model: str | None) -> tuple[str, str]:
    mac = normalize_mac(mac) if mac else next(iter(rt.variables), SAMPLE_MAC)
    return mac, model or rt.config.models[0]


def _path_for(rt: Runtime, mac: str, model: str, fwver: str, name: str) -> str:
    """A request path that names this template for the sample device."""
    return expand_macros(name, mac, model, fwver)


@main.command()
@click.argument("folder", type=click.Path(file_okay=False))
def init(folder: str) -> None:
    """Write an editable lab into FOLDER: lab.yaml (every key, with its default), the
    bundled templates and devices.csv. Files already there are kept."""
    import shutil

    from .config import CONFIGS_DIR

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted(CONFIGS_DIR.rglob("*")):
        dst = out / src.relative_to(CONFIGS_DIR)
        if src.is_dir():
            dst.mkdir(exist_ok=True)
        elif not dst.exists():
            shutil.copyfile(src, dst)
            written.append(str(dst))
    for w in written:
        click.echo(f"wrote {w}")
    click.echo(f"next: preprov check --config {out / 'lab.yaml'}")


@main.command()
@config_option
@interface_option
@database_option
@click.option("--mac", help="sample device MAC (default: the first in the variables file)")
@click.option("--model", help="sample device model (default: the first configured)")
def check(
    config: str | None, interface: tuple[str, ...], database: str | None, mac: str | None,
    model: str | None,
) -> None:  # fmt: skip
    """Validate the configuration, print what `serve` would run, render every template for
    every device and model, lint the Panasonic files, check every rule's URL, models and
    credentials. `serve` refuses to start on the same errors. Exit 0 when there is no
    error, 1 otherwise."""
    from .checks import find_problems

    rt = _runtime(config, _overrides(interface=interface, database=database))
    click.echo(f"configuration: {config or '(built-in defaults)'}: valid")
    for line in plan(rt):
        click.echo(line)
    click.echo(f"templates: {rt.templates.root} ({len(rt.templates.entries)} files)")
    for s in rt.templates.skipped:
        click.echo(f"{s.name}: warning: {s.reason}")
    # --mac, --model: a device and a model checked besides those of the configuration
    problems = find_problems(rt, [normalize_mac(mac)] if mac else [], [model] if model else [])
    for p in problems:
        click.echo(p.render())
    errors = sum(p.severity == "error" for p in problems)
    if errors:
        _fail(f"{errors} error(s)", 1)
    click.echo("ok")


@main.command()
@config_option
@interface_option
@click.option("--mac", required=True, help="the phone's MAC, any notation")
@click.option("--model", required=True, help="the phone's model, e.g. KX-HDV130")
@click.option("--fwver", default=None, help="firmware version (default: the configured sample)")
@click.option("--path", "path", default=None, help="file to render (default: the rule's URL)")
def render(
    config: str | None, interface: tuple[str, ...], mac: str, model: str, fwver: str | None,
    path: str | None,
) -> None:  # fmt: skip
    """Print what a phone would receive, and which rule and template produced it."""
    from .ident import DeviceFacts

    rt = _runtime(config, _overrides(interface=interface))
    mac = normalize_mac(mac)
    fwver = fwver or rt.config.fwver_sample
    facts = DeviceFacts(mac=mac, model=model, fwver=fwver, vendor="Panasonic")
    decision = rt.site.rules.decide(facts)
    if path is None:
        if decision is None:
            _fail(rt.site.rules.explain(facts), 1)
            return
        path = expand_macros(decision.parsed.path, mac, model, fwver)
    ua = f"Panasonic_{model}/{fwver} ({mac.lower()})"
    ans = fetch(rt, FileRequest("render", None, path, user_agent=ua), trusted=True)
    ev = ans.event.fields()
    click.echo(
        f"# url={decision.url if decision else '-'} rule={ev.get('rule') or '-'} "
        f"template={ev.get('template') or '-'} path={path} status={ans.status}",
        err=True,
    )
    if ans.status != 200:
        _fail(ans.body.decode().strip(), 1)
    sys.stdout.buffer.write(whole_body(ans))


CHANNEL_SWITCHES = {
    "sippnp": "sip-pnp",
    "option160": "dhcpv4-option-160",
    "option159": "dhcpv4-option-159",
    "option66": "dhcpv4-option-66",
    "option17": "dhcpv6-option-17",
}


def _switch(name: str, param: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        f"--{name}/--no-{name}", default=True, help=f"the phone's {param} (default on)"
    )


@main.command()
@click.option("--interface", "-i", required=True, help="the interface the phone boots on")
@click.option("--mac", required=True, help="the phone's MAC, any notation")
@click.option(
    "--vendor",
    default="panasonic",
    show_default=True,
    type=click.Choice(
        [
            "panasonic",
            "yealink",
            "poly",
            "cisco",
            "grandstream",
            "snom",
            "fanvil",
            "gigaset",
            "audiocodes",
        ]
    ),
    help="whose phone: its PnP dialect, DHCP options, User-Agent and files",
)
@click.option("--model", default=None, help="default: KX-HDV130, or the vendor's usual model")
@click.option("--fwver", default=None, help="default: 01.000, or the vendor's")
@click.option("--ip-mode", type=click.Choice(["ipv4", "ipv6", "dual"]), default="ipv4",
              show_default=True)  # fmt: skip
@_switch("sippnp", "SIPPNP_PROV_ENABLE")
@_switch("option160", "OPTION160_PROV_ENABLE")
@_switch("option159", "OPTION159_PROV_ENABLE")
@_switch("option66", "OPTION66_ENABLE")
@_switch("option17", "DHCPV6_OPTION17_PROV_ENABLE")
@click.option("--timeout", default=60.0, show_default=True, help="seconds before giving up")
@click.option(
    "--cacert",
    type=click.Path(exists=True, dir_okay=False),
    help="a CA certificate to trust for https:// (preprov's lab CA: /api/ca.crt)",
)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def phone(
    interface: str, mac: str, vendor: str, model: str | None, fwver: str | None, ip_mode: str,
    timeout: float, cacert: str | None, as_json: bool, **switches: bool,
) -> None:  # fmt: skip
    """Boot a simulated phone (a Panasonic, or --vendor's) on an interface and report how
    it got provisioned. Exit 0 only when it ends up provisioned."""
    from .net import InterfaceError
    from .net import interface as find_interface
    from .phone.core import PhoneProfile
    from .phone.driver import SimulatedPhone
    from .phone.personas import persona_for

    try:
        iface = find_interface(interface)
        mac = normalize_mac(mac)
    except (InterfaceError, ValueError) as e:
        _fail(f"preprov phone: {e}", 2)
    ip = str(iface.ipv4[0].ip) if iface.ipv4 else None  # None: DHCPv4 leases one
    channels = frozenset(ch for sw, ch in CHANNEL_SWITCHES.items() if switches[sw])
    ip6 = str(iface.ipv6[0].ip) if iface.ipv6 else None  # None: DHCPv6 leases one
    persona = persona_for(vendor)
    if persona is not None and ip_mode != "ipv4":
        _fail(f"preprov phone: a {vendor} phone is simulated in IPv4 mode only", 2)
    model = model or (persona.model if persona else "KX-HDV130")
    fwver = fwver or (persona.fwver if persona else "01.000")
    if persona is not None:  # its options are switched on as the Panasonic ones are
        channels |= {f"dhcpv4-option-{c}" for c in persona.reads if switches["option66"]}
        if not switches["sippnp"]:
            channels -= {"sip-pnp"}
    profile = PhoneProfile(mac=mac, model=model, fwver=fwver, ip=ip, ip6=ip6, ip_mode=ip_mode,
                           channels=channels, vendor=vendor,
                           sip_port=persona.sip_port if persona else 5060)  # fmt: skip
    try:
        report = uvloop.run(SimulatedPhone(profile, interface, cacert=cacert).run(timeout))
    except OSError as e:
        _fail(f"preprov phone: {e.strerror or e} (ports 5060 and 68 busy, or not root?)", 2)
        return
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for st in report.steps:
            rest = " ".join(f"{k}={v}" for k, v in st.items() if k not in ("t_ms", "step"))
            click.echo(f"{st['t_ms']:>9.1f} ms  {st['step']:<22} {rest}")
        for f in report.files:
            click.echo(f"file {f.url}: {f.status or f.error} ({f.size} bytes)")
    if report.provisioned:
        if not as_json:
            click.echo(f"provisioned through {report.channel}: {report.url}")
        return
    _fail(f"not provisioned: {report.reason}", 1)


@main.command()
@click.option("--interface", "-i", required=True, help="the interface the phones boot on")
@click.option("--phones", "-n", default=100, show_default=True, help="how many phones")
@click.option("--rate", default=50.0, show_default=True, help="phones started a second")
@click.option("--mix", default="ipv4:70,ipv6:10,dual:20", show_default=True,
              help="IP modes and their weights")  # fmt: skip
@click.option("--timeout", default=60.0, show_default=True, help="seconds each phone may take")
@click.option("--ipv4-range", "ipv4_range",
              help="FIRST-LAST: the phones' own addresses, put on the interface for the run "
                   "(default: the lower half of its subnet)")  # fmt: skip
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="write an HTML report with a latency histogram per channel")  # fmt: skip
@click.option("--vendors", "vendor_mix", default="panasonic:1", show_default=True,
              help="vendors and their weights, e.g. panasonic:50,yealink:20,snom:30 "
                   "(those with SIP PnP)")  # fmt: skip
@click.option("--metrics", "metrics_url",
              help="the server's /metrics URL: report its own count of what it refused or "
                   "ignored during the storm")  # fmt: skip
def storm(
    interface: str, phones: int, rate: float, mix: str, timeout: float, ipv4_range: str | None,
    report_path: str | None, metrics_url: str | None, vendor_mix: str,
) -> None:  # fmt: skip
    """Boot many simulated phones at once from this namespace. Exit 0 only when every
    phone is provisioned."""
    from .net import InterfaceError
    from .net import interface as find_interface
    from .storm import (
        html_report,
        parse_mix,
        parse_range,
        parse_vendors,
        run_storm,
        server_refusals,
        summary,
    )

    try:
        iface = find_interface(interface)
        weights = parse_mix(mix)
        makers = parse_vendors(vendor_mix)
        sources = parse_range(ipv4_range) if ipv4_range else None
    except (InterfaceError, ValueError) as e:
        _fail(f"preprov storm: {e}", 2)
        return
    if phones < 1 or rate <= 0:
        _fail("preprov storm: --phones and --rate must be positive", 2)
    try:
        before = server_refusals(metrics_url) if metrics_url else None
        results = uvloop.run(run_storm(iface, phones, rate, weights, timeout, sources=sources,
                                       vendors=makers))  # fmt: skip
        server = server_refusals(metrics_url) - before if metrics_url and before is not None \
            else None  # fmt: skip
    except (ValueError, OSError) as e:
        _fail(f"preprov storm: {e}", 2)
        return
    text, by_channel = summary(results, server=server)
    click.echo(text)
    if report_path:
        settings = {"interface": interface, "phones": phones, "rate": rate, "mix": mix,
                    "timeout": timeout, "ipv4 range": ipv4_range or "lower half of the subnet",
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        html_report(Path(report_path), text, by_channel, settings, results)
        click.echo(f"report: {report_path}")
    if not all(r.report.provisioned for r in results):
        sys.exit(1)


@main.command()
@click.option("--phones", default=4, show_default=True, help="how many phones boot (1-250)")
@click.option(
    "--vendors",
    default="",
    help="also one phone of each: all, or a list such as yealink,cisco,snom",
)
def demo(phones: int, vendors: str) -> None:
    """As root: build a lab of network namespaces, start a server with the defaults, boot
    simulated phones against it, print each phone's steps and timings, tear the lab down."""
    from .demo import VENDOR_OUIS, run_demo

    chosen = list(VENDOR_OUIS) if vendors == "all" else [
        v.strip().lower() for v in vendors.split(",") if v.strip()]  # fmt: skip
    unknown = [v for v in chosen if v not in VENDOR_OUIS]
    if unknown:
        _fail(f"preprov demo: unknown vendor {unknown[0]!r} (known: all, "
              f"{', '.join(VENDOR_OUIS)})", 2)  # fmt: skip
    sys.exit(run_demo(phones, click.echo, chosen))


@main.command()
@config_option
@state_option
@database_option
@click.option("--events", "events_of", help="print the event log of this MAC instead")
@click.option("--stage", type=click.Choice(["seen", "url-sent", "fetching", "provisioned",
                                            "failed"]),
              help="only the devices at this stage of their current boot (failed: an error "
                   "and not provisioned)")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, the columns of the batch reports")
def inventory(
    config: str | None, state_dir: str | None, database: str | None, events_of: str | None,
    stage: str | None, as_json: bool, as_csv: bool,
) -> None:  # fmt: skip
    """Show the devices the server has seen, each on its current boot, or one device's
    events. Times are ISO 8601, UTC. --config: the state directory of that file."""
    from .web.dashboard import inventory_csv, iso

    if config is not None:
        try:
            loaded = load_config(config)
        except ConfigError as e:
            _fail(f"preprov: configuration refused\n{e}", 1)
            raise  # unreachable
        state_dir = state_dir or str(loaded.server.state_dir)
        database = database or loaded.inventory.database
    path = Path(state_dir or "state") / "preprov.db"
    if not database and not path.exists():
        _fail(f"no inventory at {path} (start the server first, or pass --state-dir)", 1)
    try:
        store = open_store(database, Path(state_dir or "state"))
    except (SchemaTooNew, StoreUnavailable) as too_new:
        _fail(f"preprov: {too_new}", 1)
        raise  # unreachable
    try:
        if events_of:
            evs = store.events(normalize_mac(events_of), limit=1000)
            for ev in evs:
                ev["time"] = iso(ev["ts"])
            if as_json:
                click.echo(json.dumps(evs, indent=2))
            for ev in [] if as_json else evs:
                rest = {k: v for k, v in ev.items()
                        if k not in ("id", "ts", "time", "kind", "mac") and v}  # fmt: skip
                click.echo(f"{ev['time']} {ev['kind']:<14} {json.dumps(rest)}")
            return
        rows = store.reads.status()
        if stage == "failed":
            rows = [r for r in rows if r["last_error"] and r["stage"] != "provisioned"]
        elif stage:
            rows = [r for r in rows if r["stage"] == stage]
        if as_csv:
            click.echo(inventory_csv(rows), nl=False)
            return
        for r in rows:
            for k in ("first_seen", "last_seen", "boot_started", "provisioned_at"):
                r[k] = iso(r[k])
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        click.echo(f"{'MAC':<13} {'MODEL':<12} {'FW':<8} {'IP':<16} {'STAGE':<12} "
                   f"{'BOOT STARTED':<21} {'SERVER':<12} LAST ERROR")  # fmt: skip
        for r in rows:
            click.echo(
                f"{r['mac']:<13} {r['model'] or '-':<12} {r['fwver'] or '-':<8} "
                f"{r['ipv4'] or r['ipv6'] or '-':<16} {r['stage']:<12} "
                f"{r['boot_started'] or '-':<21} {r['server'] or '-':<12} {r['last_error'] or ''}"
            )
    finally:
        store.close()


if __name__ == "__main__":
    main()
