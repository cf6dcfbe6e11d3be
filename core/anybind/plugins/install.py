"""Installing plugins: pip in this interpreter, and the Debian packages a plugin needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import deque
from importlib import metadata

from anybind.errors import AnybindError


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _echo(message: str, **style) -> None:
    import click

    click.secho(message, err=True, **style)


def run_pip(args: list[str], what: str) -> None:
    """Run pip in this interpreter, streaming its output; raise with its last lines on failure."""
    cmd = [sys.executable, "-m", "pip", *args]
    _echo("$ " + " ".join(["pip", *args]), dim=True)
    tail: deque[str] = deque(maxlen=15)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
        sys.stderr.write(line)
    if proc.wait() != 0:
        lines = [l for l in tail if l.strip()]
        raise AnybindError(f"pip failed (exit {proc.returncode}) while {what}:\n  " + "\n  ".join(lines[-8:]))


def _deb_installed(package: str) -> bool:
    """Whether Debian's package manager has ``package`` installed (fonts and data have no executable)."""
    if shutil.which("dpkg-query") is None:
        return False
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return done.returncode == 0 and "install ok installed" in done.stdout


def ensure_system_packages(packages: tuple[str, ...], plugin: str) -> None:
    """Install missing Debian packages when running as root; otherwise say what to install."""
    missing = [p for p in packages if shutil.which(p) is None and not _deb_installed(p)]
    if not missing:
        return
    can_apt = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")
    if can_apt:
        _echo(f"Installing system packages for {plugin}: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        ok = subprocess.run(["apt-get", "update", "-qq"], env=env).returncode == 0
        ok = ok and subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env).returncode == 0
        if ok:
            return
    _echo(
        f"Note: {plugin} needs the system package(s) {' '.join(missing)} for some features; "
        f"install them with: sudo apt-get install -y {' '.join(missing)}",
        fg="yellow",
    )
