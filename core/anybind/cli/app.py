"""The ``anybind`` command group: errors as one line, and a did-you-mean for a mistyped command.

Module level imports stay light (no torch): commands import what they need when they run.
"""

from __future__ import annotations

import click

from anybind import __version__
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


#: ``--int8``: decode with int8 weights (CPU); shared by every command that loads a chat model
int8_option = click.option("--int8", "quantize", flag_value="int8", default=None,
                           help="Decode with the LM's linear layers in int8 (CPU only; faster, less memory; "
                                "bench/RESULTS.md has its accuracy).")
