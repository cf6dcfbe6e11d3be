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
class ImageEvent:
    """An image the model drew, in its place in the answer (``index`` counts from 0)."""

    image: object  # PIL.Image.Image
    index: int
    type: str = "image"
    path: str | None = None  # set once a renderer has saved it


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
    *,
    gen=None,
    max_images: int = 4,
    boundaries: torch.Tensor | None = None,
    prefix=None,
) -> Iterator:
    """Yield the next token of every row, (B,), until each row has stopped or ``max_new_tokens``.

    Rows are left-padded; a row that has stopped keeps yielding its stop token.

    With ``gen`` (an :class:`anybind.imageout.ImageOutput`) the vocabulary gains the
    generative tokens ``[IMG0..k-1]`` at ids ``V..V+k-1``: ``[IMG0]`` competes with the text
    tokens, the rest are forced after it, and each yield is ``(token, hidden)`` where
    ``hidden`` (B, n, H) holds the final hidden states of the positions fed since the last
    yield (the whole prompt first, then one position each step); its last state is that of
    the position whose output ``token`` is (after ``[IMG_j]`` was yielded, the next
    ``hidden[:, -1]`` is ``[IMG_j]``'s state). A row that
    is part-way through an image finishes it even past ``max_new_tokens``. ``boundaries``
    (bool over the vocabulary) restricts ``[IMG0]`` to the first step and to steps after a
    token marked True (a sentence end).

    ``prefix`` (an :class:`anybind.conversation.PrefixCache`, text only) holds ids every row
    starts with, already run: the rows' embeddings and mask then cover what follows them.
    """
    generator = None
    if options.seed is not None:
        generator = torch.Generator(device=inputs_embeds.device).manual_seed(options.seed)
    rows = len(attention_mask)
    device = inputs_embeds.device
    prefixed = prefix is not None and bool(prefix.ids)
    if prefixed and gen is not None:
        raise ValueError("decode: a prefix cache is for text-only decoding")
    tail_mask = attention_mask
    if prefixed:
        attention_mask = torch.cat([attention_mask.new_ones(rows, len(prefix.ids)), attention_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if prefixed:
        out = prefix.forward(inputs_embeds, tail_mask)
        logits, hidden, past = model.get_output_embeddings()(out.last_hidden_state[:, -1]), None, out.past_key_values
    elif gen is None:
        out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=True, logits_to_keep=1)
        logits, hidden, past = out.logits[:, -1, :], None, out.past_key_values
    else:
        base, head, table = model.base_model, model.get_output_embeddings(), model.get_input_embeddings()
        k = gen.tokens

        def forward(embeds, mask, positions, past):
            out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                       past_key_values=past, use_cache=True)
            h = out.last_hidden_state
            return torch.cat([head(h[:, -1]).float(), gen.logit(h[:, -1])[:, None]], dim=-1), h, out.past_key_values

        logits, hidden, past = forward(inputs_embeds, attention_mask, position_ids, None)
        vocab = logits.shape[-1] - 1  # id of [IMG0]
        image_index = torch.full((rows,), -1, dtype=torch.long, device=device)  # last [IMG_j] fed, -1: none
        images = torch.zeros(rows, dtype=torch.long, device=device)
    positions = position_ids[:, -1:]
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    ones = attention_mask.new_ones(rows, 1)
    if boundaries is not None:
        boundaries = boundaries.to(device)
    previous = None  # the last token yielded, per row
    step = 0
    while True:
        if gen is not None:
            blocked = images >= max_images
            if boundaries is not None and previous is not None:
                blocked |= ~(boundaries[previous.clamp(max=len(boundaries) - 1)] | (previous >= vocab))
            logits[:, vocab] = logits[:, vocab].masked_fill(blocked, float("-inf"))
        token = sample(logits, options, generator)
        if gen is not None:
            forced = (image_index >= 0) & (image_index < k - 1)
            token = torch.where(forced, vocab + image_index + 1, token)
        if len(stop):
            token = torch.where(finished, stop[0], token)
            finished |= torch.isin(token, stop)
        if gen is not None:
            image_index = torch.where(token >= vocab, token - vocab, torch.full_like(image_index, -1))
            images += (token == vocab).long()
        yield token if gen is None else (token, hidden)
        previous = token
        step += 1
        busy = gen is not None and bool((image_index >= 0).any())
        if (step >= options.max_new_tokens and not busy) or bool(finished.all()):
            return
        attention_mask = torch.cat([attention_mask, ones], dim=1)
        positions = positions + 1
        if gen is None:
            out = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=positions,
                        past_key_values=past, use_cache=True)
            logits, past = out.logits[:, -1, :], out.past_key_values
        else:
            is_gen = token >= vocab
            embeds = table(token.clamp(max=vocab - 1))
            if bool(is_gen.any()):
                embeds = torch.where(is_gen[:, None], gen.embed[(token - vocab).clamp(min=0)].to(embeds.dtype), embeds)
            logits, hidden, past = forward(embeds[:, None], attention_mask, positions, past)


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

    def flush(self) -> str:
        """What is still held back at the end (a character cut off by the token limit decodes
        as U+FFFD), so that the pieces pushed out add up to :attr:`text`."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]

    @property
    def text(self) -> str:
        return self._decode(self.ids)
