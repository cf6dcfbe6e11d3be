"""Tests of the worked example. Run with: python -m pytest demos/third_party/anybind-strokes
(after anybind install -e demos/third_party/anybind-strokes)."""

import numpy as np
import pytest
import torch

from anybind import AnybindModel, Tower
from anybind.errors import InputError
from anybind.data.world import load_digits
from anybind_strokes.trace import load_strokes, trace, write_strokes


@pytest.fixture(scope="module")
def digits():
    return load_digits(limit=50)


def test_a_trace_draws_the_digit_with_the_pen_mostly_down(digits):
    steps = trace(digits.images[0], np.random.default_rng(0))
    assert steps.ndim == 2 and steps.shape[1] == 3 and len(steps) > 20
    assert steps[0, 2] == 0 and 0.6 < steps[:, 2].mean() < 1  # starts lifted; a few lifts across gaps
    position = np.cumsum(steps[:, :2], axis=0)
    assert 0.3 < np.ptp(position[:, 1]) < 1.2  # spans the height of the glyph (1 = the 8x8 frame)
    assert np.abs(steps[steps[:, 2] == 1, :2]).max() < 0.1  # pen-down steps join neighbouring ink pixels


@pytest.mark.filterwarnings("ignore::UserWarning")  # numpy warns on the empty file before we raise
def test_the_format_round_trips_and_bad_files_name_themselves(tmp_path, digits):
    steps = trace(digits.images[3], np.random.default_rng(1))
    write_strokes(tmp_path / "a.strokes", steps)
    np.testing.assert_allclose(load_strokes(tmp_path / "a.strokes"), steps, atol=1e-4)
    for text, problem in (("0 0 1\n1 x 1\n", "not a .strokes file"), ("0 0 1\n1 1 2\n", "pen 0 or 1"),
                          ("0 0 1 1\n1 1 1 1\n", "'dx dy pen'"), ("# nothing\n", "'dx dy pen'")):
        (tmp_path / "bad.strokes").write_text(text)
        with pytest.raises(InputError, match=problem) as excinfo:
            load_strokes(tmp_path / "bad.strokes")
        assert str(tmp_path / "bad.strokes") in str(excinfo.value)


def test_files_embed_by_suffix_the_same_every_time(tmp_path, digits):
    for i in range(2):
        write_strokes(tmp_path / f"{i}.strokes", trace(digits.images[i], np.random.default_rng(i)))
    model = AnybindModel({"strokes": Tower.create("strokes", embed_dim=32)})
    paths = [tmp_path / "0.strokes", tmp_path / "1.strokes", tmp_path / "0.strokes"]
    vectors = model.embed(paths)
    assert vectors.shape == (3, 32)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(vectors[0], vectors[2]) and not torch.allclose(vectors[0], vectors[1])
