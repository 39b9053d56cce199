"""cartpole_dqn.py: replay buffer, TD target, epsilon schedule, checkpoints and learning."""
import json
import os

import numpy as np
import pytest
import torch

import cartpole_dqn as dqn
from conftest import run_dirs


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
    """12k steps of the default configuration must balance the pole far beyond chance (~22).

    With learning disabled (no optimizer.step()) the greedy return stays near 10-50 and this fails.
    """
    result = run_script("cartpole_dqn.py", "--total-steps", "12000", "--eval-episodes", "5",
                        "--seed", "1")
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    greedy = json.load(open(os.path.join(run_dir, "eval.json")))["mean_return"]
    assert greedy >= 150, f"greedy mean return {greedy} after 12k steps"
