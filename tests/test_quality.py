"""Quality beyond the sample split: the out-of-distribution world, the line-drawing image
normalisation (an option) that makes printed, photographed and chalkboard digits read like the
training ones, and the multi-turn evaluation's scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from anybind.data import read_manifest
from anybind.eval.conversations import BEHAVIOURS, Step, _score, evaluate_conversations
from conftest import run_cli


@pytest.fixture(scope="module")
def ood_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ood") / "world-ood"
    run_cli("world", "build", str(root), "--variant", "ood", "--small", check=True, timeout=600)
    return read_manifest(root)


def test_the_ood_world_is_held_out_and_made_differently(ood_world, every_world):
    assert {r["split"] for r in ood_world.rows} == {"test"}
    assert json.loads((ood_world.root / "world.json").read_text())["variant"] == "ood"
    assert ood_world.labels == every_world.labels and ood_world.question == every_world.question
    suffixes = {m: {Path(r[m]).suffix for r in ood_world.select(has=(m,))} for m in ood_world.modalities()}
    assert suffixes["image"] == {".jpg"} and len(suffixes["audio"]) >= 3 and len(suffixes["pointcloud"]) == 3
    voices = {r["meta"]["voice"].split("+")[1] for r in ood_world.select(has=("audio",))}
    trained = {r["meta"]["voice"].split("+")[1] for r in every_world.select("train", has=("audio",))}
    assert voices and not voices & trained  # voices the training world never spoke with
    rates = {r["meta"]["rate"] for r in ood_world.select(has=("audio",))}
    assert len(rates) >= 3


def test_the_font_families_for_training_and_for_the_ood_world_are_kept_apart():
    from anybind.data.printed import OOD_FAMILIES, TRAIN_FAMILIES, font_files

    train, ood = font_files(TRAIN_FAMILIES), font_files(OOD_FAMILIES)
    assert train and ood and not {p.name for p in train} & {p.name for p in ood}


def test_images_normalise_polarity_size_and_place(every_world):
    from anybind_image.encoder import ImageEncoder, ImageEncoderConfig

    encoder = ImageEncoder(ImageEncoderConfig(normalize="ink"))
    path = every_world.select(has=("image",))[0]["image"]
    image = Image.open(path).convert("RGB")
    base = encoder.preprocess(image)["pixels"]
    chalkboard = encoder.preprocess(ImageOps.invert(image))["pixels"]
    page = Image.new("RGB", (200, 160), (235, 228, 210))
    page.paste(image.resize((64, 64)), (120, 20))  # small, off-centre, on a tinted page
    placed = encoder.preprocess(page)["pixels"]
    assert float((base - chalkboard).abs().max()) < 0.05
    assert float((base - placed).abs().mean()) < 0.1
    assert float((base - encoder.preprocess(Image.new("RGB", (32, 32), "white"))["pixels"]).abs().mean()) > 0.1


def test_the_multi_turn_scoring_counts_what_each_behaviour_asks():
    from anybind.data.manifest import Manifest

    world = Manifest(Path("m.jsonl"), [], labels=["three", "seven"], aliases={"seven": ["7"]})

    class Judge:
        def predict(self, outputs):
            return outputs

    judge = Judge()
    assert _score(Step("q", behaviour="current", labels=("seven",)), "It is the digit 7.", [], judge, world)
    assert not _score(Step("q", behaviour="current", labels=("seven",)), "Three, then seven.", [], judge, world)
    assert _score(Step("q", behaviour="several", labels=("seven", "three")), "three and seven", [], judge, world)
    assert not _score(Step("q", behaviour="several", labels=("seven", "three")), "seven", [], judge, world)
    assert _score(Step("q", behaviour="plain"), "Bees make honey.", [], judge, world)
    assert not _score(Step("q", behaviour="plain"), "Bees make honey.", ["seven"], judge, world)
    assert not _score(Step("q", behaviour="plain"), "Seven is the digit 7.", [], judge, world)  # the old subject leaks
    assert not _score(Step("q", behaviour="plain"), "It has 7 legs.", [], judge, world)
    # a numeral inside a larger number is not the label (the LM's own "over 2,000 flowers")
    for number in ("over 7,000 types", "about 7/8 of them", "7.5 metres", "17 bees"):
        assert _score(Step("q", behaviour="plain"), f"Bees make {number}.", [], judge, world), number
    assert _score(Step("q", behaviour="refer_back_make", labels=("seven",)), "", ["seven"], judge, world)
    assert not _score(Step("q", behaviour="refer_back_make", labels=("seven",)), "", [], judge, world)
    assert _score(Step("q", behaviour="subject_change", labels=("three",)), "Three is odd.", ["three"], judge, world)
    assert not _score(Step("q", behaviour="subject_change", labels=("three",)), "Three is odd.", ["seven"], judge, world)


def test_the_multi_turn_evaluation_runs_every_behaviour(drawing_chat, small_world):
    import anybind
    from anybind.eval import output_judge

    model, world = anybind.load(drawing_chat), read_manifest(small_world)
    result = evaluate_conversations(model, world, conversations=3, max_new_tokens=8, per_modality=6,
                                    judge=output_judge(model, world))
    assert set(result["behaviours"]) == set(BEHAVIOURS)
    assert all(0.0 <= v <= 1.0 for v in result["behaviours"].values())
    assert result["n"]["current"] >= 3 and result["conversations"] == 3
    # every wrong answer kept when asked (a tiny model gets most wrong), each with the labels of the turns before it
    again = evaluate_conversations(model, world, conversations=3, max_new_tokens=8, per_modality=6,
                                   judge=output_judge(model, world), failures=100)
    wrong = sum(round((1 - v) * again["n"][b]) for b, v in again["behaviours"].items())
    assert wrong > 6 and len(again["failures"]) == wrong
    assert all(len(f["earlier"]) < 5 for f in again["failures"]) and any(f["earlier"] for f in again["failures"])
