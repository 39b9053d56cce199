"""ppo_selfplay.py launched by torchrun (torch.distributed, gloo on CPU): two ranks end with the same weights,
optimizer and league and write one run directory; two "machines" on 127.0.0.1 train together; SIGTERM to
torchrun stops every rank at one step and leaves a checkpoint that the printed torchrun command continues; a
rank that dies ends the other with one error line."""

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import torch

from conftest import REPO, alive, descendants, run_dirs, wait_for

SCRIPT = os.path.join(REPO, "ppo_selfplay.py")
# 16 steps a rollout, a curriculum that any finished game passes, a snapshot and a tiny panel every 2 updates
FAST = ["--n-steps", "16", "--curriculum-threshold", "0", "--curriculum-window", "1"]
FAST += ["--snapshot-interval", "2", "--panel-games", "2", "--eval-episodes", "0"]


def torchrun(*args: str) -> list[str]:
    """The torchrun command of this interpreter (`torchrun` is its console script)."""
    return [sys.executable, "-m", "torch.distributed.run", *args]


def launch(tmp_path, command: list[str], **popen):
    """Popen `command` in tmp_path, stdout and stderr in files, leading its own process group."""
    out = open(tmp_path / f"stdout{len(list(tmp_path.glob('stdout*')))}.txt", "w")
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
    )
    return proc, tmp_path / os.path.basename(out.name)


def process_of_rank(pid: int, rank: int) -> bool:
    """Whether process `pid` runs ppo_selfplay.py as torchrun's rank `rank` (False if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline, open(f"/proc/{pid}/environ", "rb") as environ:
            return b"ppo_selfplay.py" in cmdline.read() and f"\0RANK={rank}\0".encode() in b"\0" + environ.read()
    except OSError:
        return False


def finish(proc, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_two_ranks_hold_one_model_and_one_league_and_write_one_run_directory(tmp_path):
    """255 games on 2 ranks (128 and 127): after self-play has begun, both ranks hold the same weights, Adam
    moments, curriculum, Elo table, snapshot pool and opponent of every game; only rank 0 wrote a run directory."""
    args = ["--runs-dir", str(tmp_path / "runs"), "--n-games", "255", "--total-steps", str(255 * 16 * 50), *FAST]
    helper = os.path.join(REPO, "tests", "selfplay_rank_state.py")
    env = {**os.environ, "RANK_STATE_DIR": str(tmp_path)}
    proc, out = launch(tmp_path, torchrun("--standalone", "--nproc-per-node", "2", helper, *args), env=env)
    assert finish(proc) == 0, out.read_text()[-3000:]
    rank0, rank1 = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert (rank0.pop("games"), rank1.pop("games")) == (128, 127)
    assert rank0 == rank1
    assert rank0["league"]["level"] == 4 and any(name.startswith("snap_") for name in rank0["league"]["snapshots"])
    (run_dir,) = run_dirs(tmp_path)
    assert sorted(os.listdir(run_dir)) == ["metrics.csv"]
    assert "processes: 2" in out.read_text()


def test_two_machines_on_localhost(tmp_path):
    """`torchrun --nnodes 2 --node-rank R --nproc-per-node 1 --master-addr --master-port` on each of two
    "machines" (two torchrun processes on 127.0.0.1): both exit 0, node 0's rank writes the run directory."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    nodes = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    args = ["--runs-dir", str(tmp_path / "runs"), "--n-games", "64", "--total-steps", str(64 * 16 * 6), *FAST]
    launched = [launch(tmp_path, torchrun(*nodes, "--node-rank", str(node), SCRIPT, *args)) for node in (0, 1)]
    for proc, out in launched:
        assert finish(proc) == 0, out.read_text()[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert os.path.exists(os.path.join(run_dir, "metrics.csv"))


def test_sigterm_to_torchrun_saves_a_checkpoint_that_the_printed_torchrun_command_resumes(tmp_path):
    """SIGTERM to torchrun: both ranks stop at the same step and exit, rank 0 saves the checkpoint of the last
    whole update, no process is left; the printed command is a torchrun command and continues the run;
    --eval-checkpoint under torchrun plays the checkpoint once."""
    args = ["--runs-dir", str(tmp_path / "runs"), "--n-games", "64", "--total-steps", "100000000", *FAST]
    proc, out = launch(
        tmp_path, torchrun("--standalone", "--nproc-per-node", "2", SCRIPT, *args, "--log-interval", "1024")
    )
    try:
        wait_for(out, r"step +\d+/", proc)
        children = descendants(proc.pid)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        while any(alive(pid) for pid in children) and time.monotonic() < sent + 60:
            time.sleep(0.1)
        assert not [pid for pid in children if alive(pid)], "a rank or a worker outlived torchrun"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text()
    (run_dir,) = run_dirs(tmp_path)
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == state["resume_state"]["update"] * 64 * 16 > 0
    assert text.count(f"stopped by SIGTERM at step {state['global_step']}") == 1, text[-3000:]  # rank 0 only
    (command,) = [line.removeprefix("continue with: ") for line in text.splitlines() if "continue with:" in line]
    argv = shlex.split(command)
    assert argv[:5] == ["torchrun", "--standalone", "--nproc-per-node", "2", SCRIPT], command
    more = ["--total-steps", str(state["global_step"] + 2 * 64 * 16), "--save-model"]
    proc, out = launch(tmp_path, torchrun(*argv[1:], *more))
    assert finish(proc) == 0, out.read_text()[-3000:]
    resumed = [d for d in run_dirs(tmp_path) if d != run_dir][0]
    final = torch.load(os.path.join(resumed, "checkpoint.pt"), weights_only=True)
    assert final["resume_state"]["update"] == state["resume_state"]["update"] + 2
    evaluate = ["--runs-dir", str(tmp_path / "runs"), "--eval-checkpoint", checkpoint, "--eval-episodes", "1"]
    proc, out = launch(tmp_path, torchrun("--standalone", "--nproc-per-node", "2", SCRIPT, *evaluate))
    assert finish(proc, timeout=120) == 0, out.read_text()[-3000:]  # rank 0 plays, the other has nothing to do
    (evaluated,) = [d for d in run_dirs(tmp_path) if d not in (run_dir, resumed)]
    assert json.loads(open(os.path.join(evaluated, "eval.json")).read())["kept_step"] == state["kept_step"]


def test_a_rank_that_dies_ends_the_other_with_one_error_line(tmp_path):
    """SIGKILL to rank 1: rank 0 ends within seconds with one `error:` line, not a traceback or a hang."""
    args = ["--runs-dir", str(tmp_path / "runs"), "--n-games", "64", "--total-steps", "100000000", *FAST]
    proc, out = launch(
        tmp_path, torchrun("--standalone", "--nproc-per-node", "2", SCRIPT, *args, "--log-interval", "1024")
    )
    try:
        wait_for(out, r"step +\d+/", proc)
        (rank1,) = [pid for pid in descendants(proc.pid) if process_of_rank(pid, 1)]
        os.kill(rank1, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text()
    assert "error: another torchrun rank stopped answering" in text, text[-3000:]
    assert "[rank0]: Traceback" not in text, text[-3000:]
