"""Model directories: config.json + model.safetensors, atomic, never pickle."""

import json

import pytest
import torch

from anybind.errors import CheckpointError
from anybind.persistence import load_model_dir, save_model_dir


def test_round_trip(tmp_path):
    state = {"w": torch.randn(3, 4), "b": torch.zeros(4)}
    save_model_dir(tmp_path / "m", {"kind": "test", "size": 4}, state)
    config, loaded = load_model_dir(tmp_path / "m")
    assert config == {"kind": "test", "size": 4}
    assert torch.equal(loaded["w"], state["w"])
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_shared_and_strided_tensors_are_saved(tmp_path):
    base = torch.randn(4, 4)
    save_model_dir(tmp_path / "m", {}, {"a": base, "b": base, "t": base.T})
    _, loaded = load_model_dir(tmp_path / "m")
    assert torch.equal(loaded["t"], base.T)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    save_model_dir(tmp_path / "m", {"version": 1}, {"w": torch.ones(2)})
    with pytest.raises(AttributeError):
        save_model_dir(tmp_path / "m", {"version": 2}, {"w": "not a tensor"})
    config, state = load_model_dir(tmp_path / "m")
    assert config == {"version": 1} and torch.equal(state["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary leftovers


def test_bad_directories_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a model directory"):
        load_model_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_model_dir(tmp_path / "empty")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_model_dir(tmp_path / "badjson")
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "config.json").write_text(json.dumps({}))
    (tmp_path / "pickle" / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_model_dir(tmp_path / "pickle")
