"""Commands for building data and training: the sample world and every training stage.

Option defaults come from the settings dataclasses (:mod:`anybind.training.settings`) and the
run layout (:data:`anybind.layout.DEFAULT_RUN`), so the CLI never restates them.
"""

from __future__ import annotations

import os

import click

from anybind.cli.app import cli
from anybind.errors import AnybindError
from anybind.layout import DEFAULT_RUN
from anybind.specs import BINDING_MODALITY
from anybind.training.settings import AlignOutSettings, AlignSettings, BindSettings, InstructSettings

DEFAULT_WORLD, DEFAULT_BIND = str(DEFAULT_RUN.world), str(DEFAULT_RUN.bind)
DEFAULT_CHAT, DEFAULT_DECODER = str(DEFAULT_RUN.chat), str(DEFAULT_RUN.decoder)


@cli.group()
def world():
    """The built-in sample world (real digits, speech, videos, point clouds)."""


@world.command(name="build")
@click.argument("directory", default=DEFAULT_WORLD, type=click.Path(file_okay=False))
@click.option("--modality", "modalities", multiple=True, help="Only these modalities (default: every installed one).")
@click.option("--limit", type=int, help="Use only this many digits (quick builds).")
@click.option("--small", is_flag=True, help="Fewer variants per modality (for tests).")
@click.option("--variant", type=click.Choice(["sample", "ood"]), default="sample", show_default=True,
              help="ood: an evaluation set made differently (other fonts, styles, voices, containers), all held out.")
@click.option("--seed", type=int, default=0, show_default=True)
def world_build(directory, modalities, limit, small, variant, seed):
    """Write the sample world's files and manifest.jsonl into DIRECTORY."""
    import time

    from anybind.data.manifest import read_manifest
    from anybind.data.world import build_world

    began = time.time()
    manifest = build_world(directory, modalities or None, limit=limit, seed=seed, small=small, variant=variant)
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
    from anybind.data.manifest import read_manifest

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
@click.option("--embed-dim", type=int, default=BindSettings.embed_dim, show_default=True)
@click.option("--save-every", type=int, default=BindSettings.save_every, show_default=True, help="Mid-stage checkpoint interval (steps).")
@click.option("--on-bad-row", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
              help="A manifest row whose file is unusable: report and skip it, or stop.")
@click.option("--retrain", is_flag=True, help="Train modalities again even if already trained.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trunk", "trunks", multiple=True, metavar="MODALITY=REF",
              help="Start MODALITY's trunk from a checkpoint: hf:PATH (a local transformers directory) or "
                   "timm:NAME@FILE (repeatable).")
@click.option("--train-trunk", "train_trunks", multiple=True, metavar="MODALITY=MODE",
              help="How much of a pretrained trunk trains: frozen, last:N, lora[:R] or full (default full; repeatable).")
@click.option("--space", metavar="hf:PATH", help="Bind to a frozen pretrained image-text space (a CLIP directory): "
              "its image and text towers are used as they are.")
@click.option("--feature-cache/--no-feature-cache", default=True, show_default=True,
              help="Keep a frozen trunk's outputs per file (BOUND/.features/), computed once.")
def train_bind_command(manifest, out, modalities, steps, batch_size, lr, embed_dim, save_every, on_bad_row, retrain, seed,
                       trunks, train_trunks, space, feature_cache):
    """Bind modalities into one space: image against text, every other modality against images.

    \b
    anybind train bind --trunk image=hf:/models/dinov2-small --train-trunk image=frozen
    anybind train bind --space hf:/models/clip-vit-base-patch32      (ImageBind's recipe)
    """
    from anybind.training.bind import train_bind
    from anybind.trunks import TrunkMode, TrunkReference

    if space is not None:
        if TrunkReference.parse(space).scheme != "hf":
            raise click.BadParameter("expected hf:PATH (a CLIP directory)", param_hint="--space")
        clash = [m for m in _pairs(trunks, "--trunk") if m in ("image", "text")]
        if clash:
            raise click.UsageError(f"--space gives the image and text towers; leave out --trunk {clash[0]}=...")
    settings = BindSettings(embed_dim=embed_dim, steps=steps, batch_size=batch_size, lr=lr, save_every=save_every,
                            seed=seed, on_bad_row=on_bad_row, space=space, feature_cache=feature_cache,
                            trunks={m: str(TrunkReference.parse(v)) for m, v in _pairs(trunks, "--trunk").items()},
                            train_trunks={m: str(TrunkMode.parse(v)) for m, v in _pairs(train_trunks, "--train-trunk").items()})
    results = train_bind(manifest, out, list(modalities) or None, settings, retrain=retrain)
    for r in results:
        click.echo(f"bound {r['modality']}: {r['rows']} rows in {r['seconds']:.1f}s")
    only = "".join(f" --modality {m}" for m in modalities)
    click.echo(f"Model: {out}  (next: anybind eval bind --model {out} --manifest {manifest}{only})")


