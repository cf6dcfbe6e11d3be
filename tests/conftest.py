import os
import subprocess
import sys
from pathlib import Path

import pytest

from anybind import plugins

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def register_plugin():
    """Register plugin objects on the manager for one test, unregistering them after."""
    names = []

    def _register(plugin, name):
        plugins.register_plugin(plugin, name)
        names.append(name)
        return plugin

    yield _register
    for name in names:
        plugins.unregister_plugin(name)


def run_cli(*args, env=None, check=False, timeout=300):
    """Run the installed `anybind` console script as a user would."""
    proc = subprocess.run(
        [str(BIN / "anybind"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"anybind {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
