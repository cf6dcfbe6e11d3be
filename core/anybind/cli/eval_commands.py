"""Commands that evaluate trained models on held-out data."""

from __future__ import annotations

import json

import click

from anybind.cli.app import cli, int8_option
from anybind.cli.train_commands import DEFAULT_BIND, DEFAULT_CHAT, DEFAULT_DECODER, DEFAULT_WORLD
from anybind.layout import DEFAULT_RUN
from anybind.specs import BINDING_MODALITY
from anybind.tables import table


@cli.group(name="eval")
def eval_group():
    """Evaluate trained models on held-out data."""


DEFAULT_OOD = str(DEFAULT_RUN.world_ood)


def _suite(manifest: str | None, suite: str) -> str:
    """The manifest to evaluate on: the one given, else the suite's world (which must exist)."""
    from pathlib import Path

    if manifest is not None:
        return manifest
    if suite == "ood" and not Path(DEFAULT_OOD).exists():
        raise click.UsageError(f"no out-of-distribution world at {DEFAULT_OOD}; build it with: "
                               f"anybind world build {DEFAULT_OOD} --variant ood")
    return DEFAULT_OOD if suite == "ood" else DEFAULT_WORLD


def suite_options(command):
    """``--manifest`` and ``--suite``: which held-out data an evaluation reads (see :func:`_suite`)."""
    command = click.option("--suite", type=click.Choice(["sample", "ood"]), default="sample", show_default=True,
                           help="ood: the out-of-distribution world (anybind world build DIR --variant ood).")(command)
    return click.option("--manifest", default=None, type=click.Path(),
                        help=f"Manifest file or world folder (default: {DEFAULT_WORLD}, or with --suite ood "
                             f"{DEFAULT_OOD}).")(command)


@eval_group.command(name="bind")
@click.option("--model", "model_dir", default=DEFAULT_BIND, show_default=True, type=click.Path())
@suite_options
@click.option("--modality", "modalities", multiple=True)
@click.option("--prompt", help="Zero-shot prompt template with {label} (default: the world's, e.g. 'a handwritten {label}').")
@click.option("--json", "as_json", is_flag=True)
def eval_bind_command(model_dir, manifest, suite, modalities, prompt, as_json):
    """Zero-shot top-1 vs text prompts, retrieval R@1 and a linear probe, per modality."""
    import anybind
    from anybind.eval import evaluate_bind

    towers = None
    if modalities:  # load only what the evaluation needs: text prompts, images to retrieve, the modalities asked
        from anybind.persistence import read_config

        trained = read_config(model_dir).get("modalities", [])
        towers = [m for m in trained if m in {"text", BINDING_MODALITY, *modalities}]
    results = evaluate_bind(anybind.load(model_dir, towers), _suite(manifest, suite), list(modalities) or None, prompt)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    rows = [[m, f"{r['zero_shot_top1']:.3f}", f"{r['retrieval_r1']:.3f}", f"{r['linear_probe']:.3f}",
             f"{r['zero_shot_vs_probe']:.3f}", str(r["n_test"]), "emergent" if r["emergent"] else "trained"]
            for m, r in results.items()]
    click.echo(table(["MODALITY", "ZERO-SHOT", "R@1", "PROBE", "ZS/PROBE", "N", "TEXT"], rows))


@eval_group.command(name="chat")
@click.option("--model", "model_dir", default=DEFAULT_CHAT, show_default=True, type=click.Path())
@suite_options
@click.option("--modality", "modalities", multiple=True)
@click.option("--limit", type=int, default=100, show_default=True, help="Held-out attachments per modality.")
@int8_option
@click.option("--json", "as_json", is_flag=True)
def eval_chat_command(model_dir, manifest, suite, modalities, limit, quantize, as_json):
    """Ask which label each held-out attachment shows or says; accuracy per modality."""
    import anybind
    from anybind.layout import ChatDir
    from anybind.eval import evaluate_chat

    ChatDir(model_dir).config()  # a clear error before loading anything heavy
    results = evaluate_chat(anybind.load(model_dir, quantize=quantize), _suite(manifest, suite), list(modalities) or None,
                            limit=limit)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    rows = []
    for m, r in results.items():
        own = r.get("own_projector")
        # "emergent": the projector never saw this modality (trained on images; instruct did not include it)
        route = " (instructed)" if r.get("instructed") else ("" if m == BINDING_MODALITY else " (emergent)")
        rows.append([m, f"{r['image_projector']:.3f}" + route,
                     f"{own:.3f}" if own is not None else "-", str(r["n_test"])])
    click.echo(f"Question: {next(iter(results.values()))['question'] if results else '-'}")
    click.echo(table(["MODALITY", "IMAGE PROJECTOR", "OWN PROJECTOR", "N"], rows))


@eval_group.command(name="generate")
@click.option("--model", "model_dir", default=DEFAULT_CHAT, show_default=True, type=click.Path(),
              help="Chat model trained with align-out (skipped if it makes no outputs or is missing).")
@click.option("--modality", help="The output to judge (default: the model's main one, images, else the only "
                                 "installed decoder's).")
