"""The quickstart's background decoder: it trains beside the other stages, on one core."""

from __future__ import annotations

import json

import pytest
import torch

from anybind.errors import AnybindError
from anybind.quickstart import Quickstart
from anybind.trainer import STEP_HOOKS
from conftest import TINY_DECODER


def _quickstart(tmp_path, small_world, options) -> Quickstart:
    out = tmp_path / "quickstart"
    out.mkdir()
    (out / "world").symlink_to(small_world)
    return Quickstart(out, progress=False, background_decoder=True, decoder_options=tuple(options))


def test_the_decoder_trains_in_the_background_and_gives_its_core_back(small_world, tmp_path):
    run = _quickstart(tmp_path, small_world, TINY_DECODER)
    threads = torch.get_num_threads()
    ran, note = run.stage_decoder()
    assert ran is None and "background" in note and str(run.decoder_log) in note
    assert torch.get_num_threads() == max(1, threads - 1)  # the stages meanwhile leave it a core
    assert run._take_back_cores in STEP_HOOKS
    run.join_decoder()
    assert torch.get_num_threads() == threads and run._take_back_cores not in STEP_HOOKS
    assert (run.decoder / "anybind.json").is_file() and (run.decoder / "unet" / "config.json").is_file()
    stage = run.record["stages"]["decoder"]
    assert stage["ran"] and stage["seconds"] > 0 and "background" in stage["note"]
    assert run.stage_decoder() == (False, "already trained")


def test_a_failed_background_decoder_stops_the_quickstart_with_its_log(small_world, tmp_path):
    run = _quickstart(tmp_path, small_world, [*TINY_DECODER, "--set", "no_such_setting=1"])
    threads = torch.get_num_threads()
    run.stage_decoder()
    with pytest.raises(AnybindError, match="decoder training failed") as failure:
        run.join_decoder()
    assert "no_such_setting" in str(failure.value) and str(run.decoder_log) in str(failure.value)
    assert torch.get_num_threads() == threads and run._take_back_cores not in STEP_HOOKS
    assert not (run.decoder / "anybind.json").exists()


def test_an_interrupted_quickstart_stops_its_background_decoder(small_world, tmp_path):
    run = _quickstart(tmp_path, small_world, [*TINY_DECODER, "--steps", "100000"])
    run.stage_decoder()
    job = run._job
    run.stop_decoder()
    assert job.poll() is not None and run._job is None and run._take_back_cores not in STEP_HOOKS
    json.dumps(run.record)  # nothing unserialisable was left in the record


def test_the_backbone_loads_in_the_background_unless_align_in_is_done(tmp_path, tiny_lm):
    run = Quickstart(tmp_path / "quickstart", backbone=f"hf:{tiny_lm}", progress=False)
    run.warm_backbone()
    job = run._warm
    assert job is not None
    run.join_backbone()
    assert job.returncode == 0 and run._warm is None
    # A backbone that cannot load: align-in's own load reports it; the warm-up only logs it.
    broken = Quickstart(tmp_path / "broken", backbone="no-such-backbone", progress=False)
    broken.warm_backbone()
    failed = broken._warm
    broken.join_backbone()
    assert failed.returncode != 0 and "no-such-backbone" in (broken.out / "backbone.log").read_text()
    done = run.chat / "projectors" / "image" / "training.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    run.warm_backbone()
    assert run._warm is None  # align-in is done: nothing to load ahead
