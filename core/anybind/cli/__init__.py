"""The ``anybind`` command-line tool, split by who uses each command:

* :mod:`~anybind.cli.plugin_commands`: plugins, registry, install, uninstall, new-plugin;
* :mod:`~anybind.cli.use_commands`: embed, retrieve, generate, quickstart;
* :mod:`~anybind.cli.index_commands`: index build, index add;
* :mod:`~anybind.cli.chat`: chat;
* :mod:`~anybind.cli.serve_commands`: serve;
* :mod:`~anybind.cli.train_commands`: world, train;
* :mod:`~anybind.cli.eval_commands`: eval.

Each command's module is short and calls library functions; plugins add their own
commands through the ``register_commands`` hook.
"""

from anybind import plugins
from anybind.cli import (eval_commands, index_commands, plugin_commands, serve_commands, train_commands,  # noqa: F401 - they register
                         use_commands)
from anybind.cli.app import cli
from anybind.cli.chat import chat

cli.add_command(chat)


def main(argv=None):
    plugins.register_commands(cli)
    return cli.main(args=argv, prog_name="anybind")


__all__ = ["cli", "main"]