@click.option("--decoder", help="Decoder directory or NAME:PATH (default: the one the model was trained against, "
                                "else runs/quickstart/decoder, or decoder-MODALITY).")
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path())
@click.option("-n", "per_label", type=click.IntRange(2), default=10, show_default=True, help="Outputs per label.")
@click.option("--steps", type=click.IntRange(1, 1000), help="Sampling steps per output (default: the decoder's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def eval_generate_command(model_dir, modality, decoder, manifest, per_label, steps, seed, as_json):
    """Judge generated outputs with a classifier trained on real files: the decoder from
    captions, the chat model asked to make them (alone, and after a sentence), and, for a model
    that makes several kinds, a sentence then every output in one answer."""
    from pathlib import Path

    from anybind.chat import ChatModel
    from anybind.data import read_manifest
    from anybind.eval import evaluate_generate, evaluate_together, evaluate_words_only, output_judge
    from anybind.layout import DEFAULT_RUN
    from anybind.models.decoders import decoder_for, load_decoder

    model = None
    if (Path(model_dir) / "config.json").is_file():
        model = ChatModel.from_pretrained(model_dir, decoder=decoder)
        if not model.outputs:
            click.secho(f"{model_dir}: makes no outputs (no align-out); judging the decoder alone", dim=True, err=True)
            model = None
    modality = modality or (model.output().modality if model is not None else decoder_for().modality)
    loaded = model.decoder(modality) if model is not None else load_decoder(
        decoder or str(DEFAULT_RUN.decoder_of(modality)), modality=modality)
    world = read_manifest(manifest)
    judge = output_judge(model, world, modality) if model is not None else None
    results = evaluate_generate(world, decoder=loaded, model=model, modality=modality, per_label=per_label,
                                steps=steps, seed=seed, judge=judge)
    if model is not None and len(model.outputs) > 1:
        results["together"] = evaluate_together(world, model, steps=steps, seed=seed, judges={modality: judge})
    if model is not None:
        results["words_only"] = evaluate_words_only(world, model, seed=seed)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    _print_generate(results)


def _print_generate(results: dict) -> None:
    click.echo(f"Judge of {results['modality']} outputs (trained on real files) on real held-out ones: "
               f"{results['judge_accuracy_on_real']:.3f}")
    rows = []
    for key, what in (("decoder", "decoder from captions"), ("chat_draw", "chat: asked for one")):
        if key in results:
            r = results[key]
            made = f"{r['drew']:.3f}" if "drew" in r else "-"
            rows.append([what, f"{r['accuracy']:.3f}", made, f"{r['diversity']:.2f}", str(r.get("asked", r["images"]))])
    click.echo(table(["SOURCE", "CORRECT", "MADE", "DIVERSITY", "N"], rows))
    if "chat_write_and_draw" in results:
        r = results["chat_write_and_draw"]
        click.echo(f"chat: a sentence, then the output: both present {r['both']:.3f}, both present and agreeing "
                   f"{r['both_and_agree']:.3f} (n={r['asked']})")
        for e in r["examples"][:2]:
            click.echo(f"  {e['prompt']!r} -> {e['text']!r} + {e['images']} output(s)")
    if "words_only" in results:
        r = results["words_only"]
        click.echo(f"chat: a sentence alone (no output asked): no output {r['no_output']:.3f}, naming the label and "
                   f"no output {r['named_and_no_output']:.3f} (n={r['asked']})")
        for e in r["examples"][:2]:  # answers that made an output all the same
            click.echo(f"  {e['prompt']!r} -> {e['text']!r} + {', '.join(e['outputs'])}")
    if "together" in results:
        r = results["together"]
        click.echo(f"chat: a sentence, then {' and '.join(r['order'])} in one answer: complete {r['complete']:.3f}, "
                   f"complete and agreeing {r['complete_and_agree']:.3f} (n={r['asked']})")
        for e in r["examples"][:2]:
            click.echo(f"  {e['prompt']!r} -> {e['text']!r} + {', '.join(e['outputs']) or 'no outputs'}")


@eval_group.command(name="conversations")
@click.option("--model", "model_dir", default=DEFAULT_CHAT, show_default=True, type=click.Path())
@click.option("--manifest", default=DEFAULT_WORLD, show_default=True, type=click.Path(),
              help="Where the held-out attachments come from (and the judge's real training files).")
@click.option("-n", "conversations", type=click.IntRange(3), default=None,
              help="Conversations to score [default: as many as the quickstart scores, 90].")
@click.option("--seed", type=int, default=0, show_default=True)
@int8_option
@click.option("--json", "as_json", is_flag=True)
def eval_conversations_command(model_dir, manifest, conversations, seed, quantize, as_json):
    """Multi-turn conversations mixing modalities: each behaviour (the current attachment, plain
    chat, making and naming what an earlier turn was about, a change of subject, several
    attachments at once) scored on its own."""
    import anybind
    from anybind.data import read_manifest
    from anybind.eval import evaluate_conversations, output_judge
    from anybind.eval.conversations import CONVERSATIONS

    model, world = anybind.load(model_dir, quantize=quantize), read_manifest(manifest)
    results = evaluate_conversations(model, world, conversations=conversations or CONVERSATIONS, seed=seed,
                                     judge=output_judge(model, world))
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    rows = [[b, f"{v:.3f}", str(results["n"][b])] for b, v in results["behaviours"].items()]
    click.echo(table(["BEHAVIOUR", "ACCURACY", "N"], rows))
    for failure in results["failures"][:3]:
        click.echo(f"  {failure['behaviour']}: {failure['asked']!r} -> {failure['answer']!r} "
                   f"(expected {', '.join(failure['expected'])}; {failure['outputs']} output(s))")
