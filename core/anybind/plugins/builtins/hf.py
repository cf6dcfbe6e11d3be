"""The built-in ``hf:PATH`` backbone: any local Hugging Face causal-LM directory."""

from __future__ import annotations

import anybind
from anybind.specs import BackboneSpec


@anybind.hookimpl
def register_backbones(register):
    register(
        BackboneSpec(
            name="hf",
            prefix="hf",
            factory="anybind.models.backbone:load_hf_causal_lm",
            description="hf:PATH - a local Hugging Face causal LM with its own tokenizer and chat template",
        )
    )
