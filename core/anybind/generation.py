"""One KV-cached decode loop, sampling, streaming detokenisation and the events it yields.

The loop is deliberately bare (prefill once from input embeddings, then one token at a
time against the cache) so that anybind's generation costs what ``transformers``'
``generate`` costs on the same inputs; ``bench/chat_speed.py`` measures the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class TextEvent:
    """A piece of the answer's text, as soon as it decodes to whole characters."""

    text: str
    type: str = "text"


@dataclass
class NoticeEvent:
    """Something the user should know that is not part of the answer (e.g. dropped turns)."""

    message: str
    type: str = "notice"


@dataclass
class DoneEvent:
    """The end of one answer."""

    text: str
    tokens: int
    reason: str  # "stop" (end of turn) or "length" (max tokens)
    seconds: float
    first_token_seconds: float | None
    type: str = "done"
    usage: dict = field(default_factory=dict)


@dataclass
class SamplingOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row from (B, V) logits: greedy at temperature 0, else temperature + nucleus."""
    if options.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > options.top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def decode(
    model,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    options: SamplingOptions,
    stop_ids: list[int] = (),
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), until each row has stopped or ``max_new_tokens``.

    Rows are left-padded; a row that has stopped keeps yielding its stop token.
    """
    generator = None
    if options.seed is not None:
        generator = torch.Generator(device=inputs_embeds.device).manual_seed(options.seed)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, logits_to_keep=1)
    past = out.past_key_values
    positions = position_ids[:, -1:]
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=inputs_embeds.device)
    finished = torch.zeros(len(attention_mask), dtype=torch.bool, device=inputs_embeds.device)
    ones = attention_mask.new_ones(len(attention_mask), 1)
    for step in range(options.max_new_tokens):
        token = sample(out.logits[:, -1, :], options, generator)
        if len(stop):
            token = torch.where(finished, stop[0], token)
            finished |= torch.isin(token, stop)
        yield token
        if step + 1 == options.max_new_tokens or bool(finished.all()):
            return
        attention_mask = torch.cat([attention_mask, ones], dim=1)
        positions = positions + 1
        out = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=positions,
                    past_key_values=past, use_cache=True)
        past = out.past_key_values


class TextStream:
    """Incremental detokeniser: push token ids, get back text as soon as it is whole characters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] is context already printed
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    @property
    def text(self) -> str:
        return self._decode(self.ids)
