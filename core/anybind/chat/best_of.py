"""Several samples of an output, and the one the shared space puts nearest the words kept.

A decoder samples from noise, and the conditioning the LM's states project to misses the
caption's encoding by a residual: with one sample, about one drawing or spoken digit in ten
showed another digit than the sentence beside it named. The shared space can check that: each
candidate goes through its own modality's tower, the request and the answer's words so far
through the text tower, and the candidate nearest the words is the one shown (as DALL-E's and
GILL's samples are reranked by CLIP). Candidates decode in one batch, so four cost about 1.4
times one (bench/RESULTS.md, "best of several samples").
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

from anybind.specs import TEXT_MODALITY


def words_of(request: str, answer: str) -> str:
    """What an output is checked against: the request and the answer's text before the output."""
    return f"{request.strip()} {answer.strip()}".strip()


def can_check(model, modality: str) -> bool:
    """Whether ``model`` has the towers to compare ``modality``'s outputs with words."""
    return {modality, TEXT_MODALITY} <= set(model.modalities)


def nearest_words(model, modality: str, candidates: Sequence, words: Sequence[str], k: int) -> list:
    """Of ``candidates`` (``k`` consecutive ones per row of ``words``), the one per row whose
    embedding is nearest that row's words. A tower that cannot read its decoder's outputs (a
    plugin whose decoder returns what its loader never does) keeps each row's first, and says so."""
    try:
        made = F.normalize(model.embed_raw(modality, list(candidates)), dim=-1).view(len(words), k, -1)
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        warnings.warn(f"the {modality} tower cannot read its decoder's outputs ({error}); showing the first "
                      f"of each {k} samples unchecked", stacklevel=2)
        return [candidates[row * k] for row in range(len(words))]
    said = F.normalize(model.embed_resolved([(TEXT_MODALITY, w or " ") for w in words]), dim=-1)  # words, never paths
    best = torch.einsum("rkd,rd->rk", made, said).argmax(dim=1)
    return [candidates[row * k + int(c)] for row, c in enumerate(best)]
