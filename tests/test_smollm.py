"""The real SmolLM2-135M-Instruct backbone: GGUF -> cached safetensors once, then chat on it."""

import time

import pytest

from anybind.chat import ChatModel
from anybind.models.backbone import load_backbone
from anybind.models.space import AnybindModel

pytestmark = pytest.mark.slow


def test_smollm2_converts_once_then_loads_fast_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYBIND_HOME", str(tmp_path))
    backbone = load_backbone("smollm2")  # reads the GGUF (tens of seconds)
    cached = tmp_path / "backbones" / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in cached.iterdir()}
    assert not list(tmp_path.glob("backbones/*.partial-*"))
    assert backbone.hidden_size == 576 and backbone.model.config.num_hidden_layers == 30

    began = time.time()
    again = load_backbone("smollm2")
    assert time.time() - began < 5  # from the safetensors cache (about 0.3 s when nothing else runs)
    model = ChatModel(AnybindModel({}), again, {})
    events = list(model.generate("What is 2+3? Answer with the number only.", max_new_tokens=12))
    assert events[-1].type == "done" and events[-1].reason == "stop"
    assert "5" in events[-1].text
