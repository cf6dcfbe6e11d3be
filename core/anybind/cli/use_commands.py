"""Commands for using models: embed, retrieve, generate, and the quickstart."""

from __future__ import annotations

import json

import click

from anybind.cli.app import cli
from anybind.cli.train_commands import DEFAULT_BIND, DEFAULT_DECODER
from anybind.layout import DEFAULT_RUN


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="FILE|TEXT...")
@click.option("-m", "--model", "model_dir", type=click.Path(), help="Bound model directory (default: text-only space).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines: input, modality, embedding.")
def embed(inputs, model_dir, as_json):
    """Embed files of any installed modality, or text, into the shared space."""
    import anybind
    from anybind.models.space import resolve_input

    resolved = [resolve_input(item) for item in inputs]  # errors on bad files before loading models
    model = anybind.load(model_dir)
    vectors = model.embed_resolved(resolved)
    for item, (modality, _), vector in zip(inputs, resolved, vectors.tolist()):
        if as_json:
            click.echo(json.dumps({"input": item, "modality": modality, "dim": len(vector), "embedding": vector}))
        else:
            click.echo(f"{item}  [{modality}, {len(vector)}-d]")
            click.echo(" ".join(f"{v:+.4f}" for v in vector))

@cli.command()
@click.argument("query", required=False, metavar="QUERY")
@click.option("--query", "-q", "query_option", help="The query, as an option (same as QUERY).")
@click.option("--index", "index_dir", type=click.Path(), help="An index (anybind index build): search it, embed only the query.")
@click.option("--corpus", "-c", type=click.Path(exists=True), help="A folder of files or a manifest, embedded for this query.")
@click.option("--model", "model_dir", default=DEFAULT_BIND, show_default=True, type=click.Path())
@click.option("-k", "top_k", type=click.IntRange(1), default=5, show_default=True)
@click.option("--modality", "modalities", multiple=True, help="Only return these modalities.")
@click.option("--json", "as_json", is_flag=True)
def retrieve(query, query_option, index_dir, corpus, model_dir, top_k, modalities, as_json):
    """Find the files nearest to QUERY (a file of any installed modality, or text), across
    modalities: from an index built once (--index), or by embedding a corpus now (--corpus)."""
    import anybind
    from anybind.retrieval import retrieve as nearest

    if (query is None) == (query_option is None):
        raise click.UsageError("give the query once: as QUERY or as --query/-q")
    if (index_dir is None) == (corpus is None):
        raise click.UsageError("give either --index INDEX (fast: built once) or --corpus/-c CORPUS")
    query = query if query is not None else query_option
    if index_dir is not None:
        from anybind.index import Index
        from anybind.models.space import resolve_input

        resolved = resolve_input(query)  # a bad query file fails before anything loads
        index = Index.load(index_dir)
        model = anybind.load(model_dir, modalities=[resolved[0]])  # only the query's tower
        index.check_model(model)
        found = index.search(model.embed_resolved([resolved])[0].numpy(), top_k, modalities)
    else:
        found = nearest(anybind.load(model_dir), query, corpus, top_k, modalities)
    for score, modality, path in found:
        if as_json:
            click.echo(json.dumps({"path": path, "modality": modality, "score": round(score, 5)}))
        else:
            click.echo(f"{score:+.3f}  {modality:<10}  {path}")


@cli.group()
def export():
    """Write parts of a model in other formats."""


