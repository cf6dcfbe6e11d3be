"""Conversations with attachments, rendered through the backbone's own chat template.

Each attachment becomes ``k`` soft tokens where it sits in its message. The template
sees a placeholder, the rendered text is split there, the text pieces are tokenised and
the soft tokens are written into the input embeddings at the placeholder positions::

    <|im_start|>user\\n[audio: ▢▢▢▢]\\nWhat digit is spoken here?<|im_end|>\\n<|im_start|>assistant\\n

Truncation policy: when a conversation does not fit the context (minus the room kept for
the answer), the oldest turns are dropped whole (the system message and the newest user
message are always kept). If the newest message alone is too long, that is an error.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from anybind.errors import AnybindError

PLACEHOLDER = "\x00anybind-attachment\x00"
ATTACHMENT_MARK = "[{modality}: {placeholder}]\n"


@dataclass
class Attachment:
    """One attached input: its modality, where it came from, and its bound embedding (D,)."""

    modality: str
    source: str
    embedding: torch.Tensor


@dataclass
class Turn:
    role: str  # "system", "user" or "assistant"
    text: str
    attachments: list[Attachment] = field(default_factory=list)


@dataclass
class Encoded:
    """Token ids of a rendered conversation, with the slots soft tokens go into."""

    ids: list[int]
    slots: list[tuple[int, Attachment]]  # (position of the first soft token, attachment), in order
    answer_start: int | None = None  # first id of the assistant answer (training examples)
    #: first id of the last turn, the request being answered: an output is made from what was
    #: said from here on (earlier turns reach it only through the LM's own states)
    request_start: int = 0


class ContextOverflow(AnybindError):
    pass


def _content(turn: Turn) -> str:
    marks = "".join(ATTACHMENT_MARK.format(modality=a.modality, placeholder=PLACEHOLDER) for a in turn.attachments)
    return marks + turn.text


def render(tokenizer, turns: list[Turn], *, add_generation_prompt: bool) -> str:
    messages = [{"role": t.role, "content": _content(t)} for t in turns]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _tokenize(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode(tokenizer, turns: list[Turn], soft_tokens: int, *, answer: str | None = None) -> Encoded:
    """Token ids for ``turns`` (ending with a generation prompt); with ``answer``, the assistant's
    reply is appended and ``answer_start`` marks where it begins (for a captioning loss)."""
    prompt = render(tokenizer, turns, add_generation_prompt=True)
    attachments = iter([a for t in turns for a in t.attachments])
    if len(prompt.split(PLACEHOLDER)) != sum(len(t.attachments) for t in turns) + 1:
        raise AnybindError("the chat template dropped or repeated an attachment; it must keep message content verbatim")
    # The last message's content is verbatim in the prompt; ids are counted up to it and then on
    # (a message's content starts a new pre-token, so these are the ids of one pass).
    cut = max(0, prompt.rfind(_content(turns[-1]))) if turns else 0
    ids: list[int] = []
    slots: list[tuple[int, Attachment]] = []
    for part in (prompt[:cut], prompt[cut:]):
        request_start = len(ids)
        pieces = part.split(PLACEHOLDER)
        for n, piece in enumerate(pieces):
            ids += _tokenize(tokenizer, piece)
            if n < len(pieces) - 1:
                slots.append((len(ids), next(attachments)))
                ids += [tokenizer.pad_token_id] * soft_tokens
    encoded = Encoded(ids, slots, request_start=request_start)
    if answer is not None:
        full = render(tokenizer, turns + [Turn("assistant", answer)], add_generation_prompt=False)
        full = full.replace(PLACEHOLDER, "")
        prefix = prompt.replace(PLACEHOLDER, "")
        if not full.startswith(prefix):
            raise AnybindError("the chat template renders the conversation differently once the answer is added")
        encoded.answer_start = len(ids)
        encoded.ids = ids + _tokenize(tokenizer, full[len(prefix):].rstrip())
    return encoded


def fit(tokenizer, turns: list[Turn], soft_tokens: int, budget: int) -> tuple[Encoded, int]:
    """Encode, dropping the oldest turns until the conversation fits ``budget`` tokens.

    Returns the encoding and how many turns were dropped.
    """
    system = [t for t in turns[:1] if t.role == "system"]
    rest = turns[len(system):]
    dropped = 0
    while True:
        encoded = encode(tokenizer, system + rest, soft_tokens)
        if len(encoded.ids) <= budget:
            return encoded, dropped
        if len(rest) <= 1:
            raise ContextOverflow(
                f"the message is {len(encoded.ids)} tokens with its attachments, more than the {budget} "
                "the model's context leaves for it; shorten it or lower --max-tokens"
            )
        # Drop the oldest exchange: a user turn and the assistant reply after it.
        cut = 2 if len(rest) > 2 and rest[1].role == "assistant" else 1
        rest = rest[cut:]
        dropped += cut


def input_embeddings(backbone, batch: list[Encoded], soft: list[torch.Tensor | None], *, pad_left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed a batch of encodings: ``(inputs_embeds (B, T, H), attention_mask (B, T))``.

    ``soft[row]`` holds that row's soft tokens, (attachments, k, H) in slot order. Padding goes
    on the left for generation (every row ends at its last prompt token) and on the right for training.
    """
    width = max(len(e.ids) for e in batch)
    pad = backbone.tokenizer.pad_token_id
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    offsets = []
    for row, e in enumerate(batch):
        offset = width - len(e.ids) if pad_left else 0
        ids[row, offset : offset + len(e.ids)] = torch.tensor(e.ids)
        mask[row, offset : offset + len(e.ids)] = 1
        offsets.append(offset)
    embeds = backbone.embed_tokens(ids)
    if any(e.slots for e in batch):
        embeds = embeds.clone()
        for row, e in enumerate(batch):
            for (start, _), tokens in zip(e.slots, soft[row] if e.slots else ()):
                embeds[row, offsets[row] + start : offsets[row] + start + len(tokens)] = tokens.to(embeds.dtype)
    return embeds, mask.to(backbone.device)


