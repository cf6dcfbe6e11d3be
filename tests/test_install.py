"""`anybind install` / `uninstall` for real, with pip, into this virtual environment."""

import json


from conftest import REPO, run_cli

NUMSEQ = REPO / "tests" / "plugins" / "anybind-numseq"
BROKEN = REPO / "tests" / "plugins" / "anybind-broken"


def _plugin_names():
    return {i["name"]: i for i in json.loads(run_cli("plugins", "--json", check=True).stdout)}


def test_install_list_use_and_uninstall_a_plugin(tmp_path):
    assert "anybind-numseq" not in _plugin_names()
    try:
        proc = run_cli("install", str(NUMSEQ))
        assert proc.returncode == 0, proc.stderr[-3000:]
        info = _plugin_names()["anybind-numseq"]
        assert info["status"] == "ok" and info["modalities"] == ["numseq"] and info["commands"] == ["numseq-stats"]
        assert run_cli("numseq-stats", check=True).stdout.strip() == "numseq plugin is alive"
    finally:
        proc = run_cli("uninstall", "anybind-numseq")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "anybind-numseq" not in _plugin_names()


def test_a_plugin_that_raises_on_import_is_listed_and_uninstallable():
    try:
        run_cli("install", str(BROKEN), check=True)
        proc = run_cli("plugins")
        assert proc.returncode == 0
        assert "anybind-broken" in proc.stdout and "error" in proc.stdout
        assert "import failed: RuntimeError: this plugin is broken on purpose" in proc.stderr
        assert "anybind-image" in proc.stdout  # the others still load
        # and the rest of the CLI still works
        assert run_cli("embed", "--help").returncode == 0
    finally:
        proc = run_cli("uninstall", "anybind-broken")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "anybind-broken" not in _plugin_names()


def test_unknown_plugin_name_suggests_close_matches():
    proc = run_cli("install", "imgae")
    assert proc.returncode == 1
    assert "unknown plugin 'imgae'" in proc.stderr and "Did you mean: image" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pip_failure_is_reported_with_its_message(tmp_path):
    (tmp_path / "not-a-project").mkdir()
    proc = run_cli("install", str(tmp_path / "not-a-project"))
    assert proc.returncode == 1
    assert "pip failed (exit" in proc.stderr
    assert "Traceback" not in proc.stderr.split("pip failed")[1]


def test_uninstalling_what_is_not_installed_is_a_clear_error():
    proc = run_cli("uninstall", "anybind-not-installed")
    assert proc.returncode == 1
    assert "plugin 'anybind-not-installed' is not installed" in proc.stderr
    proc = run_cli("uninstall", "text")
    assert proc.returncode == 1 and "built into anybind" in proc.stderr
