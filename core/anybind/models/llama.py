"""A Llama causal LM in plain torch, for chat (inference only).

Why not ``transformers.LlamaForCausalLM``: importing it brings ``torch._dynamo``, triton and
torchvision with it, 250 MiB resident before a single weight is read, a quarter of int8 chat's
whole memory (bench/RESULTS.md, "chat without transformers' Llama"). Training keeps
transformers (peft, gradient checkpointing); chat reads the same ``config.json`` and
``model.safetensors`` here, memory-mapped and not copied. Module names are
``LlamaForCausalLM``'s, so the checkpoint loads strictly and LoRA adapters and int8
quantization address the same layers, and the calls the decode loops make
(``inputs_embeds``, ``attention_mask``, ``position_ids``, ``past_key_values``,
``logits_to_keep``, ``base_model``) take the same arguments; its logits equal transformers'
(``tests/test_llama.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from anybind.errors import CheckpointError

WEIGHTS_NAME = "model.safetensors"


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    model_type: str = "llama"

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: dict) -> "LlamaConfig":
        values = {f.name: raw[f.name] for f in fields(cls) if raw.get(f.name) is not None}
        rope = raw.get("rope_parameters") or {}  # transformers 5 keeps rope_theta here
        if rope.get("rope_theta") is not None:
            values["rope_theta"] = rope["rope_theta"]
        return cls(**values)


def readable(directory: Path) -> bool:
    """Whether this module reads the directory: a Llama with SiLU, unscaled rotary positions and one
    safetensors file (anything else, e.g. rope scaling or sharded weights, loads with transformers)."""
    directory = Path(directory)
    try:
        raw = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    ropes = {r.get("rope_type", r.get("type", "default")) for r in (raw.get("rope_scaling"), raw.get("rope_parameters")) if r}
    return (raw.get("model_type") == "llama" and raw.get("hidden_act", "silu") == "silu" and ropes <= {"default"}
            and raw.get("pretraining_tp", 1) == 1 and (directory / WEIGHTS_NAME).is_file())


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width, device=device))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype  # normalized in fp32, as transformers does, then scaled in the model's dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class KVCache:
    """Each layer's keys and values so far, (B, kv heads, S, head dim)."""

    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k, v = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row ``repeats`` times (one prefix shared by many rows)."""
        self.keys = [k.repeat_interleave(repeats, dim=0) if k is not None else None for k in self.keys]
        self.values = [v.repeat_interleave(repeats, dim=0) if v is not None else None for v in self.values]


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig, index: int, device=None):
        super().__init__()
        self.index, self.heads, self.kv_heads, self.head_dim = index, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q, kv, bias = self.heads * c.head_dim, self.kv_heads * c.head_dim, c.attention_bias
        self.q_proj = nn.Linear(c.hidden_size, q, bias=bias, device=device)
        self.k_proj = nn.Linear(c.hidden_size, kv, bias=bias, device=device)
        self.v_proj = nn.Linear(c.hidden_size, kv, bias=bias, device=device)
        self.o_proj = nn.Linear(q, c.hidden_size, bias=bias, device=device)

    def forward(self, x, cos, sin, mask, cache: KVCache | None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.index, k, v)
        causal = mask is None and T > 1
        # each key/value head serves heads // kv_heads query heads without being copied (3x faster
        # than repeating them, and the same numbers: bench/RESULTS.md, "chat without transformers' Llama")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.head_dim ** -0.5,
                                             enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, c: LlamaConfig, device=None):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias, device=device)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias, device=device)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias, device=device)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: LlamaConfig, index: int, device=None):
        super().__init__()
        self.self_attn = Attention(c, index, device)
        self.mlp = MLP(c, device)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, device)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, device)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def causal_mask(padding: torch.Tensor | None, past: int, T: int, device: torch.device) -> torch.Tensor | None:
    """A boolean (B, 1, T, past + T) mask, or None where plain causal attention is the same.
    ``padding`` (B, past + T) marks real positions with 1. A query that may see no key (a left
    pad's) sees all of them instead, as transformers does: its output is never used, but NaN
    from an empty softmax would reach the real positions through the next layer's values."""
    if padding is None or bool(padding.all()):
        if past == 0 or T == 1:
            return None
        padding = torch.ones(1, past + T, dtype=torch.bool, device=device)
    S = past + T
    causal = torch.arange(S, device=device)[None, :] <= (past + torch.arange(T, device=device))[:, None]
    mask = causal[None, None] & padding.bool()[:, None, None, :]
    return mask | ~mask.any(dim=-1, keepdim=True)


def rotary_frequencies(c: LlamaConfig) -> torch.Tensor:
    return 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64).float() / c.head_dim))


