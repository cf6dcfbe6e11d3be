"""Generative tokens and the output projector of one output modality (GILL / NExT-GPT).

A chat model that can make outputs has, per output modality (``image`` through Stable
Diffusion, and whatever other decoder a plugin registers), ``k`` generative tokens
``[TOK0..k-1]`` (``[IMG0..3]`` for images; the stem comes from the decoder's spec). They are
not added to the LM's weight matrices: their input embeddings and the output row of
``[TOK0]`` live here, next to the output projector, so the backbone stays the untouched
pretrained checkpoint and the trainable part is a few thousand parameters plus the
projector. Only ``[TOK0]`` is ever sampled, the others are forced after it
(:class:`anybind.chat.outputs.OutputVocab` gives them their ids).

The output projector (learned queries + a small transformer decoder reading the final
hidden states at the ``k`` positions) maps them to the decoder's conditioning sequence:
the ``(tokens, width)`` states its text encoder would give the output's caption.

With ``context=True`` the projector's memory also holds the final hidden states of the
conversation before ``[TOK0]`` (the prompt, attachments and the answer's text so far),
each marked with how far back it is. GILL reads only the ``k`` states, which works for a
7B LM; a frozen 135M LM's ``[IMG]`` states carry *what* to draw only weakly (requests were
drawn 0.70 correct), while the words that say it are right there in the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from anybind.errors import DecoderError
from anybind.persistence import PretrainedMixin

#: How every answer that makes an output begins: "Here is a handwritten seven." and then the
#: output (instruct's dialogues write them so). An answer that begins so and makes nothing says
#: it shows what it does not; chat decodes it again without this start (``chat.outputs.promised``).
OUTPUT_OPENER = "Here is"


@dataclass
class GenerativeOutputConfig:
    lm_width: int = 576  # the LM's hidden size
    tokens: int = 4  # k generative tokens
    cond_tokens: int = 16  # the decoder's conditioning sequence: length ...
    cond_width: int = 384  # ... and width
    width: int = 256  # the projector's transformer width (and the [IMG0] gate's hidden width)
    layers: int = 2
    heads: int = 4
    context: bool = False  # the memory also reads the conversation's states before [IMG0]
    # The [IMG0] gate also reads the state where the answer starts (the end of the request): at
    # a sentence's end the state says what the sentence was about more than what the request
    # asked for, so "Write one sentence about four." and "..., then draw it." looked alike there.
    request_gate: bool = False
    # A second gate: does the request ask for this output at all? It reads the request's words
    # through the sentence encoder (anybind.chat.requests), not the LM's state, and where it says
    # no (logit below ``asked_threshold``) the output is not made, nor may an answer asking for no
    # output begin as one that makes one. The [TOK0] gate alone followed the answer's first words:
    # unfamiliar plain requests answered "Here is ..." were drawn or spoken. A gate on the LM's
    # state refused requests phrased as instruct never phrases them; the sentence encoder's space
    # carries over phrasings (bench/RESULTS.md, "a request gate on the request's words").
    asked_gate: bool = False
    asked_width: int = 384  # the sentence encoder's width
    asked_threshold: float = -1.0  # refuse only what the gate is fairly sure is not asked
    recency: int = 256  # context positions further back than this share one recency embedding
    # Classifier-free guidance to draw with (None: the decoder's own). Projected conditioning
    # misses the caption's encoding by a residual; a stronger guidance scale follows the part
    # it gets right (what to draw) further, at some cost in variety.
    guidance: float | None = None
    # Samples made of each output, the one the shared space puts nearest the request's and
    # answer's words shown (anybind.chat.best_of); 1: the first sample, unchecked.
    candidates: int = 1
    backbone: str = ""  # the backbone reference it was trained for
    decoder: str = ""  # the decoder it was trained against (as given at training time)
    modality: str = "image"  # what the decoder makes
    token: str = "IMG"  # the generative tokens' stem: [IMG0], [IMG1], ...


class GenerativeOutput(PretrainedMixin, nn.Module):
    """``[TOK0..k-1]`` rows plus the output projector ``(B, k, H) -> (B, T, W)``."""

    Config = GenerativeOutputConfig

    def __init__(self, config: GenerativeOutputConfig | None = None):
        super().__init__()
        self.config = c = config or GenerativeOutputConfig()
        self.embed = nn.Parameter(torch.randn(c.tokens, c.lm_width) * 0.02)  # input embeddings of [IMG0..k-1]
        # The output "row" of [IMG0]: a small MLP on the final hidden state rather than one
        # linear row, because the frozen LM's states separate "draw now" from "keep talking"
        # poorly along any single direction (measured: a linear row fired on most plain questions).
        self.head = nn.Sequential(nn.Linear(c.lm_width * (2 if c.request_gate else 1), c.width), nn.GELU(),
                                  nn.Linear(c.width, 1))
        if c.asked_gate:
            self.asked = self.new_asked_gate()
        # Standardisation of the [IMG] states, measured on the training conversations: what the
        # image should show is a small part of a frozen LM's final state (a few % of its norm),
        # and reading it relative to its spread across requests makes it the main signal.
        self.register_buffer("center", torch.zeros(c.tokens, c.lm_width))
        self.register_buffer("spread", torch.ones(c.tokens, c.lm_width))
        self.inp = nn.Linear(c.lm_width, c.width)
        self.pos = nn.Parameter(torch.randn(c.tokens, c.width) * 0.02)
        self.queries = nn.Parameter(torch.randn(c.cond_tokens, c.width) * 0.02)
        layer = nn.TransformerDecoderLayer(c.width, c.heads, 4 * c.width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, c.layers)
        self.out = nn.Sequential(nn.LayerNorm(c.width), nn.Linear(c.width, c.cond_width))
        if c.context:
            self.register_buffer("context_center", torch.zeros(c.lm_width))
            self.register_buffer("context_spread", torch.ones(c.lm_width))
            self.context_inp = nn.Linear(c.lm_width, c.width)
            self.recency = nn.Embedding(c.recency, c.width)  # 0 = the state right before [IMG0]
            nn.init.normal_(self.recency.weight, std=0.02)

    @property
    def tokens(self) -> int:
        return self.config.tokens

    @property
    def modality(self) -> str:
        return self.config.modality

    def token_names(self) -> list[str]:
        return [f"[{self.config.token}{j}]" for j in range(self.tokens)]

    @property
    def cond_shape(self) -> tuple[int, int]:
        return (self.config.cond_tokens, self.config.cond_width)

    def check_compatible(self, decoder, where: str) -> None:
        """The decoder reads the conditioning this projector makes, else an error naming both shapes."""
        if tuple(self.cond_shape) != tuple(decoder.cond_shape):
            (t, w), (dt, dw) = self.cond_shape, decoder.cond_shape
            raise DecoderError(f"{where}: the output projector makes {t}x{w} conditioning but the decoder expects "
                               f"{dt}x{dw}; train align-out against this decoder (anybind train align-out --decoder ...)")

    @torch.no_grad()
    def match_embeddings(self, table: torch.Tensor, seed: int = 0) -> None:
        """Start the ``[IMG]`` input rows as distinct samples from the LM's embedding distribution."""
        table = table.float()
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.config.tokens, table.shape[1], generator=g)
        self.embed.copy_(table.mean(0) + noise * table.std(0))

    @torch.no_grad()
    def set_logit_offset(self, value: float) -> None:
        self.head[-1].bias.fill_(value)

    def logit(self, hidden: torch.Tensor, request: torch.Tensor | None = None) -> torch.Tensor:
        """The ``[IMG0]`` logit for final hidden states ``(..., H)`` -> ``(...)``; ``request``: the
        state where each answer starts (broadcast against ``hidden``), read by a request gate."""
        hidden = hidden.float()
        if self.config.request_gate:
            if request is None:
                raise ValueError("this output's gate reads the request: pass the state where the answer starts")
            hidden = torch.cat([hidden, request.float().to(hidden.device).expand_as(hidden)], dim=-1)
        return self.head(hidden).squeeze(-1)

    def new_asked_gate(self) -> nn.Module:
        """An untrained request gate (see ``GenerativeOutputConfig.asked_gate``): a request's
        sentence embedding, ``(B, asked_width)``, -> ``(B, 1)``."""
        return nn.Linear(self.config.asked_width, 1)

    def asked_logit(self, request: torch.Tensor) -> torch.Tensor | None:
        """``(B, asked_width)`` sentence embeddings of the requests -> ``(B,)``: how surely each asks
        for this output (it does not below ``asked_threshold``); None for an output without that gate."""
        if not self.config.asked_gate:
            return None
        return self.asked(request.float().to(self.embed.device)).squeeze(-1)

    @property
    def reads_context(self) -> bool:
        return self.config.context

    @torch.no_grad()
    def calibrate(self, states: torch.Tensor, context: torch.Tensor | None = None) -> None:
        """Set the standardisation from ``(N, k, H)`` states of training requests (and, for a
        projector that reads the context, from ``(M, H)`` context states)."""
        self.center.copy_(states.float().mean(0))
        self.spread.copy_(states.float().std(0).clamp(min=1e-3))
        if self.reads_context and context is not None:
            self.context_center.copy_(context.float().mean(0))
            self.context_spread.copy_(context.float().std(0).clamp(min=1e-3))

    def forward(self, hidden: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states at ``[IMG0..k-1]``, ``(B, k, H)`` -> conditioning ``(B, T, W)``.

        ``context`` ``(B, N, H)``: the states before ``[IMG0]``, right-padded, with
        ``context_mask`` ``(B, N)`` (1 = a real position); needed when the projector reads it.
        """
        memory = self.inp((hidden.float() - self.center) / self.spread) + self.pos
        padding = None
        if self.reads_context:
            if context is None:
                raise ValueError("this output projector reads the conversation before [IMG0]: pass its states as context")
            if context_mask is None:
                context_mask = torch.ones(context.shape[:2], dtype=torch.long, device=context.device)
            mask = context_mask.to(memory.device).bool()
            # How far back each position is from [IMG0] (right padding: count back from each row's end).
            back = (mask.sum(1, keepdim=True) - 1 - torch.arange(mask.shape[1], device=mask.device)).clamp(0, self.config.recency - 1)
            ctx = self.context_inp((context.float().to(memory.device) - self.context_center) / self.context_spread)
            memory = torch.cat([memory, ctx + self.recency(back)], dim=1)
            padding = torch.cat([torch.zeros(len(mask), self.tokens, dtype=torch.bool, device=mask.device), ~mask], dim=1)
        queries = self.queries.expand(hidden.shape[0], -1, -1)
        return self.out(self.blocks(queries, memory, memory_key_padding_mask=padding))


def token_texts(tokenizer, vocab: int) -> list[str]:
    """The text of each id ``0 .. vocab-1`` written alone ("" for an id the tokenizer has no piece
    for): what :func:`sentence_boundaries` and :func:`word_tokens` classify."""
    texts = [""] * vocab
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab, len(tokenizer)))))
    for i, piece in enumerate(pieces):
        if piece is not None:
            texts[i] = tokenizer.convert_tokens_to_string([piece])
    return texts


def sentence_boundaries(texts: list[str]) -> torch.Tensor:
    """``(vocab,)`` bool over :func:`token_texts`: tokens after which an output may start (they
    end a sentence or line).

    Outputs go between sentences, never inside a word: the decode loop only lets a ``[TOK0]``
    compete at the answer's start and after these tokens, and align-out trains it there.
    """
    return torch.tensor([t.rstrip(" ").endswith((".", "!", "?", ":", "\n")) for t in texts], dtype=torch.bool)


def word_tokens(texts: list[str]) -> torch.Tensor:
    """``(vocab,)`` bool over :func:`token_texts`: tokens that are a whole word of letters
    ("handwritten", not "1", "." or "\\n"), which the decode loop never lets follow themselves.
    An instruction-tuned small LM unsure of the next word tends to repeat the last one ("Here is a
    handwritten handwritten handwritten ...") to the token limit; a word right after itself is
    almost never meant, while digits ("100") and punctuation ("...") repeat rightly."""
    return torch.tensor([len(t.strip()) > 1 and t.strip().isalpha() for t in texts], dtype=torch.bool)
