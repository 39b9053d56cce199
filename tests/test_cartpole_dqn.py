"""cartpole_dqn.py: replay buffer, n-step transitions, TD target, epsilon schedule, checkpoints, stopping,
learning. One short training run (`trained`) feeds the resume, evaluation and error tests."""

import csv
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
from collections import deque

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

import cartpole_dqn as dqn
from common.checkpoint import KEYS
from common.metrics import read_episodes
from conftest import REPO, run_dirs, stop_with_signal


def test_replay_buffer_wraps_around():
    buffer = dqn.ReplayBuffer(capacity=5, obs_shape=(2,), seed=0)
    for i in range(7):
        buffer.add(np.full(2, i), i % 2, float(i), np.full(2, i + 1), i == 6, 0.99)
    assert buffer.size == 5 and buffer.position == 2
    # slots 0 and 1 were overwritten by transitions 5 and 6; slots 2-4 still hold 2-4
    assert list(buffer.returns) == [5, 6, 2, 3, 4]
    assert list(buffer.obs[:, 0]) == [5, 6, 2, 3, 4] and list(buffer.next_obs[:, 0]) == [6, 7, 3, 4, 5]
    assert list(buffer.terminated) == [0, 1, 0, 0, 0]


def test_replay_buffer_samples_only_stored_transitions():
    buffer = dqn.ReplayBuffer(capacity=100, obs_shape=(3,), seed=0)
    for i in range(10):
        buffer.add(np.full(3, i), 1, float(i), np.full(3, i + 1), False, 0.9 ** (i % 3 + 1))
    obs, actions, rewards, next_obs, terminated, discount = buffer.sample(1000, "cpu")
    assert obs.shape == (1000, 3) and obs.dtype == torch.float32 and actions.dtype == torch.int64
    assert set(rewards.tolist()) == set(range(10))  # every stored one, nothing from empty slots
    assert torch.equal(next_obs[:, 0], obs[:, 0] + 1) and torch.equal(rewards, obs[:, 0])
    torch.testing.assert_close(discount, 0.9 ** (obs[:, 0] % 3 + 1))


def test_nstep_transitions_sum_n_rewards_and_flush_at_the_episode_end():
    window, gamma = deque(), 0.5
    stored = []
    for t in range(5):  # rewards 1, 2, 4, 8, 16; the episode ends at t = 4
        window.append((t, 0, float(2**t)))
        done = t == 4
        stored += list(dqn.nstep_transitions(window, t + 1, done, done, 3, gamma))
    assert [(s[0], s[3]) for s in stored] == [(0, 3), (1, 4), (2, 5), (3, 5), (4, 5)]  # (s_t, s_t+m)
    assert [s[2] for s in stored] == [1 + 1 + 1, 2 + 2 + 2, 4 + 4 + 4, 8 + 8, 16]  # Σ γ^k r_t+k
    assert [s[5] for s in stored] == [0.125, 0.125, 0.125, 0.25, 0.5]  # γ^m
    assert [s[4] for s in stored] == [False, False, True, True, True] and not window


def test_double_dqn_target_bootstraps_on_truncation_not_on_termination():
    torch.manual_seed(0)
    q_network = dqn.QNetwork(4, 2, 8)
    target_network = dqn.QNetwork(4, 2, 8)
    next_obs = torch.randn(64, 4)
    with torch.no_grad():
        chosen = q_network(next_obs).argmax(dim=1)  # the online network picks a'
        scored = target_network(next_obs)[torch.arange(64), chosen]  # the target network scores it
    assert (chosen != target_network(next_obs).argmax(dim=1)).any()  # the two nets disagree somewhere
    returns, discount = torch.full((64,), 2.0), torch.full((64,), 0.9**3)
    terminated = torch.zeros(64)
    terminated[1::2] = 1.0  # odd rows: the pole fell; even rows: truncated or going on
    y = dqn.double_dqn_target(q_network, target_network, returns, next_obs, terminated, discount)
    torch.testing.assert_close(y[0::2], 2.0 + 0.9**3 * scored[0::2])
    assert torch.equal(y[1::2], returns[1::2])


