"""The quickstart's background decoder: it trains beside the other stages, on one core."""

from __future__ import annotations

import json

import pytest
import torch

from anybind.errors import AnybindError
from anybind.layout import CHAT_FORMAT
from anybind.quickstart import Quickstart, stages
from anybind.training.trainer import STEP_HOOKS
from conftest import TINY_AUDIOGEN, TINY_DECODER


def _quickstart(tmp_path, small_world, options) -> Quickstart:
    out = tmp_path / "quickstart"
    out.mkdir()
    (out / "world").symlink_to(small_world)
    return Quickstart(out, progress=False, background_decoder=True,
                      decoder_options={"sd": tuple(options), "audiogen": tuple(TINY_AUDIOGEN)})


def test_the_decoders_train_in_the_background_and_give_their_core_back(small_world, tmp_path):
    q = _quickstart(tmp_path, small_world, TINY_DECODER)
    threads = torch.get_num_threads()
    ran, note = stages.decoder(q)  # the main output's (images): on the first answer's path
    job = q.jobs["decoder"]
    assert ran is None and "background" in note and "sd" in note and "audiogen" not in note
    assert str(q.run.log("decoder")) in note
    assert torch.get_num_threads() == max(1, threads - 1)  # the stages meanwhile leave it a core
    assert job.poll in STEP_HOOKS
    stages.join_decoder(q)
    assert torch.get_num_threads() == threads and job.poll not in STEP_HOOKS and "decoder" not in q.jobs
    assert (q.run.decoder / "anybind.json").is_file() and (q.run.decoder / "unet" / "config.json").is_file()
    speech = q.run.decoder_of("audio")
    assert speech.name == "decoder-audio" and not speech.exists()  # after the first answer, not beside it
    stage = q.record["stages"]["decoder"]
    assert stage["ran"] and stage["seconds"] > 0 and "background" in stage["note"]
    assert stages.decoder(q) == (False, "already trained")
    ran, note = stages.further_decoders(q)
    assert ran is None and "audiogen" in note and str(q.run.log("further-decoders")) in note
    stages.join_decoder(q, speech / "prompts.json", "further decoders")  # what align-out waits for
    assert (speech / "prompts.json").is_file()
    stages.join_decoder(q, job_name="further decoders")
    assert (speech / "anybind.json").is_file() and torch.get_num_threads() == threads
    assert q.record["stages"]["further decoders"]["seconds"] > 0
    assert stages.further_decoders(q) == (False, "already trained")


def test_a_failed_background_decoder_stops_the_quickstart_with_its_log(small_world, tmp_path):
    q = _quickstart(tmp_path, small_world, [*TINY_DECODER, "--set", "no_such_setting=1"])
    threads = torch.get_num_threads()
    stages.decoder(q)
    job = q.jobs["decoder"]
    with pytest.raises(AnybindError, match="decoder training failed") as failure:
        stages.join_decoder(q)
    assert "no_such_setting" in str(failure.value) and str(q.run.log("decoder")) in str(failure.value)
    assert torch.get_num_threads() == threads and job.poll not in STEP_HOOKS
    assert not (q.run.decoder / "anybind.json").exists()


def test_an_interrupted_quickstart_stops_its_background_decoder(small_world, tmp_path):
    q = _quickstart(tmp_path, small_world, [*TINY_DECODER, "--steps", "100000"])
    stages.decoder(q)
    job = q.jobs["decoder"]
    job.stop()
    assert job.process.poll() is not None and job.poll not in STEP_HOOKS
    json.dumps(q.record)  # nothing unserialisable was left in the record


def test_the_backbone_loads_in_the_background_unless_align_in_is_done(tmp_path, tiny_lm):
    q = Quickstart(tmp_path / "quickstart", backbone=f"hf:{tiny_lm}", progress=False)
    stages.warm_backbone(q)
    job = q.jobs["backbone"]
    assert job.process.wait() == 0
    # A backbone that cannot load: align-in's own load reports it; the warm-up only logs it.
    broken = Quickstart(tmp_path / "broken", backbone="no-such-backbone", progress=False)
    stages.warm_backbone(broken)
    assert broken.jobs["backbone"].process.wait() != 0
    assert "no-such-backbone" in broken.run.log("backbone").read_text()
    q.jobs.clear()
    done = q.run.chat / "projectors" / "image" / "training.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    stages.warm_backbone(q)
    assert "backbone" not in q.jobs  # align-in is done: nothing to load ahead


