"""``anybind chat``: one question, or an interactive conversation, about files of any modality.

Stays light at import (no torch); the model loads when the command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from anybind import plugins
from anybind.errors import AnybindError, InputError

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


def print_events(events, output_format: str, stats: bool) -> None:
    """Stream events to stdout as they come: text as it decodes, or one JSON object per event."""
    from dataclasses import asdict

    for event in events:
        if output_format == "jsonl":
            click.echo(json.dumps(asdict(event)))
            continue
        if event.type == "text":
            click.echo(event.text, nl=False)
            sys.stdout.flush()
        elif event.type == "notice":
            click.secho(f"[{event.message}]", fg="yellow", err=True)
        elif event.type == "done":
            click.echo()
            sys.stdout.flush()
            if stats:
                first = f", first token {event.first_token_seconds:.2f}s" if event.first_token_seconds is not None else ""
                rate = event.tokens / event.seconds if event.seconds else 0.0
                click.secho(f"[{event.tokens} tokens in {event.seconds:.2f}s ({rate:.1f}/s){first}; "
                            f"prompt {event.usage.get('prompt_tokens')} tokens; stop: {event.reason}]", dim=True, err=True)


def interactive(session, output_format: str, stats: bool, pending: list[str]) -> None:
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
            click.echo("anybind> ", nl=False)
            print_events(session.ask(line, list(pending)), output_format, stats)
            pending.clear()
        except AnybindError as exc:  # a bad attachment or an over-long message: say so, keep the session
            click.secho(f"\nError: {exc}", fg="red", err=True)
            pending.clear()


@click.command()
@click.argument("prompt", required=False)
@click.option("-a", "--attach", "attachments", multiple=True, metavar="FILE",
              help="A file of any installed modality to ask about (repeatable, mixed modalities).")
@click.option("--model", "model_dir", default="runs/align-in", show_default=True, type=click.Path(),
              help="Chat model directory (anybind train align-in).")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0 decodes greedily.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, help="Seed for sampling (temperature > 0).")
@click.option("--projector", help="Use this modality's projector for every attachment (e.g. image).")
@click.option("--format", "output_format", type=click.Choice(["terminal", "jsonl"]), default="terminal", show_default=True)
@click.option("--stats", is_flag=True, help="Print token counts and timings to stderr.")
def chat(prompt, attachments, model_dir, max_tokens, temperature, top_p, seed, projector, output_format, stats):
    """Chat about files of any installed modality.

    \b
    anybind chat "What digit is spoken here?" --attach seven.wav
    anybind chat                          (interactive; /attach FILE, /reset, /quit)
    """
    import anybind
    from anybind.chat import ChatSession, read_chat_config
    from anybind.generation import SamplingOptions

    for item in attachments:
        check_attachment(item)
    read_chat_config(Path(model_dir))
    model = anybind.load(model_dir)
    session = ChatSession(model, SamplingOptions(max_tokens, temperature, top_p, seed), projector=projector)
    if prompt is None:
        interactive(session, output_format, stats, list(attachments))
        return
    print_events(session.ask(prompt, attachments), output_format, stats)