@export.command(name="trunk")
@click.argument("bound", type=click.Path(exists=True, file_okay=False))
@click.option("--modality", required=True, help="The tower whose trunk to write.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="A new transformers checkpoint directory.")
def export_trunk_command(bound, modality, out):
    """Write a tower's trunk (one that started from --trunk MODALITY=hf:PATH) as a transformers
    checkpoint: then --trunk MODALITY=hf:OUT starts a new binding from what this one trained."""
    from pathlib import Path

    from anybind.errors import AnybindError
    from anybind.models.space import Tower
    from anybind.models.trunk_modes import export_trunk

    if Path(out).exists() and any(Path(out).iterdir()):
        raise AnybindError(f"{out}: exists and is not empty; give a new directory")
    tower = Tower.from_pretrained(Path(bound) / modality)
    export_trunk(tower.encoder, out)
    click.echo(f"wrote {out} (use it as: --trunk {modality}=hf:{out})")


@cli.command()
@click.option("--out", default=str(DEFAULT_RUN.root), show_default=True, type=click.Path(file_okay=False),
              help="Where every stage writes (world/, bind/, decoder/, chat/, demo.html, metrics.json).")
@click.option("--backbone", default="smollm2", show_default=True, help="A backbone name (anybind plugins) or hf:PATH.")
@click.option("--started-at", type=float, hidden=True, help="Unix time the run began (make passes the time before set-up).")
def quickstart(out, backbone, started_at):
    """Every stage on the sample world, then an interleaved demo and the held-out evaluation.

    world, bind, decoder, align-in, align-out, instruct, demo, eval: stages already complete
    are skipped and an interrupted one resumes, so running it again continues where it stopped."""
    from pathlib import Path

    from anybind.quickstart import Quickstart, summary_table

    record = Quickstart(Path(out), backbone=backbone, started_at=started_at).run_stages()
    click.echo("")
    click.echo(summary_table(record))
    click.echo(f"Metrics: {Path(out) / 'metrics.json'}   Demo: {Path(out) / 'demo.html'}")
    click.echo(f"Serve it (a chat page and an OpenAI-compatible API): {_this_command()} serve --model {Path(out) / 'chat'}")


def _this_command() -> str:
    """How the user can run this same ``anybind`` again: its name if it is on PATH, else its path
    (``.venv/bin/anybind`` under ``make``)."""
    import shutil
    import sys
    from pathlib import Path

    ran = Path(sys.argv[0])
    found = shutil.which("anybind")
    return "anybind" if found and Path(found).resolve() == ran.resolve() else str(ran)



@cli.command()
@click.argument("modality", metavar="MODALITY")
@click.argument("prompt")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output file (default: MODALITY plus its usual suffix, image.png); with -n N, N files numbered "
                   "before the suffix.")
@click.option("--decoder", "reference",
              help="A decoder directory, or NAME:PATH (sd:/path/to/stable-diffusion) [default: "
                   f"{DEFAULT_DECODER} for images, {DEFAULT_DECODER}-MODALITY otherwise]")
@click.option("-n", "count", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--steps", type=click.IntRange(1, 1000), help="Sampling steps (default: the decoder's).")
@click.option("--guidance", type=float, help="Classifier-free guidance scale (default: the decoder's).")
@click.option("--seed", type=int, default=0, show_default=True)
def generate(modality, prompt, output, reference, count, steps, guidance, seed):
    """Make MODALITY outputs of PROMPT with a decoder and its own text encoder (no LM).

    \b
    anybind generate image "a handwritten seven" -o seven.png
    anybind generate audio "the spoken word seven" -o seven.wav --seed 3
    """
    from pathlib import Path

    from anybind.chat.render import media
    from anybind.layout import DEFAULT_RUN
    from anybind.models.decoders import load_decoder
    from anybind.persistence import check_writable

    kind = media(modality)
    target = Path(output or f"{modality}{kind.suffix}")
    paths = [target] if count == 1 else [target.with_name(f"{target.stem}-{i}{target.suffix}") for i in range(count)]
    for path in paths:
        check_writable(path)
    decoder = load_decoder(reference or str(DEFAULT_RUN.decoder_of(modality)), modality=modality)
    made = decoder.generate([prompt] * count, steps=steps, guidance=guidance, seed=seed)
    for value, path in zip(made, paths):
        click.echo(kind.save(value, path))
