"""``anybind chat``: one question, or an interactive conversation, about files of any modality.

Stays light at import (no torch); the model loads when the command runs.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click

from anybind import plugins
from anybind.cli.app import int8_option
from anybind.errors import AnybindError, InputError
from anybind.layout import DEFAULT_RUN

HELP = """Commands:
  /attach FILE...   attach files (any installed modality) to your next message
  /reset            forget the conversation
  /history          list the attachments so far
  /quit             leave (or Ctrl-D)"""


def check_attachment(item: str) -> None:
    """Fail fast, before any model loads: the file exists and an installed plugin reads it."""
    path = Path(item)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a file")
    plugins.modality_for_path(path)


def _err(message: str) -> None:
    click.secho(message, fg="yellow" if message.startswith("[dropped") else None, dim=not message.startswith("[dropped"), err=True)


def print_events(events, renderer) -> None:
    """Stream events through ``renderer`` as they come."""
    renderer.render(events)
    sys.stdout.flush()


def interactive(session, renderer, pending: list[str]) -> None:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    click.secho(f"anybind chat - {session.model.backbone.reference} reading "
                f"{', '.join(session.model.modalities)}. /help for commands, Ctrl-D to leave.", dim=True, err=True)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            click.echo(err=True)
            return
        if not line:
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command in ("/quit", "/exit"):
                return
            if command == "/help":
                click.echo(HELP)
            elif command == "/reset":
                session.reset()
                pending.clear()
                click.echo("(conversation cleared)")
            elif command == "/history":
                click.echo("\n".join(session.describe_attachments() + [f"{p} (pending)" for p in pending]) or "(no attachments)")
            elif command == "/attach":
                for item in rest.split():
                    try:
                        check_attachment(item)
                        pending.append(item)
                        click.echo(f"(attached {item}; it goes with your next message)")
                    except AnybindError as exc:
                        click.secho(f"Error: {exc}", fg="red", err=True)
            else:
                click.secho(f"unknown command {command}; /help lists them", fg="red", err=True)
            continue
        try:
            if renderer.out is sys.stdout and not isinstance(renderer, _structured()):
                click.echo("anybind> ", nl=False)
            renderer.begin_turn(line)
            print_events(session.ask(line, list(pending)), renderer)
            pending.clear()
        except AnybindError as exc:  # a bad attachment or an over-long message: say so, keep the session
            click.secho(f"\nError: {exc}", fg="red", err=True)
            pending.clear()


def _structured():
    from anybind.chat.render import HtmlRenderer, JsonlRenderer

    return (HtmlRenderer, JsonlRenderer)


@click.command()
@click.argument("prompt", required=False)
@click.option("-a", "--attach", "attachments", multiple=True, metavar="FILE",
              help="A file of any installed modality to ask about (repeatable, mixed modalities).")
@click.option("--model", "model_dir", default=str(DEFAULT_RUN.chat), show_default=True, type=click.Path(),
              help="Chat model directory (anybind train align-in / align-out).")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0 decodes greedily.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, help="Seed for sampling (temperature > 0) and for the images.")
@click.option("--projector", help="Use this modality's projector for every attachment (e.g. image).")
@click.option("--format", "output_format", type=click.Choice(["terminal", "markdown", "html", "jsonl"]),
              default="terminal", show_default=True,
              help="html is one self-contained page (images inline); the others save images as files.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the answer here instead of stdout (written whole at the end; nothing partial on failure).")
@click.option("--images-dir", type=click.Path(file_okay=False),
              help="Where drawn images and spoken answers are saved (default: next to --output, else the current folder).")
@click.option("--decoder", "decoder", help="Draw with this decoder instead of the model's own (a directory or sd:PATH).")
@click.option("--no-images", is_flag=True, help="Answer in text only, even if the model can draw.")
@click.option("--image-steps", type=click.IntRange(1, 1000), help="Sampling steps per image (default: the decoder's).")
@click.option("--max-images", type=click.IntRange(0), default=4, show_default=True, help="At most this many images per answer.")
@click.option("--candidates", type=click.IntRange(1, 64),
              help="Samples made of each output, the one nearest the words shown (default: the model's own; 1: unchecked).")
@click.option("--stats", is_flag=True, help="Print token counts and timings to stderr.")
@int8_option
def chat(prompt, attachments, model_dir, max_tokens, temperature, top_p, seed, projector, output_format, output,
         images_dir, decoder, no_images, image_steps, max_images, candidates, stats, quantize):
    """Chat about files of any installed modality; a model trained with align-out also draws.

    \b
    anybind chat "What digit is spoken here?" --attach seven.wav
    anybind chat "Write one sentence about the number four, then draw it" --format html -o four.html
    anybind chat                          (interactive; /attach FILE, /reset, /quit)
    """
    from anybind.chat import ChatModel, ChatSession
    from anybind.chat.events import SamplingOptions
    from anybind.chat.render import make_renderer
    from anybind.layout import ChatDir
    from anybind.persistence import check_writable

    for item in attachments:
        check_attachment(item)
    target = check_writable(output) if output else None
    folder = _images_folder(images_dir, target, needed=output_format != "html")
    ChatDir(model_dir).config()
    model = ChatModel.from_pretrained(model_dir, decoder=decoder, quantize=quantize, candidates=candidates)
    if decoder and model.outputs and not no_images:
        model.decoder()  # load and check it now: a mismatch is an error before any text is written
    session = ChatSession(model, SamplingOptions(max_tokens, temperature, top_p, seed), projector=projector,
                          draw=not no_images and max_images > 0, image_steps=image_steps, max_images=max_images)
    with _answer_stream(target) as out:
        renderer = make_renderer(output_format, out, images_dir=folder, prefix=target.stem if target else "image",
                                 stats=stats, err=_err)
        if prompt is None:
            interactive(session, renderer, list(attachments))
        else:
            renderer.begin_turn(prompt)
            print_events(session.ask(prompt, attachments), renderer)
        renderer.close()


def _images_folder(images_dir, target, needed: bool) -> Path:
    """Where output files go: ``--images-dir``, else beside ``-o``, else here; checked when files are written."""
    import os

    folder = Path(images_dir) if images_dir else (target.parent if target else Path("."))
    if needed and not folder.is_dir():
        raise AnybindError(f"{folder}: images folder does not exist")
    if needed and not os.access(folder, os.W_OK):
        raise AnybindError(f"{folder}: images folder is not writable")
    return folder


@contextmanager
def _answer_stream(target: Path | None):
    """stdout, or a temporary file that becomes ``target`` only once the answer is whole."""
    import os
    import tempfile

    if target is None:
        yield sys.stdout
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, target)
        click.secho(f"wrote {target}", dim=True, err=True)
    finally:
        Path(tmp).unlink(missing_ok=True)
