"""A BERT encoder in plain torch, for frozen sentence encoders such as all-MiniLM-L6-v2.

Why not ``transformers.BertModel``: importing transformers' model classes takes about 3 s on
2 cores, most of a text query's time (``anybind retrieve "..." --index``). This reads the same
``config.json``, ``model.safetensors`` and ``tokenizer.json`` (with ``tokenizers``, which
transformers' fast tokenizer wraps), its module names are BertModel's so the checkpoint loads
strictly, and its outputs equal BertModel's (``tests/test_text_encoder.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anybind.errors import CheckpointError

_ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    model_type: str = "bert"

    @classmethod
    def from_json(cls, path: Path) -> "BertConfig":
        raw = json.loads(Path(path).read_text())
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


def readable(directory: Path) -> bool:
    """Whether this module reads the directory: an absolute-position BERT with safetensors weights
    and a fast tokenizer (what transformers would load as ``BertModel`` + ``BertTokenizerFast``)."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (config.get("model_type") == "bert" and config.get("position_embedding_type", "absolute") == "absolute"
            and config.get("hidden_act", "gelu") in _ACTIVATIONS and (directory / "model.safetensors").is_file()
            and (directory / "tokenizer.json").is_file())


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, width = x.shape

        def split(linear):
            return linear(x).view(b, t, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = split(self.query), split(self.key), split(self.value)
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads) + bias
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, width)


class _DenseNorm(nn.Module):
    """A projection back to the width, then the residual and LayerNorm (BERT's "output" blocks)."""

    def __init__(self, c: BertConfig, width_in: int):
        super().__init__()
        self.dense = nn.Linear(width_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseNorm(c, c.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = _ACTIVATIONS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c, c.intermediate_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _Pooler(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None


class BertEncoder(nn.Module):
    """BERT's encoder stack: ``forward(input_ids, attention_mask)`` gives each token's final state
    (and the pooled ``[CLS]`` state where the checkpoint has a pooler)."""

    def __init__(self, config: BertConfig, pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config) if pooler else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> BertOutput:
        x = self.embeddings(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # padding gets no weight
        for layer in self.encoder.layer:
            x = layer(x, bias)
        pooled = torch.tanh(self.pooler.dense(x[:, 0])) if self.pooler is not None else None
        return BertOutput(x, pooled)

    @classmethod
    def from_pretrained(cls, directory: Path | str) -> "BertEncoder":
        from safetensors.torch import load_file

        directory = Path(directory)
        state = load_file(str(directory / "model.safetensors"))
        prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.endswith("position_ids")}
        model = cls(BertConfig.from_json(directory / "config.json"), pooler="pooler.dense.weight" in state)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a tensor of another shape than config.json says
            raise CheckpointError(f"{directory}/model.safetensors: does not match its config.json ({str(exc).splitlines()[-1].strip()})") from None
        if missing or any(not k.startswith("cls.") for k in unexpected):  # a pretraining head is not ours to read
            raise CheckpointError(f"{directory}/model.safetensors: not a BERT encoder of its config.json "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return model


class TokenizerFile:
    """A ``tokenizer.json`` read with ``tokenizers``: ``tokenizer(text, truncation=True,
    max_length=N)["input_ids"]`` as transformers' fast tokenizer gives them."""

    def __init__(self, directory: Path | str):
        from tokenizers import Tokenizer

        directory = Path(directory)
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        try:
            settings = json.loads((directory / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            settings = {}
        pad = settings.get("pad_token", "[PAD]")
        self.pad_token_id = self.tokenizer.token_to_id(pad if isinstance(pad, str) else pad.get("content", "[PAD]"))

    def __call__(self, text: str, truncation: bool = False, max_length: int | None = None) -> dict[str, list[int]]:
        if truncation and max_length:
            self.tokenizer.enable_truncation(max_length)
        else:
            self.tokenizer.no_truncation()
        return {"input_ids": self.tokenizer.encode(text).ids}
