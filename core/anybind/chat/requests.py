"""A request's words, embedded by the sentence encoder: what each output's request gate reads.

It is the encoder anybind's text tower is built on (all-MiniLM-L6-v2, frozen, before any head of
a bound model), so requests that mean the same lie near each other whichever chat model asks, and
however instruct happened to phrase its own (``GenerativeOutputConfig.asked_gate``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch


@lru_cache(maxsize=1)
def _encoder():
    from anybind.models.space import AnybindModel

    return AnybindModel.pretrained_text()


def request_embeddings(texts: Sequence[str]) -> torch.Tensor:
    """``(N, D)`` L2-normalised sentence embeddings of ``texts`` (the encoder loads on first use)."""
    encoder = _encoder()
    if not texts:
        return torch.zeros(0, encoder.embed_dim)
    with torch.no_grad():
        return torch.nn.functional.normalize(encoder.embed_raw("text", list(texts)).float(), dim=-1)
