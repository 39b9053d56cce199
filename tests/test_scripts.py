"""Every top-level script: a 2000-step smoke run, and one-line errors for bad command lines."""

import glob
import os

import pytest

from conftest import REPO, run_dirs

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "*.py")))


def test_scripts_found():
    assert "cartpole_dqn.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke(script, run_script, tmp_path):
    before = sorted(os.listdir(REPO))
    result = run_script(script, "--total-steps", "2000", "--eval-episodes", "1", "--seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    for name in ("metrics.csv", "eval.json", "learning_curve.png"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    assert sorted(os.listdir(REPO)) == before  # nothing written into the work tree


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("bad", [["--no-such-flag"], ["--total-steps", "-5"], ["--resume", "does/not/exist.pt"]])
def test_bad_input_is_one_line_error(script, bad, run_script, tmp_path):
    result = run_script(script, *bad, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert run_dirs(tmp_path) == []  # rejected before anything is created


@pytest.mark.parametrize("script", SCRIPTS)
def test_unusable_runs_dir_is_one_line_error(script, run_script, tmp_path):
    (tmp_path / "a_file").write_text("")  # --runs-dir below a file: NotADirectoryError
    result = run_script(script, "--runs-dir", str(tmp_path / "a_file" / "runs"), timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot create a run directory"), result.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if "env_id" in open(os.path.join(REPO, s)).read()])
def test_unknown_env_id_is_one_line_error(script, run_script, tmp_path):
    result = run_script(script, "--env-id", "NoSuchEnv-v9", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "NoSuchEnv" in lines[0] and lines[0].startswith("error:"), result.stderr
    assert run_dirs(tmp_path) == []
