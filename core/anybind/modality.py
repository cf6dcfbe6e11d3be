"""The modality contract: what every modality plugin's encoder implements.

A modality turns a file into a token sequence in three steps, each owned by the plugin::

    raw    = spec.load(path)                  # loader: file -> raw sample (errors name the file)
    sample = encoder.preprocess(raw)          # tokenizer: raw -> dict of tensors, one sample
    batch  = encoder.collate([sample, ...])   # dict of batched tensors
    out    = encoder(**batch)                 # EncoderOutput: tokens (B, N, W), mask (B, N)

Core owns everything after that: pooling, the projection head into the shared space,
normalisation (:mod:`anybind.models.space`), and the training that binds the heads together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from anybind.persistence import PretrainedMixin


@dataclass
class EncoderOutput:
    tokens: torch.Tensor  # (B, N, W)
    mask: torch.Tensor | None = None  # (B, N), True where a token is real
    summary: torch.Tensor | None = None  # (B, W), an encoder's own pooling, if it has one

    def pooled(self) -> torch.Tensor:
        """The encoder's summary if given, else the masked mean over tokens: (B, N, W) -> (B, W)."""
        if self.summary is not None:
            return self.summary
        if self.mask is None:
            return self.tokens.mean(dim=1)
        weights = self.mask.to(self.tokens.dtype).unsqueeze(-1)  # (B, N, 1)
        return (self.tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class ModalityEncoder(PretrainedMixin, nn.Module):
    """Base class of a modality's trunk.

    Subclasses set ``Config`` (a dataclass of every size and option, saved to config.json)
    and implement :meth:`preprocess` and :meth:`forward`. ``width`` is the size of the
    tokens ``forward`` returns.
    """

    Config: type
    #: Whether the trunk is pretrained and frozen (its weights are then not saved).
    frozen: bool = False

    def __init__(self, config):
        super().__init__()
        self.config = config

    @property
    def width(self) -> int:
        return int(self.config.width)

    def saved_state(self) -> dict[str, torch.Tensor]:
        """What a tower saves of this encoder: everything, or nothing of a frozen pretrained trunk."""
        return {} if self.frozen else self.state_dict()

    def restores(self, key: str) -> bool:
        """Whether a state key missing from a saved tower is rebuilt by the encoder itself (from
        the pretrained weights it loads), rather than a sign of a mismatched checkpoint."""
        return self.frozen

    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def collate(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batch samples; the default stacks each key (samples of one fixed shape)."""
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}

    def augment(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Random training-time augmentation of a collated batch; the default does none."""
        return batch

    def init_from(self, other: "ModalityEncoder") -> None:
        """Initialise from another modality's trained trunk (e.g. video from image); optional."""
        raise NotImplementedError(f"{type(self).__name__} cannot be initialised from {type(other).__name__}")

    def forward(self, **batch: torch.Tensor) -> EncoderOutput:
        raise NotImplementedError


def pad_sequences(sequences: list[torch.Tensor], pad_value: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (N_i, ...) tensors to (B, N_max, ...); also return the (B, N_max) validity mask."""
    lengths = torch.tensor([len(s) for s in sequences])
    padded = nn.utils.rnn.pad_sequence(sequences, batch_first=True, padding_value=pad_value)
    mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    return padded, mask
