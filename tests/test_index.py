"""The retrieval index: built once, searched without re-embedding, added to, resumed, and
refused when its model changed. Real FAISS, the small world's bound model."""

import json
import shutil

import numpy as np
import pytest

import anybind
from anybind.data import read_manifest
from anybind.errors import AnybindError
from anybind.index import Index, StaleIndex, add_to_index, build_index, make_faiss_index, model_fingerprint
from anybind.retrieval import retrieve
from conftest import run_cli


@pytest.fixture(scope="module")
def image_folder(small_world, tmp_path_factory):
    """Two folders of the small world's test images (the second added to the index later)."""
    manifest = read_manifest(small_world)
    rows = [r for r in manifest.rows if "image" in r and "label" in r]
    first, second = tmp_path_factory.mktemp("corpus-a"), tmp_path_factory.mktemp("corpus-b")
    labels = {}
    for i, row in enumerate(rows[:60]):
        target = (first if i < 40 else second) / f"{i:03d}-{row['label']}.png"
        shutil.copy(row["image"], target)
        labels[str(target)] = row["label"]
    return first, second, labels


def test_an_index_answers_as_embedding_the_corpus_does(small_bound, image_folder, tmp_path):
    first, second, labels = image_folder
    model = anybind.load(small_bound)
    index = build_index(model, first, tmp_path / "index", progress=False)
    assert len(index) == 40 and index.meta["kind"] == "flat" and index.meta["modalities"] == ["image"]
    query = model.embed(["a handwritten seven"])[0].numpy()
    from_index = Index.load(tmp_path / "index").search(query, top_k=5)
    direct = retrieve(model, "a handwritten seven", first, top_k=5)
    assert [p for _, _, p in from_index] == [p for _, _, p in direct]
    assert np.allclose([s for s, _, _ in from_index], [s for s, _, _ in direct], atol=1e-5)
    # The command line: QUERY positional, -q still works, the same answers.
    for args in (["a handwritten seven"], ["-q", "a handwritten seven"]):
        proc = run_cli("retrieve", *args, "--index", str(tmp_path / "index"), "--model", str(small_bound), "-k", "5",
                       "--json", check=True)
        assert [json.loads(l)["path"] for l in proc.stdout.splitlines()] == [p for _, _, p in direct]


def test_add_embeds_only_new_files(small_bound, image_folder, tmp_path):
    first, second, labels = image_folder
    model = anybind.load(small_bound)
    build_index(model, first, tmp_path / "index", progress=False)
    index, added = add_to_index(model, tmp_path / "index", [first, second], progress=False)
    assert added == 20 and len(index) == 60
    index, added = add_to_index(model, tmp_path / "index", [second], progress=False)
    assert added == 0 and len(Index.load(tmp_path / "index")) == 60
    found = Index.load(tmp_path / "index").search(model.embed(["a handwritten seven"])[0].numpy(), 60)
    assert {p for _, _, p in found} == set(labels)  # every file once


def test_a_stopped_build_resumes_from_its_chunks(small_bound, image_folder, tmp_path, monkeypatch):
    import anybind.index as index_module

    first, _, _ = image_folder
    model = anybind.load(small_bound)
    monkeypatch.setattr(index_module, "CHUNK", 16)

    def stop_before_writing(*args, **kwargs):  # the build dies after embedding, before the index is written
        raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "make_faiss_index", stop_before_writing)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, first, tmp_path / "index", progress=False)
    chunks = sorted((tmp_path / "index" / ".partial").glob("*.safetensors"))
    assert len(chunks) == 3 and not (tmp_path / "index" / "index.json").exists()
    monkeypatch.undo()
    monkeypatch.setattr(index_module, "CHUNK", 16)
    embedded = []
    import anybind.models.space as space

    real_embed = space.embed_rows
    monkeypatch.setattr(space, "embed_rows", lambda *a, **k: embedded.append(1) or real_embed(*a, **k))
    index = build_index(model, first, tmp_path / "index", progress=False)
    assert embedded == [] and len(index) == 40  # every chunk came from the first run
    assert not (tmp_path / "index" / ".partial").exists()


def test_a_changed_model_is_reported_stale(small_bound, small_world, image_folder, tmp_path):
    first, _, _ = image_folder
    build_index(anybind.load(small_bound), first, tmp_path / "index", progress=False)
    other = tmp_path / "other-bind"
    shutil.copytree(small_bound, other)
    run_cli("train", "bind", "--manifest", str(small_world), "--out", str(other), "--modality", "image", "--steps", "3",
            "--retrain", "--seed", "1", check=True)
    with pytest.raises(StaleIndex, match="another model"):
        Index.load(tmp_path / "index").check_model(anybind.load(other))
    proc = run_cli("retrieve", "seven", "--index", str(tmp_path / "index"), "--model", str(other))
    assert proc.returncode != 0 and "another model" in proc.stderr and "anybind index build" in proc.stderr


def test_bad_indexes_and_arguments_are_clear_errors(small_bound, image_folder, tmp_path):
    first, _, _ = image_folder
    proc = run_cli("retrieve", "seven", "--index", str(tmp_path), "--model", str(small_bound))
    assert proc.returncode != 0 and "not an anybind index" in proc.stderr
    proc = run_cli("retrieve", "seven", "--model", str(small_bound))
    assert proc.returncode == 2 and "--index" in proc.stderr
    proc = run_cli("retrieve", "seven", "-q", "eight", "--index", str(tmp_path), "--model", str(small_bound))
    assert proc.returncode == 2 and "once" in proc.stderr
    build_index(anybind.load(small_bound), first, tmp_path / "index", progress=False)
    with pytest.raises(AnybindError, match="already there"):
        build_index(anybind.load(small_bound), first, tmp_path / "index", progress=False)
    (tmp_path / "index" / "faiss.index").write_bytes(b"not faiss")
    proc = run_cli("retrieve", "seven", "--index", str(tmp_path / "index"), "--model", str(small_bound))
    assert proc.returncode != 0 and "damaged" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_every_kind_finds_the_exact_neighbours_of_a_small_set(kind):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, chosen = make_faiss_index(vectors, kind)
    assert chosen == kind
    queries = vectors[:50] + 0.01 * rng.normal(size=(50, 32)).astype(np.float32)
    _, ids = index.search(queries, 1)
    assert (ids[:, 0] == np.arange(50)).mean() >= (1.0 if kind == "flat" else 0.9)
    assert make_faiss_index(vectors[:10])[1] == "flat"


def test_the_fingerprint_covers_every_tower_without_loading_them(small_bound):
    """A query loads only its own tower, yet is checked against the whole model the index was built with."""
    text_only = anybind.load(small_bound, modalities=["text"])
    assert list(text_only.towers) == ["text"]
    assert model_fingerprint(text_only) == model_fingerprint(anybind.load(small_bound))
    assert model_fingerprint(anybind.load(small_bound)) != model_fingerprint(anybind.AnybindModel(dict(text_only.towers)))