def _pairs(values, option: str) -> dict[str, str]:
    """``("image=hf:/x", ...)`` -> ``{"image": "hf:/x"}``; each modality at most once."""
    pairs = {}
    for value in values:
        modality, sep, rest = value.partition("=")
        if not sep or not modality or not rest:
            raise click.BadParameter(f"{value!r}: expected MODALITY=VALUE", param_hint=option)
        if modality in pairs:
            raise click.BadParameter(f"{modality} given twice", param_hint=option)
        pairs[modality] = rest
    return pairs


@train.command(name="align-in")
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path(), help="Manifest file or world folder.")
@click.option("--bound", default=DEFAULT_BIND, show_default=True, type=click.Path(), help="Bound model directory (anybind train bind).")
@click.option("--out", default=DEFAULT_CHAT, show_default=True, type=click.Path(file_okay=False), help="Chat model directory.")
@click.option("--backbone", default="smollm2", show_default=True, help="A backbone name (anybind plugins) or hf:PATH.")
@click.option("--modality", "modalities", multiple=True,
              help="Train a projector on this modality's rows (default: image; other modalities then use it, emergent).")
@click.option("--steps", type=int, default=AlignSettings.steps, show_default=True)
@click.option("--batch-size", type=int, default=AlignSettings.batch_size, show_default=True)
@click.option("--lr", type=float, default=AlignSettings.lr, show_default=True)
@click.option("--tokens", type=int, default=AlignSettings.tokens, show_default=True, help="Soft tokens per attachment.")
@click.option("--on-bad-row", type=click.Choice(["skip", "stop"]), default="skip", show_default=True)
@click.option("--retrain", is_flag=True, help="Train again even if already trained.")
@click.option("--seed", type=int, default=AlignSettings.seed, show_default=True)
def train_align_in_command(manifest, bound, out, backbone, modalities, steps, batch_size, lr, tokens, on_bad_row, retrain, seed):
    """Teach the frozen LM to read the shared space: an input projector to soft tokens."""
    from anybind.training.align_in import train_align_in

    settings = AlignSettings(steps=steps, batch_size=batch_size, lr=lr, tokens=tokens, seed=seed, on_bad_row=on_bad_row)
    for modality in modalities or (BINDING_MODALITY,):
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
@click.option("--steps", type=int, default=AlignOutSettings.steps, show_default=True)
@click.option("--batch-size", type=int, default=AlignOutSettings.batch_size, show_default=True)
@click.option("--lr", type=float, default=AlignOutSettings.lr, show_default=True)
@click.option("--tokens", type=int, default=AlignOutSettings.tokens, show_default=True, help="Generative tokens [IMG0]..[IMG{k-1}].")
@click.option("--context/--no-context", default=AlignOutSettings.context, show_default=True,
              help="The output projector also reads the conversation before [IMG0] (not only the [IMG] states).")
@click.option("--request-gate/--no-request-gate", default=AlignOutSettings.request_gate, show_default=True,
              help="The [IMG0] gate also reads the state where the answer starts (what the request asked for).")
@click.option("--guidance", type=float, default=AlignOutSettings.guidance, show_default=True,
              help="Classifier-free guidance the chat draws with (saved with the model).")
@click.option("--candidates", type=click.IntRange(1, 64), default=AlignOutSettings.candidates, show_default=True,
              help="Samples the chat makes of each output, showing the one the shared space puts nearest the words "
                   "(saved with the model; 1: the first, unchecked).")
@click.option("--retrain", is_flag=True, help="Train again even if already trained.")
@click.option("--seed", type=int, default=AlignOutSettings.seed, show_default=True)
def train_align_out_command(manifest, model_dir, decoder, steps, batch_size, lr, tokens, context, request_gate, guidance,
                            candidates, retrain, seed):
    """Teach the frozen LM to draw: [IMG] tokens and an output projector to the decoder's conditioning."""
    from anybind.training.align_out import train_align_out

    settings = AlignOutSettings(steps=steps, batch_size=batch_size, lr=lr, tokens=tokens, context=context,
                                request_gate=request_gate, guidance=guidance, candidates=candidates,
                                seed=seed)
    r = train_align_out(manifest, model_dir, decoder, settings, retrain=retrain)
    if not r.get("skipped"):
        click.echo(f"aligned {r['modality']} output: {r['conversations']} conversations, {r['steps']} steps in {r['seconds']:.1f}s "
                   f"(mse {r.get('mse', float('nan')):.4f})")
    click.echo(f"Chat model: {model_dir}  (next: anybind chat \"Draw a handwritten seven.\" --model {model_dir})")


@train.command(name="instruct")
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path(), help="Manifest file or world folder.")
@click.option("--model", "model_dir", default=DEFAULT_CHAT, show_default=True, type=click.Path(file_okay=False),
              help="Chat model directory (after align-in, and align-out if it should draw).")
@click.option("--steps", type=int, default=InstructSettings.steps, show_default=True,
              help="Steps for a model that makes one output (or none).")
@click.option("--several-outputs-scale", type=click.IntRange(0), default=InstructSettings.several_outputs_scale,
              show_default=True, help="A model that makes several outputs trains this many times the steps and "
                                      "conversations (0: as many times as it makes outputs).")
@click.option("--batch-size", type=int, default=InstructSettings.batch_size, show_default=True)
@click.option("--lr", type=float, default=InstructSettings.lr, show_default=True)
@click.option("--rank", type=int, default=InstructSettings.rank, show_default=True, help="LoRA rank.")
@click.option("--layers", type=int, default=InstructSettings.layers, show_default=True, help="Adapters on the LM's last N layers (0: all).")
@click.option("--conversations", type=int, default=InstructSettings.conversations, show_default=True, help="Templated conversations to train on.")
@click.option("--image-output-lr-scale", type=float, default=InstructSettings.image_output_lr_scale, show_default=True,
              help="The output projector and [IMG] rows learn at lr x this (0: kept as align-out left them; "
                   "the [IMG0] gate always trains).")
@click.option("--train-projectors/--freeze-projectors", default=InstructSettings.train_projectors, show_default=True,
              help="Whether the input projectors train on with the adapters (frozen: faster, backward stops "
                   "at the first adapted layer).")
@click.option("--refit-steps", type=click.IntRange(0), default=InstructSettings.refit_steps, show_default=True,
              help="After the adapters, each output projector trains this many steps on the adapted LM's states (0: not).")
@click.option("--request-gates/--no-request-gates", default=InstructSettings.request_gates, show_default=True,
              help="Then give each output a request gate: does the request (its words) ask for it at all?")
@click.option("--retrain", is_flag=True, help="Train again even if already trained.")
@click.option("--seed", type=int, default=InstructSettings.seed, show_default=True)
@click.option("--seeds", type=click.IntRange(1), default=InstructSettings.seeds, show_default=True,
              help="Train this many times (seeds SEED, SEED+1, ...) and keep the mean: steadier gates, N times the time.")
def train_instruct_command(manifest, model_dir, steps, several_outputs_scale, batch_size, lr, rank, layers, conversations,
                           image_output_lr_scale, train_projectors, refit_steps, request_gates, retrain, seed,
                           seeds):
    """LoRA on the LM, with the projectors, over multi-turn conversations in every modality."""
    from anybind.training.instruct import train_instruct

    if image_output_lr_scale < 0:
        raise click.BadParameter("must be >= 0", param_hint="--image-output-lr-scale")
    settings = InstructSettings(steps=steps, several_outputs_scale=several_outputs_scale, batch_size=batch_size, lr=lr,
                                rank=rank, layers=layers,
                                conversations=conversations, image_output_lr_scale=image_output_lr_scale,
                                train_projectors=train_projectors, refit_steps=refit_steps,
                                request_gates=request_gates, seed=seed, seeds=seeds)
    r = train_instruct(manifest, model_dir, settings, retrain=retrain)
    if not r.get("skipped"):
        times = f" x {len(r['seeds'])} seeds, kept as their mean," if r.get("seeds") else ""
        click.echo(f"instruct: {r['conversations']} conversations, {r['steps']} steps{times} in {r['seconds']:.1f}s "
                   f"({r['trainable_parameters']:,} trainable parameters)")
    click.echo(f"Chat model: {model_dir}  (next: anybind chat \"Draw a seven, then tell me what comes after it.\" --model {model_dir})")


@train.command(name="decoder")
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path(), help="Manifest file or world folder.")
@click.option("--out", type=click.Path(file_okay=False),
              help=f"Decoder directory [default: {DEFAULT_DECODER} for images, {DEFAULT_DECODER}-MODALITY otherwise].")
@click.option("--decoder", "name", help="Which installed decoder to train (sd, audiogen, ...; default: the only one "
                                        "installed, else the image decoder).")
@click.option("--steps", type=int, help="Denoiser steps (default: the plugin's own).")
@click.option("--batch-size", type=int)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any other setting of the decoder's trainer, e.g. --set vae_steps=100 --set unet_channels=64,128.")
@click.option("--save-every", type=int, default=100, show_default=True)
@click.option("--on-bad-row", type=click.Choice(["skip", "stop"]), default="skip", show_default=True)
@click.option("--retrain", is_flag=True, help="Train again even if already trained.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_decoder_command(manifest, out, name, steps, batch_size, overrides, save_every, on_bad_row, retrain, seed):
    """Train an output decoder on a manifest's files and captions: a tiny Stable Diffusion on its
    images (sd), or one of another installed decoder plugin (--decoder audiogen: speech)."""
    from anybind.training.decoder import train_decoder

    from anybind import plugins
    from anybind.models.decoders import decoder_for

    options = dict(_parse_overrides(overrides))
    options.update(steps=steps, batch_size=batch_size, save_every=save_every, on_bad_row=on_bad_row, seed=seed)
    spec = decoder_for(None if name or len(plugins.decoders()) < 2 else BINDING_MODALITY, name)
    path = train_decoder(manifest, out or DEFAULT_RUN.decoder_of(spec.modality), spec.name, retrain=retrain, **options)
    click.echo(f"Decoder: {path}  (next: anybind generate {spec.modality} \"...\" --decoder {path})")


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
