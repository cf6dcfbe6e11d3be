"""A third-party modality, end to end: the worked example demos/third_party/anybind-strokes.

It is installed into this environment with ``anybind install -e`` (and uninstalled after),
adds its part of a tiny sample world, and is bound against an image tower that was
already trained. Nothing in core changes for it, and the towers already in the bound
directory stay byte-identical.
"""

import hashlib
import json
from pathlib import Path

import pytest

import anybind
from conftest import REPO, run_cli

# About a minute on 2 free cores (pip install, a tiny world, two short trainings).
pytestmark = pytest.mark.slow

STROKES = REPO / "demos" / "third_party" / "anybind-strokes"
CORE = Path(anybind.__file__).resolve().parent


def _hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (bytecode caches left out: Python rewrites them)."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def strokes_installed():
    assert "anybind-strokes" not in _plugin_names(), \
        "anybind-strokes is installed already (from docs/plugins.md?): run `anybind uninstall anybind-strokes` first"
    proc = run_cli("install", "-e", str(STROKES))
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield
    finally:
        proc = run_cli("uninstall", "anybind-strokes")
        assert proc.returncode == 0, proc.stderr[-3000:]


def _plugin_names() -> dict[str, dict]:
    return {p["name"]: p for p in json.loads(run_cli("plugins", "--json", check=True).stdout)}


@pytest.fixture(scope="module")
def bound_with_strokes(strokes_installed, tmp_path_factory):
    """A tiny world of images and strokes; the image tower first, then strokes into the same
    directory. Returns (world, bound dir, hashes before strokes, hashes after)."""
    root = tmp_path_factory.mktemp("third-party")
    world, bound = root / "world", root / "bind"
    run_cli("world", "build", str(world), "--modality", "image", "--modality", "strokes", "--limit", "400", "--small",
            check=True)
    run_cli("train", "bind", "--manifest", str(world), "--out", str(bound), "--modality", "image", "--steps", "60",
            "--batch-size", "64", check=True)
    others = [bound / "image", bound / "text"]
    before = _hashes(CORE, *others)
    run_cli("train", "bind", "--manifest", str(world), "--out", str(bound), "--modality", "strokes", "--steps", "120",
            check=True)
    return world, bound, before, _hashes(CORE, *others)


def test_the_example_plugin_is_listed(strokes_installed):
    info = _plugin_names()["anybind-strokes"]
    assert info["status"] == "ok", info["errors"]
    assert info["modalities"] == ["strokes"]


def test_it_writes_its_part_of_the_world(bound_with_strokes):
    world, _, _, _ = bound_with_strokes
    rows = [json.loads(line) for line in (world / "manifest.jsonl").read_text().splitlines()]
    paired = [r for r in rows if "strokes" in r]
    # one trace per digit (the 400 handwritten and the training split's printed ones), paired with its image
    assert len(paired) == len([r for r in rows if "image" in r]) >= 400 and all("image" in r for r in paired)
    lines = (world / paired[0]["strokes"]).read_text().splitlines()
    assert lines[0].startswith("#") and len(lines[1].split()) == 3


def test_binding_it_leaves_core_and_the_other_towers_byte_identical(bound_with_strokes):
    _, bound, before, after = bound_with_strokes
    assert any("/image/" in p for p in before) and any(p.endswith(".safetensors") for p in before)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"changed while strokes was bound (or edited meanwhile by someone else): {changed}"
    index = json.loads((bound / "config.json").read_text())
    assert index["modalities"] == ["image", "strokes", "text"]
    assert (bound / "strokes" / "model.safetensors").is_file()


def test_a_strokes_file_embeds_into_the_shared_space(bound_with_strokes):
    world, bound, _, _ = bound_with_strokes
    sample = run_cli("world", "sample", str(world), "--modality", "strokes", check=True).stdout.strip()
    out = json.loads(run_cli("embed", sample, "--model", str(bound), "--json", check=True).stdout)
    assert out["modality"] == "strokes" and out["dim"] == 128
    assert abs(sum(v * v for v in out["embedding"]) - 1) < 1e-4


def test_it_matches_text_and_retrieves_images_of_the_same_digit(bound_with_strokes):
    world, bound, _, _ = bound_with_strokes
    proc = run_cli("eval", "bind", "--model", str(bound), "--manifest", str(world), "--modality", "strokes", "--json",
                   check=True)
    result = json.loads(proc.stdout)["strokes"]
    assert result["emergent"] and result["n_test"] == 80
    # chance is 0.1; after 120 steps on 320 digits it is near 0.8 (0.9 on the full world)
    assert result["zero_shot_top1"] >= 0.5 and result["retrieval_r1"] >= 0.5, result
    query = run_cli("world", "sample", str(world), "--modality", "strokes", "--label", "seven", check=True).stdout.strip()
    proc = run_cli("retrieve", "--query", query, "--corpus", str(world), "--model", str(bound), "--modality", "image",
                   "-k", "10", "--json", check=True)
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    rows = [json.loads(line) for line in (world / "manifest.jsonl").read_text().splitlines()]
    labels = {r["image"]: r["label"] for r in rows if "image" in r}
    found = [labels[str(Path(h["path"]).relative_to(world.resolve()))] for h in hits]
    assert len(found) == 10 and all(h["modality"] == "image" for h in hits)
    assert found.count("seven") >= 6, found


def test_its_own_tests_pass(strokes_installed):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(STROKES)], cwd=STROKES,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout


def test_a_bound_model_outlives_an_uninstalled_plugin(bound_with_strokes):
    """After `anybind uninstall`, the model's other towers work; only a strokes input is an error,
    and loading says once which tower is unavailable and what brings it back. (Runs last: it
    uninstalls the plugin and installs it again for the fixture's own clean-up.)"""
    world, bound, _, _ = bound_with_strokes
    image = run_cli("world", "sample", str(world), "--modality", "image", check=True).stdout.strip()
    strokes = run_cli("world", "sample", str(world), "--modality", "strokes", check=True).stdout.strip()
    assert run_cli("uninstall", "anybind-strokes").returncode == 0
    try:
        proc = run_cli("embed", "a handwritten seven", image, "--model", str(bound), "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert [json.loads(line)["modality"] for line in proc.stdout.splitlines()] == ["text", "image"]
        assert proc.stderr.count("strokes tower is unavailable") == 1
        assert "anybind-strokes is not installed" in proc.stderr and str(bound / "strokes") in proc.stderr
        proc = run_cli("embed", strokes, "--model", str(bound))
        assert proc.returncode == 1 and strokes in proc.stderr and ".strokes files" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        assert run_cli("install", "-e", str(STROKES)).returncode == 0
