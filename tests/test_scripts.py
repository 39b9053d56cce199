"""Every top-level script: one skeleton (the same run-control fields, evaluate contract and blocks), a
2000-step smoke run, and one-line errors for bad command lines."""

import ast
import glob
import os

import pytest

from common.checkpoint import KEYS, RUN_CONTROL
from conftest import REPO, run_dirs

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "*.py")))


def test_scripts_found():
    assert SCRIPTS == ["cartpole_dqn.py", "lunarlander_nstep_ac.py", "mario_ddqn.py", "pong_a3c.py", "ppo_selfplay.py"]


def calls_in_order(tree: ast.AST) -> list[str]:
    """The names of the functions and methods called in `tree`, in source order."""
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    calls.sort(key=lambda node: (node.lineno, node.col_offset))
    return [node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "") for node in calls]


@pytest.mark.parametrize("script", SCRIPTS)
def test_one_skeleton(script):
    """The run-control fields come first, in one order; evaluate has one signature; the main block
    runs setup, --eval-checkpoint, --resume, the loop, the save, the stop and the final evaluation
    in that order, and the checkpoint is written with the schema's keys."""
    tree = ast.parse(open(os.path.join(REPO, script)).read())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    (args_class,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Args"]
    fields = [node.target.id for node in args_class.body if isinstance(node, ast.AnnAssign)]
    assert tuple(fields[: len(RUN_CONTROL)]) == RUN_CONTROL
    evaluate = functions["evaluate"].args
    assert [arg.arg for arg in evaluate.args][1:] == ["args", "episodes", "seed", "device", "video_path"]
    assert ast.literal_eval(evaluate.defaults[-1]) is None  # video_path=None: no video
    (main,) = [node for node in tree.body if isinstance(node, ast.If)]
    calls = calls_in_order(main)
    expected = ["parse_args", "seed_everything", "load_checkpoint", "make_run_dir", "load_weights", "evaluate"]
    expected += ["write_evaluation", "load_weights", "StopRequest", "exit", "training_done", "evaluate"]
    expected += ["write_evaluation"]
    position = -1
    for name in expected:
        assert name in calls[position + 1 :], f"{name}() missing after {calls[: position + 1][-3:]}"
        position = calls.index(name, position + 1)
    saves = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "save_checkpoint"
    ]
    assert saves
    for call in saves:  # a literal dict with the schema's keys, in order
        assert tuple(key.value for key in call.args[1].keys) == KEYS


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke(script, run_script, tmp_path):
    before = sorted(os.listdir(REPO))
    result = run_script(script, "--total-steps", "2000", "--eval-episodes", "1", "--seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    for name in ("metrics.csv", "eval.json"):
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
