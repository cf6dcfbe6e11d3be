from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from anybind.errors import InputError
from anybind.modality import EncoderOutput, ModalityEncoder, pad_sequences


def load_numseq(path):
    try:
        values = [float(v) for v in Path(path).read_text().split()]
    except ValueError as exc:
        raise InputError(path, f"not a list of numbers ({exc})") from None
    if not values:
        raise InputError(path, "empty sequence")
    return values


@dataclass
class NumSeqConfig:
    width: int = 16


class NumSeqEncoder(ModalityEncoder):
    Config = NumSeqConfig

    def __init__(self, config=None):
        super().__init__(config or NumSeqConfig())
        self.proj = nn.Linear(1, self.config.width)

    def preprocess(self, raw):
        return {"values": torch.tensor(raw, dtype=torch.float32)}

    def collate(self, samples):
        values, mask = pad_sequences([s["values"] for s in samples])
        return {"values": values, "mask": mask}

    def forward(self, values, mask):
        return EncoderOutput(tokens=torch.tanh(self.proj(values.unsqueeze(-1))), mask=mask)
