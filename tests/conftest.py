"""Shared test helpers: the repository root on sys.path and a subprocess runner for scripts."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


@pytest.fixture
def run_script(tmp_path):
    """Run `python <script> args...` with cwd and --runs-dir in a temporary directory."""

    def run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        command = [sys.executable, os.path.join(REPO, script), "--runs-dir", str(tmp_path / "runs"),
                   *args]
        env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=timeout)

    return run


def run_dirs(tmp_path) -> list[str]:
    """The run directories the scripts created under `tmp_path/runs`."""
    runs = tmp_path / "runs"
    return sorted(str(runs / d) for d in os.listdir(runs)) if runs.exists() else []
