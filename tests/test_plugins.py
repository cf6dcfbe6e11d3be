"""The plugin system: registration, isolation, conflicts, allow-list, laziness."""

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import anybind
from anybind import plugins
from anybind.errors import InputError, PluginError
from anybind.models.space import AnybindModel, Tower
from anybind.modality import EncoderOutput, ModalityEncoder
from anybind.specs import ModalitySpec
from conftest import run_cli


@dataclass
class PairConfig:
    width: int = 8


class PairEncoder(ModalityEncoder):
    """Embeds files holding two numbers."""

    Config = PairConfig

    def __init__(self, config=None):
        super().__init__(config or PairConfig())
        self.proj = nn.Linear(2, self.config.width)

    def preprocess(self, raw):
        return {"xy": torch.tensor(raw, dtype=torch.float32)}

    def forward(self, xy):
        return EncoderOutput(tokens=self.proj(xy).unsqueeze(1))


def load_pair(path):
    values = [float(v) for v in open(path).read().split()]
    if len(values) != 2:
        raise InputError(path, f"expected 2 numbers, found {len(values)}")
    return values


class PairPlugin:
    @anybind.hookimpl
    def register_modalities(self, register):
        register(ModalitySpec(name="pair", suffixes=("pair",), loader=load_pair, encoder=PairEncoder))


def test_registered_plugin_is_listed_and_its_modality_embeds(register_plugin, tmp_path):
    register_plugin(PairPlugin(), "anybind-pair")
    info = {i.name: i for i in plugins.plugin_infos()}["anybind-pair"]
    assert info.status == "ok" and info.modalities == ["pair"]
    assert plugins.get_modality("pair").suffixes == (".pair",)

    (tmp_path / "a.pair").write_text("1 2")
    (tmp_path / "b.pair").write_text("-3 0.5")
    model = AnybindModel({"pair": Tower.create("pair", embed_dim=4)})
    vectors = model.embed([tmp_path / "a.pair", str(tmp_path / "b.pair")])
    assert vectors.shape == (2, 4)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(vectors[0], vectors[1])

    (tmp_path / "bad.pair").write_text("1 2 3")
    with pytest.raises(InputError, match=r"bad\.pair: expected 2 numbers, found 3"):
        model.embed([tmp_path / "bad.pair"])


