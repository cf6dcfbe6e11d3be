"""Every installed modality and decoder honours the plugin contract (timm-style: parametrized over
the registry, so a plugin is tested by these tests the moment it is installed).

A modality: its loader reads a real file of the sample world, ``preprocess`` -> ``collate`` ->
``forward`` give tokens of the declared width, ``augment`` keeps the batch's shape, the tower
embeds into the shared space and round-trips through ``save_pretrained``/``from_pretrained``,
and a corrupt file is an :class:`InputError` that names it. A decoder: its prompts fill with a
world's words, its judge is a :class:`Judge`, and a checkpoint that is not there is an error
naming the path.
"""

from __future__ import annotations

import pytest
import torch

from anybind import plugins
from anybind.data import read_manifest
from anybind.data.prompts import OutputPrompts
from anybind.errors import AnybindError, InputError
from anybind.eval.judge import Judge
from anybind.models.decoders import load_decoder
from anybind.models.space import Tower
from anybind.specs import resolve

MODALITIES = sorted(plugins.modalities())
DECODERS = sorted(plugins.decoders())


def _raw_sample(modality: str, world, tmp_path):
    spec = plugins.get_modality(modality)
    rows = world.select(has=(modality,)) if modality in world.modalities() else []
    if rows:
        return spec.load(rows[0][modality])
    path = tmp_path / f"sample{spec.suffixes[0]}"  # a modality without world files (text): a file of its own
    path.write_text("a handwritten seven", encoding="utf-8")
    return spec.load(path)


@pytest.mark.parametrize("modality", MODALITIES)
def test_a_modality_loads_tokenizes_encodes_and_round_trips(modality, every_world, tmp_path):
    torch.manual_seed(0)
    tower = Tower.create(modality, embed_dim=16)
    encoder = tower.encoder
    raw = _raw_sample(modality, every_world, tmp_path)
    batch = encoder.collate([encoder.preprocess(raw), encoder.preprocess(raw)])
    tower.eval()
    with torch.no_grad():
        out = encoder(**batch)
        assert out.tokens.ndim == 3 and out.tokens.shape[0] == 2 and out.tokens.shape[-1] == encoder.width
        assert out.mask is None or out.mask.shape == out.tokens.shape[:2]
        embedded = tower(**batch)
    assert embedded.shape == (2, 16) and torch.allclose(embedded.norm(dim=-1), torch.ones(2), atol=1e-5)
    augmented = encoder.augment({k: v.clone() for k, v in batch.items()})  # may drop tokens, keeps the batch
    assert augmented.keys() == batch.keys() and all(len(v) == 2 for v in augmented.values())
    with torch.no_grad():
        assert tower(**augmented).shape == (2, 16)
    tower.save_pretrained(tmp_path / modality)
    again = Tower.from_pretrained(tmp_path / modality).eval()
    with torch.no_grad():
        assert torch.allclose(again(**batch), embedded, atol=1e-6)


@pytest.mark.parametrize("modality", MODALITIES)
def test_a_corrupt_file_names_itself(modality, tmp_path):
    spec = plugins.get_modality(modality)
    path = tmp_path / f"corrupt{spec.suffixes[0]}"
    path.write_bytes(b"\xff\xfe\x00garbage\x81" * 3)
    with pytest.raises(InputError) as failure:
        spec.load(path)
    assert str(path) in str(failure.value)


@pytest.mark.parametrize("name", DECODERS)
def test_a_decoder_says_how_to_ask_for_its_outputs_and_how_to_judge_them(name, small_world):
    spec = plugins.get_decoder(name)
    assert spec.modality and spec.token.isupper()
    prompts = spec.output_prompts()
    assert isinstance(prompts, OutputPrompts)
    fill = read_manifest(small_world).fill("seven")
    for field in ("request", "write_and", "follow", "ask_made", "eval_request", "eval_write_and"):
        templates = getattr(prompts, field)
        assert templates and all(t.format(**fill) for t in templates), field
    assert spec.judge is None or issubclass(resolve(spec.judge), Judge)


@pytest.mark.parametrize("name", DECODERS)
def test_a_missing_decoder_checkpoint_names_the_path(name, tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(AnybindError, match="no-such-checkpoint"):
        load_decoder(f"{name}:{missing}")
