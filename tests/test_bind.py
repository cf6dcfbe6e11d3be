"""The sample world's image part and the bind stage, end to end at a tiny size."""

import json

import pytest

import anybind
from anybind.errors import InputError
from anybind.eval import evaluate_bind
from anybind.data import read_manifest
from anybind_image.encoder import load_image
from conftest import run_cli


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    run_cli("world", "build", str(root), "--modality", "image", "--limit", "400", check=True)
    return root


@pytest.fixture(scope="module")
def bound(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("bind") / "model"
    run_cli("train", "bind", "--manifest", str(world), "--out", str(out), "--steps", "60", "--batch-size", "64", check=True)
    return out


def test_world_manifest_pairs_images_with_captions_and_labels(world):
    manifest = read_manifest(world)
    assert manifest.prompt == "a handwritten {label}" and len(manifest.labels) == 10
    rows = manifest.select(has=("image",))
    assert len(rows) == len(manifest.rows) >= 390
    assert {r["split"] for r in rows} == {"train", "test"}
    seven = next(r for r in rows if r["label"] == "seven")
    assert "seven" in seven["text"] or "7" in seven["text"]
    img = load_image(seven["image"])
    assert img.size == (32, 32) and img.mode == "RGB"


def test_bind_trains_image_against_text_and_beats_chance(world, bound):
    index = json.loads((bound / "config.json").read_text())
    assert index["format"] == "anybind.bound" and index["modalities"] == ["image", "text"]
    assert sorted(p.name for p in (bound / "image").iterdir()) == ["config.json", "model.safetensors", "training.json"]
    assert sorted(p.name for p in (bound / "text").iterdir()) == ["config.json", "model.safetensors"]  # head only
    lines = [json.loads(l) for l in (bound / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 60 and lines[-1]["loss"] < lines[0]["loss"]
    results = evaluate_bind(anybind.load(bound), world)
    assert results["image"]["zero_shot_top1"] > 0.5  # chance is 0.1
    assert 0 < results["image"]["linear_probe"] <= 1


def test_the_world_says_how_its_images_read_and_the_tower_keeps_it(world, bound):
    from PIL import ImageOps

    assert read_manifest(world).encoders["image"]["normalize"] == "ink"
    encoder = anybind.load(bound).towers["image"].encoder
    assert encoder.config.normalize == "ink"
    # read as line drawings: the same digit as chalk on a board reads as on paper
    paper = load_image(next(r["image"] for r in read_manifest(world).select("test", has=("image",))))
    paper_pixels, chalk_pixels = (encoder.preprocess(x)["pixels"] for x in (paper, ImageOps.invert(paper)))
    assert (paper_pixels - chalk_pixels).abs().max() < 5 / 255  # a few grey levels of rounding in 8-bit pixels


def test_an_encoder_setting_the_plugin_lacks_is_refused_naming_world_json(world, tmp_path):
    from anybind.training.bind import tower_config
    from anybind.training.settings import BindSettings

    manifest = read_manifest(world)
    manifest.encoders = {"image": {"normalise": "ink"}}
    with pytest.raises(InputError, match=r"world\.json.*encoders\.image.*'normalise'"):
        tower_config("image", BindSettings(), manifest)


def test_a_trained_modality_is_not_retrained(world, bound):
    before = (bound / "image" / "model.safetensors").read_bytes()
    proc = run_cli("train", "bind", "--manifest", str(world), "--out", str(bound), "--steps", "60", check=True)
    assert "already trained" in proc.stderr or "already trained" in proc.stdout
    assert (bound / "image" / "model.safetensors").read_bytes() == before


def test_embed_and_retrieve_with_the_bound_model(world, bound):
    model = anybind.load(bound)
    manifest = read_manifest(world)
    sevens = [r["image"] for r in manifest.select("test", has=("image",)) if r["label"] == "seven"][:2]
    vectors = model.embed([*sevens, "a handwritten seven"])
    assert vectors.shape == (3, 128)
    proc = run_cli("retrieve", "--query", "a handwritten seven", "--corpus", str(world), "--model", str(bound), "-k", "5", "--json", check=True)
    hits = [json.loads(l) for l in proc.stdout.splitlines()]
    assert len(hits) == 5 and all(h["modality"] == "image" for h in hits)
    labels = {r["image"]: r["label"] for r in manifest.rows}
    assert sum(labels[h["path"]] == "seven" for h in hits) >= 3


def test_bad_rows_are_skipped_and_reported_or_stop_the_run(world, tmp_path):
    rows = [json.loads(l) for l in (world / "manifest.jsonl").read_text().splitlines()][:80]
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows[0]["image"] = str(tmp_path / "corrupt.png")
    rows[1]["image"] = str(tmp_path / "missing.png")
    for r in rows[2:]:
        r["image"] = str(world / r["image"])
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = tmp_path / "bind"
    proc = run_cli("train", "bind", "--manifest", str(manifest), "--out", str(out), "--steps", "3", "--on-bad-row", "stop")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "corrupt.png: corrupt or truncated image" in proc.stderr or "corrupt.png: not an image" in proc.stderr
    assert not (out / "image").exists()

    proc = run_cli("train", "bind", "--manifest", str(manifest), "--out", str(out), "--steps", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = [json.loads(l) for l in (out / "bad_rows.jsonl").read_text().splitlines()]
    assert {b["file"].rsplit("/", 1)[1] for b in bad} == {"corrupt.png", "missing.png"}
    assert bad[0]["manifest_row"] == f"{manifest}:1"


@pytest.mark.parametrize(
    "content, problem",
    [(b"", "empty image file"), (b"hello, not an image", "not an image Pillow can read"), (b"\x89PNG\r\n\x1a\n\x00\x00", "")],
)
def test_unreadable_images_name_the_file(tmp_path, content, problem):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"x\.png: .*{problem}"):
        load_image(path)
    proc = run_cli("embed", str(path))
    assert proc.returncode == 1 and str(path) in proc.stderr and "Traceback" not in proc.stderr


def test_manifest_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"image": "a.png", "split": "train"}\n{oops\n')
    with pytest.raises(InputError, match=r"m\.jsonl:2: invalid JSON"):
        read_manifest(bad)
    bad.write_text('{"image": "a.png", "split": "validation"}\n')
    with pytest.raises(InputError, match=r"m\.jsonl:1: split must be one of train, test"):
        read_manifest(bad)


def test_an_interrupted_bind_resumes_from_its_last_checkpoint(world, tmp_path, monkeypatch):
    from anybind.training.bind import BindSettings, train_bind
    from anybind.models.losses import BindLoss

    calls = {"n": 0}
    real_forward = BindLoss.forward

    def interrupted_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(BindLoss, "forward", interrupted_forward)
    settings = BindSettings(steps=20, batch_size=32, save_every=10, progress=False)
    out = tmp_path / "bind"
    with pytest.raises(KeyboardInterrupt):
        train_bind(world, out, ["image"], settings)
    progress = out / ".progress" / "image"
    assert json.loads((progress / "state.json").read_text()) == {"step": 10}
    assert not (out / "image").exists()  # nothing half-trained is presented as a model

    monkeypatch.setattr(BindLoss, "forward", real_forward)
    train_bind(world, out, ["image"], settings)
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines() if "step" in l]
    assert steps[-1] == 20 and 11 in steps  # logged again from step 11, not from 1
    assert steps.count(1) == 1
    assert not progress.exists() and (out / "image" / "training.json").is_file()