class LlamaModel(nn.Module):
    """The decoder stack (transformers' ``LlamaModel``): embeddings in, final normed states out."""

    def __init__(self, c: LlamaConfig, device=None):
        super().__init__()
        self.config = c
        # its weight given, so no random init (normal_ on the meta device imports torch._dynamo)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, _weight=torch.empty(c.vocab_size, c.hidden_size, device=device))
        self.layers = nn.ModuleList(DecoderLayer(c, i, device) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, device)
        self.register_buffer("inv_freq", rotary_frequencies(c), persistent=False)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | None = None, use_cache: bool = True, **_):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        cache = past_key_values if past_key_values is not None or not use_cache else KVCache(len(self.layers))
        past = 0 if cache is None else len(cache)
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device)[None].expand(B, -1)
        angles = position_ids.float()[..., None] * self.inv_freq.float()  # (B, T, head dim / 2), fp32 as transformers
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        mask = causal_mask(attention_mask, past, T, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        return SimpleNamespace(last_hidden_state=self.norm(x), past_key_values=cache)


class LlamaForCausalLM(nn.Module):
    """The stack and its output head, with the subset of transformers' interface chat calls."""

    def __init__(self, c: LlamaConfig, generation_config: SimpleNamespace | None = None, device=None):
        super().__init__()
        self.config = c
        self.generation_config = generation_config
        self.model = LlamaModel(c, device)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False, device=device)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def base_model(self) -> LlamaModel:
        return self.model

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.model.embed_tokens = module

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache: bool = True, logits_to_keep: int = 0, **_):
        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache)
        hidden = out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state
        return SimpleNamespace(logits=self.lm_head(hidden), past_key_values=out.past_key_values)

    @classmethod
    def from_pretrained(cls, directory: Path | str, dtype: torch.dtype = torch.float32) -> "LlamaForCausalLM":
        """From a transformers Llama directory. In its own dtype the weights stay views of the
        memory-mapped file (read on first use, and int8 quantization gives their pages back)."""
        from safetensors import SafetensorError, safe_open

        directory = Path(directory)
        raw = json.loads((directory / "config.json").read_text())
        try:
            config = LlamaConfig.from_dict(raw)
        except TypeError as exc:  # a required size missing
            raise CheckpointError(f"{directory / 'config.json'}: not a complete Llama config ({exc})") from None
        generation = {"eos_token_id": raw.get("eos_token_id")}  # as transformers derives it without the file
        if (directory / "generation_config.json").is_file():
            generation.update(json.loads((directory / "generation_config.json").read_text()))
        model = cls(config, SimpleNamespace(**generation), device="meta")  # no memory until the file's weights are put in
        path = directory / WEIGHTS_NAME
        try:
            with safe_open(str(path), framework="pt") as file:
                weights = {name: file.get_tensor(name).to(dtype) for name in file.keys()}
        except (SafetensorError, OSError) as exc:  # as anybind.persistence.load_model_dir catches
            raise CheckpointError(f"{path}: cannot read the LM's weights ({exc})") from None
        if config.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
            weights["lm_head.weight"] = weights.get("model.embed_tokens.weight")
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - weights.keys()), sorted(weights.keys() - expected)
        if missing or unexpected or weights["lm_head.weight"] is None:
            raise CheckpointError(f"{path}: not this config's Llama weights (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")
        model.load_state_dict(weights, strict=True, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.model.inv_freq = rotary_frequencies(config)  # built on the meta device with the rest
        return model.eval().requires_grad_(False)
