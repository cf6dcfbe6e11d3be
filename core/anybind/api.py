"""``anybind.load``: any model directory, as the object that uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from anybind.errors import CheckpointError
from anybind.layout import CHAT_FORMAT
from anybind.models.space import AnybindModel
from anybind.persistence import read_config


def load(path: Path | str | None = None, modalities: Iterable[str] | None = None, quantize: str | None = None):
    """Load a model directory: a bound model (:class:`~anybind.models.space.AnybindModel`, ``embed``)
    or a chat model (:class:`~anybind.chat.model.ChatModel`, ``embed`` and ``generate``); with no
    path, the pretrained text-only space. ``modalities`` loads only those towers of a bound
    model; ``quantize="int8"`` decodes a chat model with int8 weights on the CPU."""
    if path is None:
        return AnybindModel.pretrained_text()
    if read_config(path).get("format") == CHAT_FORMAT:
        from anybind.chat.model import ChatModel

        return ChatModel.from_pretrained(path, quantize=quantize)
    if quantize:
        raise CheckpointError(f"{path}: a bound model has no LM to quantize (quantize= is for chat models)")
    return AnybindModel.from_pretrained(path, modalities)