def split_prefix(batch: list[Encoded]) -> tuple[list[int], list[Encoded]]:
    """The ids every encoding starts with (the system prompt and the first turn's header, in
    practice), stopping before any attachment and leaving each at least one id; and each
    encoding after them, its positions shifted."""
    if not batch:
        return [], []
    limit = min(min([len(e.ids) - 1] + [start for start, _ in e.slots]) for e in batch)
    first, cut = batch[0].ids, 0
    while cut < limit and all(e.ids[cut] == first[cut] for e in batch):
        cut += 1
    tails = [Encoded(e.ids[cut:], [(p - cut, a) for p, a in e.slots],
                     None if e.answer_start is None else e.answer_start - cut, max(0, e.request_start - cut))
             for e in batch]
    return first[:cut], tails


class PrefixCache:
    """The frozen LM's KV cache and final hidden states of a prefix many rows share, computed
    once without gradient (it holds no attachment); rows then run only their own tails."""

    def __init__(self, backbone, ids: list[int]):
        self.backbone, self.ids = backbone, list(ids)
        self.kv, self.hidden = None, torch.zeros(0, backbone.hidden_size, device=backbone.device)
        if self.ids:
            with torch.no_grad():
                out = backbone.model.base_model(input_ids=torch.tensor([self.ids], device=backbone.device), use_cache=True)
            self.kv, self.hidden = out.past_key_values, out.last_hidden_state[0]

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor):
        """Run the LM's base model over ``(B, T, H)`` tail embeddings (padded either side, as
        ``mask`` says) after the prefix; its cache holds the prefix's keys first."""
        n, rows = len(self.ids), len(mask)
        past = None
        if n:
            past = copy.deepcopy(self.kv)
            past.batch_repeat_interleave(rows)
        positions = n + (mask.cumsum(-1) - 1).clamp(min=0)
        full = torch.cat([mask.new_ones(rows, n), mask], dim=1)
        return self.backbone.model.base_model(inputs_embeds=embeds, attention_mask=full, position_ids=positions,
                                              past_key_values=past, use_cache=True)


def describe(attachment: Attachment) -> str:
    return f"{Path(attachment.source).name} ({attachment.modality})"
