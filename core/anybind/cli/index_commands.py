"""``anybind index``: build a retrieval index once, add to it, and (``anybind retrieve --index``) search it."""

from __future__ import annotations

import click

from anybind.cli.app import cli
from anybind.cli.train_commands import DEFAULT_BIND

KIND_HELP = "flat (exact), hnsw or ivf; auto: flat below 100k vectors, hnsw above."


@cli.group(name="index")
def index_group():
    """A persistent retrieval index over a corpus (vectors + paths + a FAISS index)."""


@index_group.command(name="build")
@click.argument("corpus", type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Index directory to create.")
@click.option("--model", "model_dir", default=DEFAULT_BIND, show_default=True, type=click.Path())
@click.option("--modality", "modalities", multiple=True, help="Only these modalities (default: every one the model embeds).")
@click.option("--kind", type=click.Choice(["auto", "flat", "hnsw", "ivf"]), default="auto", show_default=True, help=KIND_HELP)
def build_command(corpus, out, model_dir, modalities, kind):
    """Embed every file of CORPUS (a folder or manifest) once; a build that stops resumes where it was."""
    import anybind
    from anybind.index import build_index

    index = build_index(anybind.load(model_dir), corpus, out, modalities=modalities, kind=kind)
    click.echo(f"Index: {out}  ({len(index)} files, {', '.join(index.meta['modalities'])}; {index.meta['kind']})")
    click.echo(f'Search it: anybind retrieve "a handwritten seven" --index {out} --model {model_dir}')


@index_group.command(name="add")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--model", "model_dir", default=DEFAULT_BIND, show_default=True, type=click.Path())
@click.option("--modality", "modalities", multiple=True, help="Only these modalities.")
def add_command(index_dir, sources, model_dir, modalities):
    """Embed the files of SOURCES (folders, manifests or files) the index does not hold yet, and add them."""
    import anybind
    from anybind.index import add_to_index

    index, added = add_to_index(anybind.load(model_dir), index_dir, sources, modalities=modalities)
    click.echo(f"Index: {index_dir}  (added {added}; {len(index)} files, {index.meta['kind']})")
