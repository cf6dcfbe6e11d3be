"""Light descriptions of what a plugin provides.

A spec is plain data plus the *dotted paths* (``"package.module:attribute"``) of the
factories that build the heavy parts. Building a spec never imports torch; calling
:meth:`resolve` on one of its factories does. Callables are accepted too, for plugins
defined inline (tests, notebooks), as long as they import heavy libraries lazily.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

from anybind.errors import PluginError

Factory = Union[str, Callable[..., Any]]

#: The modality every other one is bound to (ImageBind's recipe): it alone trains against text,
#: and the input projector trained on it reads every modality that has no projector of its own.
BINDING_MODALITY = "image"
#: The questions' own modality: the text tower reads them, and no file is attached in it.
TEXT_MODALITY = "text"


def attachable(modalities, *within) -> list[str]:
    """Of ``modalities``, in their order, those a file can be attached in (every one but text)
    that are also in each collection of ``within`` (e.g. a manifest's columns, the installed plugins)."""
    return [m for m in modalities if m != TEXT_MODALITY and all(m in w for w in within)]


def resolve(factory: Factory, *, what: str = "factory") -> Any:
    """Import ``"package.module:attr"`` (or return a callable unchanged)."""
    if not isinstance(factory, str):
        return factory
    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise PluginError(f"{what} {factory!r} is not of the form 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import {module_name!r} for {what} {factory!r}: {exc}") from exc
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise PluginError(f"{module_name!r} has no attribute {attr!r} ({what} {factory!r})") from exc
    return obj


def _suffixes(values) -> tuple[str, ...]:
    out = []
    for v in values:
        v = v.lower()
        out.append(v if v.startswith(".") else "." + v)
    return tuple(out)


@dataclass(frozen=True)
class ModalitySpec:
    """An input modality.

    Attributes:
        name: unique modality name, e.g. ``"audio"``; also the manifest column holding its files.
        encoder: the :class:`anybind.modality.ModalityEncoder` subclass (dotted path). Its
            ``Config`` dataclass holds every size; ``preprocess`` turns one raw sample into
            tensors (the modality's tokenizer) and ``forward`` a batch into tokens.
        loader: ``path -> raw sample``; raises :class:`anybind.errors.InputError` naming the
            file when it is unreadable. ``None`` for modalities whose inputs are strings (text).
        suffixes: file suffixes this modality reads, lower case, with the dot.
        mime_types: MIME types this modality reads.
        config: overrides of the encoder's default config (e.g. real sizes).
        world: ``(WorldBuilder) -> None``, writes this modality's part of the sample world.
        train: defaults for binding this modality (``steps``, ``lr``, ``batch_size``,
            ``weight_decay``, ``init_from``: another modality whose trained trunk initialises this one).
        description: one line for ``anybind plugins``.
    """

    name: str
    encoder: Factory
    loader: Factory | None = None
    suffixes: tuple[str, ...] = ()
    mime_types: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    world: Factory | None = None
    train: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"modality name {self.name!r} must be a non-empty identifier")
        object.__setattr__(self, "suffixes", _suffixes(self.suffixes))
        object.__setattr__(self, "mime_types", tuple(self.mime_types))

    @property
    def reads_files(self) -> bool:
        return self.loader is not None

    def encoder_class(self):
        return resolve(self.encoder, what=f"encoder of modality {self.name!r}")

    def load(self, path):
        if self.loader is None:
            raise PluginError(f"modality {self.name!r} takes text, not files")
        return resolve(self.loader, what=f"loader of modality {self.name!r}")(path)


@dataclass(frozen=True)
class DecoderSpec:
    """An output decoder (e.g. Stable Diffusion for images), and how a chat model asks for its outputs.

    Attributes:
        name: unique decoder name, e.g. ``"sd"``; ``--decoder sd:PATH`` selects a checkpoint.
        modality: the output modality it produces, e.g. ``"image"``; also the event type a chat
            answer yields for each output.
        factory: ``(path, device=None) -> decoder``. The decoder has ``cond_shape``
            (``(tokens, width)`` of the conditioning sequence it reads),
            ``encode_prompt(texts) -> (B, tokens, width)`` (its own text encoder: the target
            the output projector learns to predict), and ``decode(cond, negative=None,
            guidance=None, steps=None, seed=0) -> list`` of outputs (PIL images for ``image``).
        trainer: optional ``(manifest, out, **options) -> path``: trains a decoder from a
            manifest (``anybind train decoder``).
        token: the stem of its generative tokens (``"IMG"``: ``[IMG0]``, ``[IMG1]``, ...);
            default: the modality's first three letters, upper-cased.
        prompts: dotted path of an :class:`anybind.data.prompts.OutputPrompts`: how users ask
            for this output ("Draw {c}."), used to train and evaluate asking for it.
        judge: optional dotted path of an :class:`anybind.eval.judge.Judge` subclass: an
            independent classifier of its outputs, for ``anybind eval generate``.
        prompt_encoder: optional ``(path, device=None) -> object`` with ``cond_shape`` and
            ``encode_prompt`` only: what align-out and instruct need, readable while the decoder
            still trains (default: the whole decoder, from ``factory``).
        media: dotted path of an :class:`anybind.chat.render.Media`: how its outputs are saved
            (suffix, bytes, MIME type) and shown in HTML and Markdown; images have one built in.
    """

    name: str
    modality: str
    factory: Factory
    trainer: Factory | None = None
    description: str = ""
    token: str = ""
    prompts: Factory | None = None
    judge: Factory | None = None
    prompt_encoder: Factory | None = None
    media: Factory | None = None

    def __post_init__(self):
        if not self.token:
            object.__setattr__(self, "token", self.modality[:3].upper())

    def output_prompts(self):
        if self.prompts is None:
            raise PluginError(f"decoder {self.name!r} registers no prompts: a chat model cannot learn to ask for its "
                              f"{self.modality} outputs (DecoderSpec.prompts)")
        return resolve(self.prompts, what=f"prompts of decoder {self.name!r}")


@dataclass(frozen=True)
class BackboneSpec:
    """A language-model backbone.

    Attributes:
        name: unique backbone name, e.g. ``"smollm2"``.
        factory: ``(reference) -> (model, tokenizer)``; ``reference`` is the text after
            ``prefix:`` when the backbone claims a prefix, else ``None``. A factory that
            also takes ``decoding`` is passed ``decoding=True`` when the model is for
            inference only (chat), and may return a lighter model with the same interface.
        prefix: claim references ``prefix:REST`` (``hf`` → ``hf:/path/to/model``).
    """

    name: str
    factory: Factory
    prefix: str | None = None
    description: str = ""
