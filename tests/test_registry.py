"""registry.yaml parsing: the shipped file is valid, malformed files give file:line errors."""

import pytest

from anybind.errors import RegistryError
from anybind.plugins.registry import find_entry, load_registry, suggest
from conftest import REPO, run_cli


def test_shipped_registry_lists_every_first_party_plugin():
    entries = load_registry(REPO / "registry.yaml")
    names = {e.name for e in entries}
    shipped = {p.name.removeprefix("anybind-") for p in (REPO / "plugins").glob("anybind-*")}
    assert shipped <= names
    for entry in entries:
        if entry.name in shipped:
            target = entry.pip_target()
            assert (REPO / "plugins" / entry.package).resolve() == __import__("pathlib").Path(target)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("plugins:\n  - name: a\n    description: d\n    pip: [oops\n", r"registry\.yaml:\d+:\d+: invalid YAML"),
        ("plugins:\n  - name: a\n    descripton: d\n    pip: x\n", r"registry\.yaml:3: unknown key 'descripton' \(did you mean 'description'\?\)"),
        ("plugins:\n  - name: a\n    pip: x\n", r"registry\.yaml:2: plugin entry is missing 'description'"),
        ("plugins:\n  - name: a\n    description: d\n    pip: x\n    weights: foo\n", r"registry\.yaml:5: weights must be a list"),
        ("plugins:\n  - name: a\n    description: d\n    pip: x\n  - name: a\n    description: d\n    pip: y\n", r"registry\.yaml:5: plugin 'a' is listed twice \(first at line 2\)"),
        ("plugin:\n  - name: a\n", r"registry\.yaml:1: unknown top-level key 'plugin'"),
        ("", r"registry\.yaml: registry is empty"),
        ("plugins:\n  - name: a\n    description: d\n    pip: x\n    provides: {modality: [a]}\n", r"registry\.yaml:5: unknown provides key 'modality'"),
    ],
)
def test_malformed_registry_errors_name_file_and_line(tmp_path, text, expected):
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    with pytest.raises(RegistryError, match=expected):
        load_registry(path)


def test_cli_reports_a_malformed_registry_without_traceback(tmp_path):
    bad = tmp_path / "registry.yaml"
    bad.write_text("plugins:\n  - name: a\n    descripton: d\n    pip: x\n")
    proc = run_cli("registry", env={"ANYBIND_REGISTRY": str(bad)})
    assert proc.returncode == 1
    assert f"{bad}:3: unknown key 'descripton'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_registry_command_marks_installed_plugins():
    proc = run_cli("registry", check=True)
    line = next(l for l in proc.stdout.splitlines() if " image " in l)
    assert line.startswith("✓")


def test_suggestions_for_close_names():
    entries = load_registry(REPO / "registry.yaml")
    assert find_entry("anybind-image", entries).name == "image"
    assert "image" in suggest("imgae", entries)
