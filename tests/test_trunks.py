"""Pretrained trunks: towers that start from local transformers and timm checkpoints (built here,
tiny and random, with the real classes and save_pretrained), each way of training them, a
frozen CLIP space as the binding target, the feature cache, and export back to transformers.
Nothing comes from a hub (HF_HUB_OFFLINE=1)."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import anybind
from anybind.errors import AnybindError, CheckpointError
from anybind.models.feature_cache import FeatureCache
from anybind.models.space import Tower
from anybind.trunks import TrunkMode, TrunkReference
from conftest import run_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _clip_tokenizer(path: Path):
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=16)
    tokenizer.save_pretrained(path)
    return tokenizer


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Tiny random checkpoints of every kind a trunk reference names."""
    import timm
    from safetensors.torch import save_file
    from transformers import (ASTConfig, ASTFeatureExtractor, ASTModel, BertConfig, BertModel, CLIPConfig, CLIPImageProcessor,
                              CLIPModel, Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel,
                              Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model)

    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    pixels = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(root / "vit")
    pixels.save_pretrained(root / "vit")
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             mlp_ratio=2)).save_pretrained(root / "dinov2")
    pixels.save_pretrained(root / "dinov2")
    (root / "clip").mkdir()
    tokenizer = _clip_tokenizer(root / "clip")
    CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=24)).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8,
                       num_mel_bins=16, max_length=64, frequency_stride=8, time_stride=8)).save_pretrained(root / "ast")
    ASTFeatureExtractor(num_mel_bins=16, max_length=64).save_pretrained(root / "ast")
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                 num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
                                 do_stable_layer_norm=True)).save_pretrained(root / "wav2vec2")
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(root / "wav2vec2")
    BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(root / "bert")
    save_file(timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict(), str(root / "test_vit.safetensors"))
    (root / "half").mkdir()
    shutil.copy(root / "vit" / "config.json", root / "half" / "config.json")  # a copy that stopped before the weights
    return root


def _bind(world, out, *args, modality="image"):
    return run_cli("train", "bind", "--manifest", str(world), "--out", str(out), "--modality", modality, "--steps", "4",
                   "--batch-size", "16", *args)


def _bind_here(world, out, modality="image", embed_dim=128, **trunks):
    """The bind stage in this process (what `anybind train bind` runs, without a process's start-up):
    ``image="hf:..."`` gives a trunk, ``image_mode="frozen"`` its mode."""
    from anybind.training.bind import train_bind
    from anybind.training.settings import BindSettings

    settings = BindSettings(embed_dim=embed_dim, steps=4, batch_size=16, progress=False,
                            trunks={m: v for m, v in trunks.items() if not m.endswith("_mode")},
                            train_trunks={m[:-5]: v for m, v in trunks.items() if m.endswith("_mode")})
    return train_bind(world, out, [modality], settings)


def _trunk_state(bound: Path, modality: str) -> dict:
    return {k: v.clone() for k, v in Tower.from_pretrained(bound / modality).encoder.trunk.state_dict().items()}


@pytest.mark.parametrize("trunk, mode", [
    ("vit", "frozen"), ("dinov2", "last:1"), ("clip", "lora"), ("timm", "lora:4"),  # full: the export test
])
def test_an_image_trunk_binds_in_each_mode_and_loads_back(checkpoints, small_world, tmp_path, trunk, mode):
    reference = (f"timm:test_vit@{checkpoints / 'test_vit.safetensors'}" if trunk == "timm"
                 else f"hf:{checkpoints / trunk}")
    before = Tower.create("image", 16, {"trunk": reference, "train_trunk": mode}).encoder
    initial = {k: v.clone() for k, v in before.trunk.state_dict().items()}
    out = tmp_path / "bind"
    _bind_here(small_world, out, embed_dim=16, image=str(TrunkReference.parse(reference)), image_mode=mode)
    config = json.loads((out / "image" / "config.json").read_text())["encoder"]
    assert config["trunk"] == reference and config["train_trunk"] == mode
    assert config["image_size"] == (160 if trunk == "timm" else 32)  # the checkpoint's preprocessing
    saved = {k for k in load_file(str(out / "image" / "model.safetensors"))}
    after = _trunk_state(out, "image")
    changed = {k for k in initial if not torch.equal(initial[k], after[k])}
    if mode == "frozen":
        assert not changed and not any(k.startswith("encoder.") for k in saved)  # byte-identical, not saved again
    elif mode.startswith("lora"):
        assert changed and all("lora_" in k for k in changed)  # only the adapters trained
        assert {k for k in saved if k.startswith("encoder.")} == {f"encoder.trunk.{k}" for k in after if "lora_" in k}
    elif mode == "last:1":
        assert changed and all(re.search(r"\.layers?\.1\.", k) for k in changed)  # the last of its 2 blocks
    else:
        assert changed
    # loading rebuilds the trunk from its reference (in a new process for one mode) and embeds the same
    image = next((small_world / "image").glob("*.png"))
    here = anybind.load(out).embed([str(image)])[0]
    again = anybind.load(out).embed([str(image)])[0]
    assert torch.equal(here, again)
    if mode == "lora":
        there = json.loads(run_cli("embed", str(image), "--model", str(out), "--json", check=True).stdout)["embedding"]
        assert torch.allclose(here, torch.tensor(there), atol=1e-5)


