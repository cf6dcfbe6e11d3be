"""The built-in text modality: real all-MiniLM-L6-v2 embeddings, from Python and the CLI."""

import json

import pytest
import torch

import anybind
from conftest import run_cli


@pytest.fixture(scope="module")
def text_model():
    return anybind.load()


def test_text_embeddings_are_real_minilm_sentence_vectors(text_model):
    vectors = text_model.embed(["a handwritten seven", "the digit 7", "a recipe for lemon cake"])
    assert vectors.shape == (3, 384)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # meaning, not noise


def test_batching_does_not_change_results(text_model):
    texts = ["one", "a much longer sentence about handwritten digits", "three"]
    together = text_model.embed(texts)
    alone = torch.cat([text_model.embed([t]) for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)


def test_cli_embed_prints_a_384_d_vector():
    proc = run_cli("embed", "a handwritten seven", "--json", check=True)
    row = json.loads(proc.stdout)
    assert row["modality"] == "text" and row["dim"] == 384 and len(row["embedding"]) == 384
    assert abs(sum(v * v for v in row["embedding"]) - 1) < 1e-4

    proc = run_cli("embed", "a handwritten seven", check=True)
    header, numbers = proc.stdout.strip().splitlines()
    assert header == "a handwritten seven  [text, 384-d]"
    assert len(numbers.split()) == 384


def test_cli_embed_missing_file_is_a_clear_error(tmp_path):
    proc = run_cli("embed", str(tmp_path / "missing.png"))
    assert proc.returncode == 1
    assert f"{tmp_path / 'missing.png'}: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr
