"""cartpole_dqn.py: replay buffer, TD target, epsilon schedule, checkpoints and learning."""
import csv
import json
import os
import resource
import signal

import numpy as np
import pytest
import torch

import cartpole_dqn as dqn
from common.metrics import read_episodes
from conftest import run_dirs, stop_with_signal


def test_replay_buffer_wraps_around():
    buffer = dqn.ReplayBuffer(capacity=5, obs_shape=(2,), seed=0)
    for i in range(7):
        buffer.add(np.full(2, i), i % 2, float(i), np.full(2, i + 1), i == 6)
    assert buffer.size == 5 and buffer.pos == 2
    # slots 0 and 1 were overwritten by transitions 5 and 6; slots 2-4 still hold 2-4
    assert list(buffer.rewards) == [5, 6, 2, 3, 4]
    assert list(buffer.obs[:, 0]) == [5, 6, 2, 3, 4] and list(buffer.next_obs[:, 0]) == [6, 7, 3, 4, 5]
    assert list(buffer.terminated) == [0, 1, 0, 0, 0]


def test_replay_buffer_samples_only_stored_transitions():
    buffer = dqn.ReplayBuffer(capacity=100, obs_shape=(3,), seed=0)
    for i in range(10):
        buffer.add(np.full(3, i), 1, float(i), np.full(3, i + 1), False)
    obs, actions, rewards, next_obs, terminated = buffer.sample(1000, "cpu")
    assert obs.shape == (1000, 3) and obs.dtype == torch.float32 and actions.dtype == torch.int64
    assert set(rewards.tolist()) == set(range(10))  # every stored one, nothing from empty slots
    assert torch.equal(next_obs[:, 0], obs[:, 0] + 1) and torch.equal(rewards, obs[:, 0])


def test_td_target_bootstraps_on_truncation_not_on_termination():
    target_net = dqn.QNetwork(4, 2, 8)
    next_obs = torch.randn(2, 4)
    max_next_q = target_net(next_obs).max(dim=1).values.detach()
    rewards = torch.tensor([1.0, 1.0])
    # row 0: truncated by the time limit (terminated=0), row 1: the pole fell (terminated=1)
    y = dqn.td_target(target_net, rewards, next_obs, torch.tensor([0.0, 1.0]), gamma=0.9)
    assert torch.allclose(y[0], 1.0 + 0.9 * max_next_q[0])
    assert y[1] == 1.0


def test_epsilon_schedule():
    assert dqn.linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert dqn.linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert dqn.linear_schedule(1.0, 0.1, 100, 100) == pytest.approx(0.1)
    assert dqn.linear_schedule(1.0, 0.1, 100, 10_000) == pytest.approx(0.1)


def test_checkpoint_resume_and_eval_checkpoint(run_script, tmp_path):
    trained = run_script("cartpole_dqn.py", "--total-steps", "1500", "--save-model",
                         "--eval-episodes", "0")
    assert trained.returncode == 0, trained.stderr
    (run_dir,) = run_dirs(tmp_path)
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == 1500 and "optimizer" in state

    resumed = run_script("cartpole_dqn.py", "--total-steps", "2500", "--resume", checkpoint,
                         "--save-model", "--eval-episodes", "0", "--log-interval", "500")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "step      2000/2500" in resumed.stdout
    new_run = [d for d in run_dirs(tmp_path) if d != run_dir][0]
    assert torch.load(os.path.join(new_run, "checkpoint.pt"), weights_only=True)["global_step"] == 2500

    evaluated = run_script("cartpole_dqn.py", "--eval-checkpoint", checkpoint, "--eval-episodes", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    eval_run = sorted(set(run_dirs(tmp_path)) - {run_dir, new_run})[0]
    assert json.load(open(os.path.join(eval_run, "eval.json")))["episodes"] == 2
    assert os.path.getsize(os.path.join(eval_run, "videos", "eval.mp4")) > 0
    assert not os.path.exists(os.path.join(eval_run, "metrics.csv"))  # no training happened


def test_learns_cartpole(run_script, tmp_path):
    """8k steps must lift the running mean of 20 training episodes far above chance (~22).

    DQN on CartPole oscillates while it learns, so the test asks for the best running mean of the
    run rather than the last one. With learning disabled (no optimizer.step()) it stays below 40.
    """
    result = run_script("cartpole_dqn.py", "--total-steps", "8000", "--eval-episodes", "0",
                        "--seed", "1")
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    _, _, returns = read_episodes(os.path.join(run_dir, "metrics.csv"))
    best = np.convolve(returns, np.ones(20) / 20, mode="valid").max()
    assert best >= 120, f"best mean of 20 training episodes {best:.1f} after 8k steps"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_saves_a_checkpoint_that_resumes(tmp_path, run_script, signum):
    """Without --save-model, Ctrl-C or SIGTERM still saves; --resume continues the step count."""
    state, _ = stop_with_signal(tmp_path, "cartpole_dqn.py", ["--total-steps", "1000000",
                                                              "--log-interval", "500"], signum)
    assert 500 <= state["global_step"] < 1_000_000
    (run_dir,) = run_dirs(tmp_path)
    result = run_script("cartpole_dqn.py", "--resume", os.path.join(run_dir, "checkpoint.pt"),
                        "--total-steps", str(state["global_step"] + 500), "--eval-episodes", "0",
                        "--log-interval", "100", "--save-model")
    assert result.returncode == 0, result.stderr
    resumed = [d for d in run_dirs(tmp_path) if d != run_dir][0]
    with open(os.path.join(resumed, "metrics.csv")) as f:
        steps = [int(r["global_step"]) for r in csv.DictReader(f) if r["kind"] == "log"]
    assert steps and steps[0] > state["global_step"]  # counting went on from the stop
    final = torch.load(os.path.join(resumed, "checkpoint.pt"), weights_only=True)
    assert final["global_step"] == state["global_step"] + 500


def test_full_disk_during_the_checkpoint_is_one_line(run_script, tmp_path):
    """A file-size limit makes every write past 50 kB fail as on a full disk (ENOSPC and EFBIG
    reach torch's zip writer the same way): one `error:` line, exit 1, no temporary file left."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    result = run_script("cartpole_dqn.py", "--total-steps", "300", "--save-model",
                        "--eval-episodes", "0", preexec_fn=limit_file_size)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write checkpoint"), result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert sorted(os.listdir(run_dir)) == ["learning_curve.png", "metrics.csv"]