@pytest.mark.parametrize("trunk, mode", [("ast", "frozen"), ("wav2vec2", "lora")])
def test_an_audio_trunk_binds_to_the_images(checkpoints, small_world, small_bound, tmp_path, trunk, mode):
    out = tmp_path / "bind"
    shutil.copytree(small_bound, out)
    shutil.rmtree(out / "audio", ignore_errors=True)
    _bind_here(small_world, out, modality="audio", audio=f"hf:{checkpoints / trunk}", audio_mode=mode)
    wav = next((small_world / "audio").rglob("*.wav"))
    vectors = anybind.load(out).embed([str(wav), "a handwritten seven"])
    assert vectors.shape == (2, 128) and torch.allclose(vectors.norm(dim=1), torch.ones(2))


def test_a_frozen_clip_space_is_the_binding_target(checkpoints, small_world, tmp_path, tiny_lm):
    from transformers import CLIPModel, CLIPTokenizer

    out = tmp_path / "bind"
    proc = run_cli("train", "bind", "--manifest", str(small_world), "--out", str(out), "--space", f"hf:{checkpoints / 'clip'}",
                   "--steps", "4", "--batch-size", "16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["embed_dim"] == 24
    clip, tokenizer = CLIPModel.from_pretrained(checkpoints / "clip"), CLIPTokenizer.from_pretrained(checkpoints / "clip")
    with torch.no_grad():
        theirs = clip.get_text_features(**tokenizer(["a handwritten seven"], return_tensors="pt", truncation=True, max_length=16))
    theirs = getattr(theirs, "pooler_output", theirs)
    ours = anybind.load(out).embed(["a handwritten seven"])[0]
    assert torch.allclose(ours, torch.nn.functional.normalize(theirs, dim=-1)[0], atol=1e-5)  # CLIP's own space
    # and a chat model reads it through a projector as it reads any bound model
    chat = tmp_path / "chat"
    run_cli("train", "align-in", "--manifest", str(small_world), "--bound", str(out), "--out", str(chat),
            "--backbone", f"hf:{tiny_lm}", "--steps", "3", "--batch-size", "4", check=True)
    wav = next((small_world / "audio").rglob("*.wav"))
    events = list(anybind.load(chat).generate("Which digit is spoken here?", attachments=[str(wav)], max_new_tokens=4))
    assert events[-1].type == "done" and events[-1].usage["prompt_tokens"] > 4


def test_video_can_read_each_frame_with_a_pretrained_image_trunk(checkpoints, every_world, tmp_path):
    out = tmp_path / "bind"
    world = every_world.path
    _bind_here(world, out, image=f"hf:{checkpoints / 'vit'}", image_mode="frozen")
    _bind_here(world, out, modality="video", video=f"hf:{checkpoints / 'vit'}", video_mode="frozen")
    config = json.loads((out / "video" / "config.json").read_text())["encoder"]
    assert config["trunk"] == f"hf:{checkpoints / 'vit'}" and config["train_trunk"] == "frozen"
    saved = load_file(str(out / "video" / "model.safetensors"))
    assert any(k.startswith("encoder.temporal.") for k in saved)  # its temporal layers trained and are saved,
    assert not any(k.startswith("encoder.trunk.") for k in saved)  # the image trunk is not saved again
    video = every_world.select(has=("video",))[0]["video"]
    assert anybind.load(out).embed([video]).shape == (1, 128)


def test_the_feature_cache_runs_a_frozen_trunk_once_per_file_and_notices_changes(checkpoints, small_world, tmp_path):
    from anybind_image.encoder import load_image

    tower = Tower.create("image", 16, {"trunk": f"hf:{checkpoints / 'vit'}", "train_trunk": "frozen"})
    files = sorted((small_world / "image").glob("*.png"))[:6]
    copies = [shutil.copy(f, tmp_path / f.name) for f in files]
    samples = [tower.encoder.preprocess(load_image(f)) for f in copies]
    cache = FeatureCache(tmp_path / "cache", tower.encoder)
    first = cache.pooled(copies, samples)
    assert (cache.hits, cache.misses) == (0, 6)
    again = FeatureCache(tmp_path / "cache", tower.encoder)
    assert torch.equal(again.pooled(copies, samples), first) and (again.hits, again.misses) == (6, 0)
    load_image(copies[0]).rotate(90).save(copies[0])  # a file changed: only it runs again
    changed = FeatureCache(tmp_path / "cache", tower.encoder)
    samples[0] = tower.encoder.preprocess(load_image(copies[0]))
    assert not torch.equal(changed.pooled(copies, samples)[0], first[0]) and (changed.hits, changed.misses) == (5, 1)
    other = Tower.create("image", 16, {"trunk": f"hf:{checkpoints / 'dinov2'}", "train_trunk": "frozen"})
    assert FeatureCache(tmp_path / "cache", other.encoder).folder != cache.folder  # another trunk: another key


def test_own_training_exports_to_transformers_and_binds_again_frozen(checkpoints, small_world, tmp_path):
    trained, exported, again = tmp_path / "full", tmp_path / "vit-ours", tmp_path / "again"
    _bind_here(small_world, trained, image=f"hf:{checkpoints / 'vit'}", image_mode="full")
    run_cli("export", "trunk", str(trained), "--modality", "image", "-o", str(exported), check=True)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in exported.iterdir()}
    _bind_here(small_world, again, image=f"hf:{exported}", image_mode="frozen")
    assert list((again / ".features").glob("*/features.safetensors"))  # its frozen outputs were cached
    exported_state, trained_state = _trunk_state(again, "image"), _trunk_state(trained, "image")
    assert exported_state.keys() == trained_state.keys()
    assert all(torch.equal(exported_state[k], trained_state[k]) for k in trained_state)