def test_tower_round_trips_through_safetensors(register_plugin, tmp_path):
    register_plugin(PairPlugin(), "anybind-pair")
    tower = Tower.create("pair", embed_dim=4, config={"width": 6})
    tower.save_pretrained(tmp_path / "pair")
    assert sorted(p.name for p in (tmp_path / "pair").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Tower.from_pretrained(tmp_path / "pair")
    assert loaded.encoder.config.width == 6
    x = {"xy": torch.tensor([[1.0, 2.0]])}
    assert torch.equal(tower(**x), loaded(**x))


def test_a_misspelt_hook_is_reported_with_a_suggestion(register_plugin):
    class Typo:
        @anybind.hookimpl
        def register_modality(self, register):  # missing "ies"
            pass

    register_plugin(Typo(), "anybind-typo")
    info = {i.name: i for i in plugins.plugin_infos()}["anybind-typo"]
    assert info.status == "error"
    assert "register_modality" in info.errors[0] and "register_modalities" in info.errors[0]
    # and the rest keeps working
    assert "text" in plugins.modalities()


def test_a_plugin_whose_hook_raises_is_isolated(register_plugin):
    class Raises:
        @anybind.hookimpl
        def register_modalities(self, register):
            raise RuntimeError("boom")

    register_plugin(Raises(), "anybind-raises")
    infos = {i.name: i for i in plugins.plugin_infos()}
    assert "boom" in infos["anybind-raises"].errors[0]
    assert infos["anybind.plugins.builtins.text"].status == "ok"


def test_two_plugins_registering_one_modality_is_an_error_naming_both(register_plugin):
    register_plugin(PairPlugin(), "anybind-pair")
    register_plugin(PairPlugin(), "anybind-pair-fork")
    with pytest.raises(PluginError) as excinfo:
        plugins.get_modality("pair")
    message = str(excinfo.value)
    assert "anybind-pair," in message and "anybind-pair-fork" in message
    infos = {i.name: i for i in plugins.plugin_infos()}
    assert "also registered by anybind-pair-fork" in infos["anybind-pair"].errors[0]


def test_unknown_modality_and_suffix_are_clear_errors():
    with pytest.raises(PluginError, match="no installed plugin provides the modality 'no-such-modality'"):
        plugins.get_modality("no-such-modality")
    with pytest.raises(InputError, match=r"x\.unknownsuffix: no installed plugin reads \.unknownsuffix files"):
        plugins.modality_for_path("x.unknownsuffix")


def test_an_uninstalled_suffix_suggests_the_registry_plugin(monkeypatch, tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "plugins:\n  - name: strokes\n    description: d\n    pip: anybind-strokes\n"
        "    provides: {modalities: [strokes], suffixes: [.strokes]}\n"
    )
    monkeypatch.setenv("ANYBIND_REGISTRY", str(registry))
    with pytest.raises(InputError, match=r"x\.strokes: no installed plugin reads \.strokes files; install one with: anybind install strokes"):
        plugins.modality_for_path(tmp_path / "x.strokes")
    with pytest.raises(PluginError, match="anybind install strokes"):
        plugins.get_modality("strokes")


def test_cli_plugins_lists_first_party_plugins_as_json():
    proc = run_cli("plugins", "--json", check=True)
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    assert infos["anybind.plugins.builtins.text"]["modalities"] == ["text"]
    assert infos["anybind-image"]["modalities"] == ["image"]
    assert all(i["status"] == "ok" for i in infos.values()), infos


def test_allow_list_limits_loaded_plugins():
    proc = run_cli("plugins", "--json", env={"ANYBIND_LOAD_PLUGINS": ""}, check=True)
    builtins = ["anybind.plugins.builtins.hf", "anybind.plugins.builtins.text"]
    assert [i["name"] for i in json.loads(proc.stdout)] == builtins
    proc = run_cli("plugins", "--json", env={"ANYBIND_LOAD_PLUGINS": "anybind-image"}, check=True)
    assert [i["name"] for i in json.loads(proc.stdout)] == [*builtins, "anybind-image"]


@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["plugins", "--json"], ["registry"], ["--version"]])
def test_light_commands_do_not_import_torch(argv):
    code = (
        "import sys\n"
        "from anybind.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'timm') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stderr


@pytest.mark.parametrize("command, settings", [
    ("align-in", "anybind.training.settings:AlignSettings"),
    ("align-out", "anybind.training.settings:AlignOutSettings"),
    ("instruct", "anybind.training.settings:InstructSettings"),
])
def test_train_command_defaults_are_the_settings_defaults(command, settings):
    """The CLI spells its defaults out (so --help shows them); they must be the Python API's too."""
    import dataclasses
    import importlib

    from anybind.cli import cli

    module, name = settings.split(":")
    fields = {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    params = cli.commands["train"].commands[command].params
    checked = {p.name: p.default for p in params if p.name in fields and p.default is not None}
    assert {"steps", "batch_size", "lr"} <= set(checked)
    assert checked == {k: fields[k] for k in checked}


def test_plugins_lists_the_suffixes_each_reads():
    from conftest import run_cli

    listed = {p["name"]: p for p in json.loads(run_cli("plugins", "--json", check=True).stdout)}
    assert ".npy" in listed["anybind-pointcloud"]["suffixes"] and ".wav" in listed["anybind-audio"]["suffixes"]
    assert ".npy" in run_cli("plugins", check=True).stdout


def test_the_longest_claimed_suffix_wins_and_a_clash_is_reported(register_plugin, tmp_path):
    class Depth:
        @anybind.hookimpl
        def register_modalities(self, register):
            register(ModalitySpec(name="depth", suffixes=(".depth.npy",), encoder="x:y", loader="x:y"))

    class Clash:
        @anybind.hookimpl
        def register_modalities(self, register):
            register(ModalitySpec(name="other_points", suffixes=(".ply",), encoder="x:y", loader="x:y"))

    register_plugin(Depth(), "depth-plugin")
    assert plugins.modality_for_path(tmp_path / "scan.depth.npy").name == "depth"
    assert plugins.modality_for_path(tmp_path / "cloud.npy").name == "pointcloud"
    register_plugin(Clash(), "clash-plugin")
    errors = {i.name: i.errors for i in plugins.plugin_infos()}
    assert any(".ply files are also claimed by anybind-pointcloud (pointcloud)" in e for e in errors["clash-plugin"])
    assert plugins.modality_for_path(tmp_path / "a.ply").name == "pointcloud"  # the first registered reads them