def test_epsilon_schedule():
    assert dqn.linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert dqn.linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert dqn.linear_schedule(1.0, 0.1, 100, 100) == pytest.approx(0.1)
    assert dqn.linear_schedule(1.0, 0.1, 100, 10_000) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1,500-step run with validation rounds at 500, 1000, 1500: (run directory, its checkpoint)."""
    tmp_path = tmp_path_factory.mktemp("trained")
    command = [sys.executable, os.path.join(REPO, "cartpole_dqn.py"), "--runs-dir", str(tmp_path / "runs")]
    command += ["--total-steps", "1500", "--save-model", "--eval-episodes", "0", "--select-interval", "500"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    return run_dir, os.path.join(run_dir, "checkpoint.pt")


def test_checkpoint_keeps_the_best_on_validation(trained):
    run_dir, checkpoint = trained
    state = torch.load(checkpoint, weights_only=True)
    assert tuple(state) == KEYS
    assert state["global_step"] == 1500 and state["optimizer"] is not None
    with open(os.path.join(run_dir, "metrics.csv")) as f:  # validation rounds at 500, 1000, 1500
        rounds = [(int(r["global_step"]), float(r["val_return"])) for r in csv.DictReader(f) if r["val_return"]]
    assert [step for step, _ in rounds] == [500, 1000, 1500]
    best = max(v for _, v in rounds)  # the kept network is the latest of the best on validation
    assert state["kept_score"] == best and state["kept_step"] == max(s for s, v in rounds if v == best)


def test_resume_continues_the_step_count(trained, run_script, tmp_path):
    _, checkpoint = trained
    resumed = run_script(
        "cartpole_dqn.py", "--total-steps", "2500", "--resume", checkpoint, "--save-model", "--eval-episodes", "0",
        "--log-interval", "500",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "step      2000/2500" in resumed.stdout
    (new_run,) = run_dirs(tmp_path)
    assert torch.load(os.path.join(new_run, "checkpoint.pt"), weights_only=True)["global_step"] == 2500


def test_resume_with_another_network_is_one_line(trained, run_script, tmp_path):
    _, checkpoint = trained
    result = run_script("cartpole_dqn.py", "--resume", checkpoint, "--hidden-size", "64", "--total-steps", "2000")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--hidden-size 128" in lines[0], result.stderr


def test_eval_checkpoint_plays_the_kept_model_and_films_it(trained, run_script, tmp_path):
    _, checkpoint = trained
    state = torch.load(checkpoint, weights_only=True)
    evaluated = run_script("cartpole_dqn.py", "--eval-checkpoint", checkpoint, "--eval-episodes", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    (eval_run,) = run_dirs(tmp_path)
    result = json.load(open(os.path.join(eval_run, "eval.json")))
    assert result["episodes"] == 2 and result["kept_step"] == state["kept_step"]
    assert os.path.getsize(os.path.join(eval_run, "videos", "eval.mp4")) > 0
    assert not os.path.exists(os.path.join(eval_run, "metrics.csv"))  # no training happened

    # benchmarks/make_gif.py films the same checkpoint through --eval-checkpoint into a GIF
    gif = tmp_path / "agent.gif"
    command = [sys.executable, os.path.join(REPO, "benchmarks", "make_gif.py"), "--script"]
    command += [os.path.join(REPO, "cartpole_dqn.py"), "--checkpoint", checkpoint, "--out", str(gif), "--seconds", "1"]
    made = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    assert len(imageio.mimread(gif)) > 5  # 1 s at 50 frames/s, every second frame (repeats merge)


def test_learns_cartpole(run_script, tmp_path):
    """8k steps must lift the running mean of 20 training episodes far above chance (~22).

    DQN on CartPole oscillates while it learns, so the test asks for the best running mean of the
    run rather than the last one. With learning disabled (no optimizer.step()) it stays below 40.
    """
    result = run_script("cartpole_dqn.py", "--total-steps", "8000", "--eval-episodes", "0", "--seed", "1")
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    _, _, returns = read_episodes(os.path.join(run_dir, "metrics.csv"))
    best = np.convolve(returns, np.ones(20) / 20, mode="valid").max()
    assert best >= 120, f"best mean of 20 training episodes {best:.1f} after 8k steps"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_saves_a_checkpoint_that_the_printed_command_resumes(tmp_path, signum):
    """Without --save-model, Ctrl-C or SIGTERM still saves; the printed `continue with:` command,
    run as printed from another directory, continues the step count."""
    state, text = stop_with_signal(
        tmp_path, "cartpole_dqn.py", ["--total-steps", "1000000", "--log-interval", "500"], signum
    )
    assert 500 <= state["global_step"] < 1_000_000
    (run_dir,) = run_dirs(tmp_path)
    (command,) = [line.removeprefix("continue with: ") for line in text.splitlines() if "continue with:" in line]
    argv = shlex.split(command)
    assert argv[0] == "python" and argv[1] == os.path.join(REPO, "cartpole_dqn.py")
    more = ["--total-steps", str(state["global_step"] + 500), "--eval-episodes", "0", "--log-interval", "100"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, *argv[1:], *more, "--save-model"], cwd=elsewhere, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    resumed = [d for d in run_dirs(tmp_path) if d != run_dir][0]
    with open(os.path.join(resumed, "metrics.csv")) as f:
        steps = [int(r["global_step"]) for r in csv.DictReader(f) if r["kind"] == "log"]
    assert steps and steps[0] > state["global_step"]  # counting went on from the stop
    final = torch.load(os.path.join(resumed, "checkpoint.pt"), weights_only=True)
    assert final["global_step"] == state["global_step"] + 500


def test_full_disk_during_the_checkpoint_is_one_line(run_script, tmp_path):
    """A file-size limit makes every write past 50 kB fail as on a full disk (EFBIG as ENOSPC):
    one `error:` line, exit 1, no temporary file left."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    result = run_script(
        "cartpole_dqn.py", "--total-steps", "300", "--save-model", "--eval-episodes", "0", preexec_fn=limit_file_size
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write checkpoint"), result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert sorted(os.listdir(run_dir)) == ["metrics.csv"]