def test_a_bad_trunk_is_a_one_line_error_before_any_training(checkpoints, small_world, tmp_path):
    proc = _bind(small_world, tmp_path / "bind", "--trunk", f"image=hf:{checkpoints}/missing", "--train-trunk", "audio=lora")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "needs a pretrained trunk: --trunk audio=REF" in proc.stderr  # every option checked first
    assert not (tmp_path / "bind" / "image").exists()
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        Tower.create("image", 16, {"trunk": f"hf:{checkpoints}/missing"})


@pytest.mark.parametrize("modality, config, message", [
    ("image", {"trunk": "hf:{root}/bert"}, "reads no images"),
    ("image", {"trunk": "hf:{root}/half"}, "has no *.safetensors weights"),
    ("audio", {"trunk": "hf:{root}/vit"}, "reads no audio"),
    ("image", {"trunk": "timm:test_vit@{root}/vit/model.safetensors"}, "not weights of timm's 'test_vit'"),
    ("image", {"trunk": "timm:test_vit"}, "timm:NAME@FILE"),
    ("image", {"trunk": "ftp:x"}, "expected hf:PATH or timm:NAME@FILE"),
    ("image", {"trunk": "hf:{root}/vit", "train_trunk": "last:9"}, "more blocks than the trunk has"),
    ("image", {"trunk": "hf:{root}/vit", "train_trunk": "sometimes"}, "trunk mode 'sometimes'"),
])
def test_bad_checkpoints_are_errors_naming_them(checkpoints, modality, config, message):
    config = {k: v.format(root=checkpoints) for k, v in config.items()}
    with pytest.raises(AnybindError) as error:
        Tower.create(modality, 16, config)
    assert message in str(error.value)
    if config["trunk"].startswith("hf:") and "train_trunk" not in config:
        assert config["trunk"][3:] in str(error.value)  # names the directory


def test_a_plugin_without_pretrained_trunks_says_so():
    from anybind.training.bind import tower_config
    from anybind.training.settings import BindSettings

    with pytest.raises(AnybindError, match="cannot start its tower from a pretrained trunk"):
        tower_config("pointcloud", BindSettings(trunks={"pointcloud": "hf:/x"}))


def test_references_and_modes_parse():
    assert str(TrunkReference.parse("timm:vit_small_patch16_224@/w.safetensors")) == "timm:vit_small_patch16_224@/w.safetensors"
    assert TrunkMode.parse("lora") == TrunkMode("lora", rank=8) and str(TrunkMode.parse("last:2")) == "last:2"
    with pytest.raises(AnybindError):
        TrunkMode.parse("last:0")
    with pytest.raises(CheckpointError):
        Tower.create("image", 16, {"trunk": "hf:/nonexistent/dir"})
