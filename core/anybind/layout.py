"""The two directory formats every stage, command and the quickstart share, each with one owner.

A *run directory* (what ``anybind quickstart`` writes; each part can also live on its own)::

    RUN/world/    RUN/world-ood/    RUN/bind/    RUN/decoder/    RUN/decoder-<modality>/    RUN/chat/
    RUN/first-chat/    RUN/metrics.json    RUN/demo.html

(``decoder/`` makes the binding modality, images; a decoder of any other output modality has its own.
``first-chat/`` is the quickstart's first model, a chat model trained briefly so that its first
answer comes early; ``chat/`` is the full one, which every command reads by default.)

A *chat model directory* (written by align-in, then align-out and instruct)::

    CHAT/config.json                    {"format": "anybind.chat", "bound": "../bind", "backbone": "smollm2",
                                         "soft_tokens": 4, "projectors": [...], "outputs": {...}, "instruct": ...}
    CHAT/projectors/<modality>/         an input projector (+ training.json once finished)
    CHAT/<modality>_output/             generative tokens + output projector of one output modality
    CHAT/instruct/                      the LoRA adapter and the projectors/outputs instruct tuned
    CHAT/.progress/<part>/              mid-stage checkpoints; CHAT/.lock while a stage writes

``bound`` is relative to the chat directory, so a run directory can be moved whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from anybind.errors import CheckpointError
from anybind.persistence import CONFIG_NAME, read_config, write_json_atomic

CHAT_FORMAT = "anybind.chat"
#: The marker a finished part of a model directory writes last: its training record.
DONE_NAME = "training.json"


@dataclass(frozen=True)
class RunLayout:
    """Where each stage of a run writes."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    world = property(lambda self: self.root / "world")
    world_ood = property(lambda self: self.root / "world-ood")  # evaluation only: made differently, all held out
    bind = property(lambda self: self.root / "bind")
    decoder = property(lambda self: self.root / "decoder")
    chat = property(lambda self: self.root / "chat")
    first_chat = property(lambda self: self.root / "first-chat")
    metrics = property(lambda self: self.root / "metrics.json")
    demo_page = property(lambda self: self.root / "demo.html")

    def decoder_of(self, modality: str) -> Path:
        """Where the decoder of ``modality`` trains: ``decoder/`` for images, ``decoder-<modality>/`` otherwise."""
        from anybind.specs import BINDING_MODALITY

        return self.decoder if modality == BINDING_MODALITY else self.root / f"decoder-{modality}"

    def log(self, job: str) -> Path:
        """The log of a background job (``decoder``, ``backbone``)."""
        return self.root / f"{job}.log"


#: Where ``anybind quickstart`` writes, so that every command's defaults work on its output as is.
DEFAULT_RUN = RunLayout(Path("runs/quickstart"))


def output_dir_name(modality: str) -> str:
    return f"{modality}_output"


def decoder_reference_for(chat_dir: Path, reference: str) -> str:
    """A decoder reference as a chat directory stores it: a path relative to the directory,
    ``NAME:PATH`` with the path made absolute."""
    name, sep, rest = reference.partition(":")
    if sep and len(name) > 1:
        return f"{name}:{Path(rest).resolve()}"
    return os.path.relpath(Path(reference).resolve(), Path(chat_dir).resolve())


def stored_decoder_reference(chat_dir: Path, stored: str) -> str:
    """The reference :func:`decoder_reference_for` stored, usable again: a relative path resolved
    against the chat directory, ``NAME:PATH`` and absolute paths as they are."""
    name, sep, _ = stored.partition(":")
    if sep and len(name) > 1 or Path(stored).is_absolute():
        return stored
    return str((Path(chat_dir) / stored).resolve())


class ChatDir:
    """A chat model directory: its config and where each trained part lives."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ChatDir({str(self.path)!r})"

    @property
    def exists(self) -> bool:
        return (self.path / CONFIG_NAME).is_file()

    def config(self) -> dict:
        run = RunLayout(self.path.parent)  # a run's full model, asked for while its first model is all there is
        first = run.first_chat
        if not self.exists and self.path == run.chat and (first / CONFIG_NAME).is_file():
            raise CheckpointError(f"{self.path}: not trained yet; the quickstart's first model is in {first} "
                                  f"(--model {first}) while the full one trains")
        config = read_config(self.path)
        if config.get("format") != CHAT_FORMAT:
            raise CheckpointError(f"{self.path}: not an anybind chat model (config.json format is "
                                  f"{config.get('format')!r}); train one with: anybind train align-in")
        return config

    def update(self, **values) -> dict:
        """Merge ``values`` into config.json (written atomically)."""
        config = read_config(self.path) if self.exists else {}
        config.update(values)
        write_json_atomic(self.path / CONFIG_NAME, config)
        return config

    def write_base(self, *, bound: Path, backbone: str, soft_tokens: int, projectors: Iterable[str]) -> None:
        """What align-in records: the bound model, the backbone and the projectors trained so far."""
        known = read_config(self.path).get("projectors", []) if self.exists else []
        self.update(format=CHAT_FORMAT, bound=os.path.relpath(Path(bound).resolve(), self.path.resolve()),
                    backbone=backbone, soft_tokens=soft_tokens, projectors=sorted(set(known) | set(projectors)))

    def bound_dir(self, config: dict | None = None) -> Path:
        return (self.path / (config or self.config())["bound"]).resolve()

    # --- the parts --------------------------------------------------------------------------

    def projector(self, modality: str, tuned: bool = False) -> Path:
        return self.weights(tuned) / "projectors" / modality

    def output(self, modality: str, tuned: bool = False) -> Path:
        return self.weights(tuned) / output_dir_name(modality)

    def outputs(self, config: dict | None = None) -> list[str]:
        """The output modalities align-out trained (config ``outputs``; older directories say ``image_output``)."""
        config = config or self.config()
        outputs = dict(config.get("outputs") or {})
        if config.get("image_output"):
            outputs.setdefault(config["image_output"].removesuffix("_output"), config["image_output"])
        return sorted(outputs)

    def add_output(self, modality: str) -> None:
        config = self.config()
        self.update(outputs={**(config.get("outputs") or {}), modality: output_dir_name(modality)})

    @property
    def instruct(self) -> Path:
        return self.path / "instruct"

    @property
    def adapter(self) -> Path:
        return self.instruct / "adapter"

    def instructed(self, config: dict | None = None) -> bool:
        return bool((config or self.config()).get("instruct")) and (self.instruct / DONE_NAME).is_file()

    def weights(self, tuned: bool) -> Path:
        """Where the projectors and outputs come from: instruct's copies once it ran (``tuned``)."""
        return self.instruct if tuned else self.path

    def progress(self, part: str) -> Path:
        return self.path / ".progress" / part

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def bad_rows(self) -> Path:
        return self.path / "bad_rows.jsonl"
