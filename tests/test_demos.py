"""The demos/ scripts, each run as a user runs it, against tiny models in a run folder.

The run folder holds world/, bind/ and chat/ like ``runs/quickstart`` (symlinks to the
session's small world, small bound model and tiny drawing chat model).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anybind.data import read_manifest
from conftest import REPO, always_draws

DEMOS = REPO / "demos"
SCORE_LINE = re.compile(r"^  ([✓ ]) ([+-]\d\.\d{3})  (\w+)\s+(\S+)$")


@pytest.fixture(scope="module")
def run_dir(small_world, small_bound, drawing_chat, tmp_path_factory):
    run = tmp_path_factory.mktemp("demo-run")
    for name, target in (("world", small_world), ("bind", small_bound), ("chat", drawing_chat)):
        (run / name).symlink_to(target, target_is_directory=True)
    return run


def run_demo(name, *args, cwd, env=None, timeout=240):
    proc = subprocess.run([sys.executable, str(DEMOS / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def hits_by_modality(out: str) -> dict[str, list[tuple[str, float, str]]]:
    hits, current = {}, None
    for line in out.splitlines():
        if re.match(r"^\w+ \(\d+ held-out files\)$", line):
            current = hits.setdefault(line.split()[0], [])
        elif current is not None and (m := SCORE_LINE.match(line)):
            current.append((m.group(3), float(m.group(2)), m.group(4)))
    return hits


def test_retrieve_across_modalities_speaks_and_finds_every_modality(run_dir, tmp_path):
    labels = read_manifest(run_dir / "world").labels
    runs = [({}, "espeak-ng saying 'three'")] if shutil.which("espeak-ng") else []
    # Without espeak-ng on PATH it falls back to a held-out recording of the world, and says so.
    runs.append(({"PATH": str(Path(sys.executable).parent)}, "espeak-ng is not installed"))
    for env, says in runs:
        out = run_demo("retrieve_across_modalities.py", "--run", run_dir, "-k", 2, cwd=tmp_path, env=env)
        assert says in out.splitlines()[0]
        hits = hits_by_modality(out)
        assert set(hits) == {"audio", "image"}  # the modalities the small world and model share
        for modality, found in hits.items():
            assert len(found) == 2 and all(label in labels for label, _, _ in found)
            assert found[0][1] >= found[1][1]  # best first
            suffix = {"audio": ".wav", "image": ".png"}[modality]
            assert all(name.endswith(suffix) for _, _, name in found)
        assert re.search(r"^text: \w+ [+-]\d\.\d{3}", out, flags=re.M)


def test_retrieve_rejects_a_digit_the_world_lacks(run_dir, tmp_path):
    proc = subprocess.run([sys.executable, str(DEMOS / "retrieve_across_modalities.py"), "--run", str(run_dir),
                           "--digit", "eleven"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "not a label of" in proc.stderr and "seven" in proc.stderr


def test_chat_about_audio_streams_and_follows_up_in_one_conversation(run_dir, tmp_path):
    out = run_demo("chat_about_audio.py", "--run", run_dir, "--max-tokens", 8, cwd=tmp_path)
    assert "you> Which digit is spoken here? [" in out and ".wav]" in out
    assert "you> Name it in one word." in out
    assert out.count("anybind> ") == 2
    prompts = [int(n) for n in re.findall(r"was (\d+) tokens\)", out)]
    assert len(prompts) == 2 and prompts[1] > prompts[0] + 8  # the follow-up carries the first turn


def test_illustrated_answer_writes_one_self_contained_page(run_dir, tmp_path):
    chat = always_draws(run_dir / "chat", tmp_path / "draws")  # the tiny LM draws only when made to
    run = tmp_path / "run"
    run.mkdir()
    (run / "chat").symlink_to(chat, target_is_directory=True)
    out = run_demo("illustrated_answer.py", "--run", run, "--max-tokens", 6, "-o", "four.html", cwd=tmp_path)
    page = (tmp_path / "four.html").read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>") and page.count("<html") == 1
    assert "Write one sentence about the number four, then draw it." in page
    assert page.count('src="data:image/png;base64,') >= 1 and 'src="http' not in page
    assert "[image: " in out and "wrote four.html" in out
    assert (tmp_path / "four-1.png").is_file()  # the terminal's copy of the image


def test_train_on_your_manifest_binds_a_new_tower_and_evaluates_it(run_dir, small_bound, tmp_path):
    data = tmp_path / "my-data"
    before = json.loads((small_bound / "audio" / "training.json").read_text())
    out = run_demo("train_on_your_manifest.py", "--run", run_dir, "--data", data, "--per-label", 4, "--steps", 3,
                   cwd=tmp_path)
    manifest = read_manifest(data)  # the documented format, paths relative to it
    assert {r["split"] for r in manifest.rows} == {"train", "test"} and set(manifest.modalities()) == {"audio", "image"}
    assert all(Path(r[m]).is_file() and Path(r[m]).is_relative_to(data) for r in manifest.rows for m in ("audio", "image") if m in r)
    assert all(r["text"] and r["label"] for r in manifest.rows if "image" in r)
    assert (data / "bind" / "audio" / "model.safetensors").is_file()
    assert json.loads((data / "bind" / "audio" / "training.json").read_text())["steps"] == 3
    assert json.loads((small_bound / "audio" / "training.json").read_text()) == before  # the run's model is untouched
    assert "--modality audio" in out
    row = re.search(r"^audio\s+(\d\.\d{3})\s+(\d\.\d{3})\s+(\S+)\s+(\d+)\s+\(emergent", out, flags=re.M)
    assert row and 0.0 <= float(row.group(1)) <= 1.0 and int(row.group(4)) > 0