def test_showing_the_demo_again_keeps_the_evaluation(tmp_path):
    q = Quickstart(tmp_path / "quickstart", progress=False)
    q.run.root.mkdir()
    for name in ("demo", "whole demo", "eval"):  # a second run: nothing trained, the eval still stands
        q._note(name, True, 1.0, "")
    assert "trained_this_run" not in q.record
    q._note("instruct", True, 1.0, "")
    assert q.record["trained_this_run"]


def _chat_making(q, outputs: dict) -> None:
    q.run.chat.mkdir(parents=True)
    (q.run.chat / "config.json").write_text(json.dumps({"format": CHAT_FORMAT, "outputs": outputs}))


def test_a_resumed_run_shows_the_demo_once_every_decoder_it_needs_is_trained(tmp_path):
    q = Quickstart(tmp_path / "quickstart", progress=False)
    _chat_making(q, {"image": "image_output", "audio": "audio_output"})
    q.run.decoder.mkdir()
    (q.run.decoder / "anybind.json").write_text("{}")
    speech = q.run.decoder_of("audio")
    speech.mkdir()
    (speech / "prompts.json").write_text("{}")  # aligned against it, but its training was stopped
    ran, note = stages.demo(q)
    assert ran is False and note == "the audio decoder is still to train: the whole demo comes after it"
    q.shown = {"image", "audio"}  # had the first demo been the full model's, the whole demo would only repeat it
    assert stages.whole_demo(q) == (False, "the demo above showed the full model")


def test_the_first_answer_binds_only_the_towers_its_demo_reads(every_world, tmp_path):
    q = Quickstart(tmp_path / "quickstart", progress=False)
    q.run.root.mkdir()
    (q.run.root / "world").symlink_to(every_world.root)
    assert {"image", "audio", "pointcloud", "video"} <= set(every_world.modalities())
    assert stages.first_modalities(q) == ["image", "audio"]  # the binding modality, and what the demo attaches
    names = [name for name, _ in stages.STAGES]
    assert names.index("bind") < names.index("first align-in") < names.index("first instruct") < names.index("demo")
    assert names.index("demo") < names.index("further bind") < names.index("align-in") < names.index("instruct")


def test_a_resumed_run_trains_no_first_model_once_the_full_one_is_trained(tmp_path):
    q = Quickstart(tmp_path / "quickstart", progress=False)
    assert stages.first_model_wanted(q)  # nothing trained yet
    _chat_making(q, {})
    assert stages.first_model_wanted(q)  # aligned, not instructed
    config = json.loads((q.run.chat / "config.json").read_text())
    (q.run.chat / "config.json").write_text(json.dumps({**config, "instruct": "instruct"}))
    (q.run.chat / "instruct").mkdir()
    (q.run.chat / "instruct" / "training.json").write_text("{}")
    for first_stage in (stages.first_align_in, stages.first_align_out, stages.first_instruct):
        assert first_stage(q) == (False, "the full model is trained")  # it would only delay a better model's demo
    assert not q.run.first_chat.exists()


def test_a_model_command_before_the_full_model_points_to_the_first_one(tmp_path):
    from anybind.errors import CheckpointError
    from anybind.layout import ChatDir

    q = Quickstart(tmp_path / "quickstart", progress=False)
    q.run.first_chat.mkdir(parents=True)
    (q.run.first_chat / "config.json").write_text(json.dumps({"format": CHAT_FORMAT}))
    with pytest.raises(CheckpointError, match=f"not trained yet; the quickstart's first model is in {q.run.first_chat}"):
        ChatDir(q.run.chat).config()
    assert ChatDir(q.run.first_chat).config()["format"] == CHAT_FORMAT


def test_instruct_trains_again_once_a_tower_is_bound_after_it(tmp_path):
    from anybind.layout import ChatDir
    from anybind.training.instruct import _outgrown

    (tmp_path / "bind").mkdir()
    (tmp_path / "bind" / "config.json").write_text(json.dumps({"modalities": ["image"]}))
    chat = ChatDir(tmp_path / "chat")
    chat.path.mkdir()
    (chat.path / "config.json").write_text(json.dumps({"format": CHAT_FORMAT, "bound": "../bind", "outputs": {}}))
    record = {"outputs": [], "readable": ["image"]}
    assert _outgrown(record, chat) is None
    (tmp_path / "bind" / "config.json").write_text(json.dumps({"modalities": ["image", "audio", "text"]}))
    assert _outgrown(record, chat) == "trained when the model read image, but it now reads audio, image"
    assert _outgrown({**record, "readable": ["audio", "image"]}, chat) is None
    assert _outgrown({"outputs": ["image"], "readable": ["audio", "image"]}, chat).startswith(
        "trained with the outputs image, but the model now makes ")
