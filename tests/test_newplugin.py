"""`anybind new-plugin`: the distribution it writes installs, is listed, and passes its own tests."""

import json
import subprocess
import sys

import pytest

from anybind.errors import AnybindError
from anybind.plugins.scaffold import new_plugin, plugin_names
from conftest import run_cli


def test_it_writes_a_complete_distribution(tmp_path):
    written = new_plugin("anybind-wave-gauge", "gauge", tmp_path)
    root = tmp_path / "anybind-wave-gauge"
    assert sorted(str(p.relative_to(root)) for p in written) == [
        "README.md", "anybind_wave_gauge/__init__.py", "anybind_wave_gauge/data.py", "anybind_wave_gauge/encoder.py",
        "pyproject.toml", "tests/test_anybind_wave_gauge.py",
    ]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "anybind-wave-gauge"' in pyproject
    assert '[project.entry-points.anybind]\ngauge = "anybind_wave_gauge"' in pyproject
    init = (root / "anybind_wave_gauge" / "__init__.py").read_text()
    assert 'suffixes=(".gauge",)' in init and '"anybind_wave_gauge.encoder:GaugeEncoder"' in init
    for path in written:
        assert "$" not in path.read_text(), f"{path}: a placeholder was left unfilled"
        if path.suffix == ".py":
            compile(path.read_text(), str(path), "exec")
    assert "torch" not in init  # the module anybind imports to list plugins stays light


def test_names_are_checked():
    assert plugin_names("strokes")["dist"] == "anybind-strokes"
    assert plugin_names("anybind-pen_strokes", "pen")["module"] == "anybind_pen_strokes"
    assert plugin_names("strokes", "pen_strokes")["Kind"] == "PenStrokes"
    with pytest.raises(AnybindError, match="plugin name 'Bad Name'"):
        plugin_names("Bad Name")
    with pytest.raises(AnybindError, match="--modality '2d'"):
        plugin_names("strokes", "2d")


def test_it_refuses_what_would_conflict_or_overwrite(tmp_path):
    proc = run_cli("new-plugin", "mine", "--modality", "image", "--dir", str(tmp_path))
    assert proc.returncode == 1 and "the modality 'image' is already provided by anybind-image" in proc.stderr
    proc = run_cli("new-plugin", "mine", "--suffix", "wav", "--dir", str(tmp_path))
    assert proc.returncode == 1 and ".wav files are already read by anybind-audio" in proc.stderr
    (tmp_path / "anybind-mine" / "notes.txt").parent.mkdir()
    (tmp_path / "anybind-mine" / "notes.txt").write_text("mine")
    proc = run_cli("new-plugin", "mine", "--dir", str(tmp_path))
    assert proc.returncode == 1 and "already exists and is not empty" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert [p.name for p in (tmp_path / "anybind-mine").iterdir()] == ["notes.txt"]


def test_a_new_plugin_installs_and_passes_its_own_tests(tmp_path):
    proc = run_cli("new-plugin", "zzgauge", "--modality", "gauge", "--dir", str(tmp_path), check=True)
    root = tmp_path / "anybind-zzgauge"
    assert f"anybind install -e {root}" in proc.stdout
    try:
        run_cli("install", "-e", str(root), check=True)
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root)],
                               cwd=root, capture_output=True, text=True, timeout=600)
        assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
        assert "4 passed" in tests.stdout
    finally:
        proc = run_cli("uninstall", "anybind-zzgauge")
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p["name"] for p in json.loads(run_cli("plugins", "--json", check=True).stdout)}
    assert "anybind-zzgauge" not in names
