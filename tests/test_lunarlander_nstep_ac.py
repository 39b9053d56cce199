"""lunarlander_nstep_ac.py: n-step returns, the direction of one update, checkpoints, learning."""

import glob
import json
import os
import signal

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

import lunarlander_nstep_ac as m
from common.metrics import read_episodes
from conftest import run_dirs, stop_with_signal


def test_nstep_returns_termination_and_truncation_inside_the_window():
    gamma = 0.5
    # env 0: terminates at t=1, is truncated at t=2 (V(final state) = 10), goes on at t=3.
    # env 1: no episode end: plain discounted sum bootstrapped from V(s_4) = 8.
    # env 2: terminated and truncated at t=3 at once: termination wins, no bootstrap.
    rewards = torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0], [3.0, 1.0, 1.0], [4.0, 1.0, 6.0]])
    terminated = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1]])
    truncated = torch.tensor([[False, False, False], [False, False, False], [True, False, False], [False, False, True]])
    final_values = torch.tensor([[0.0, 0, 0], [0, 0, 0], [10, 0, 0], [0, 0, 99]])
    next_values = torch.tensor([100.0, 8.0, 50.0])
    returns = m.nstep_returns(rewards, terminated, truncated, final_values, next_values, gamma)
    expected = torch.tensor(
        [
            [1 + 0.5 * 2, 1 + 0.5 * 2.75, 1 + 0.5 * 3],
            [2.0, 1 + 0.5 * 3.5, 1 + 0.5 * 4],
            [3 + 0.5 * 10, 1 + 0.5 * 5, 1 + 0.5 * 6],
            [4 + 0.5 * 100, 1 + 0.5 * 8, 6.0],
        ]
    )
    torch.testing.assert_close(returns, expected)


def test_one_update_moves_toward_positive_and_away_from_negative_advantage():
    torch.manual_seed(0)
    model = m.ActorCritic(obs_dim=8, n_actions=4, hidden=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    obs, actions = torch.randn(1, 8).repeat(2, 1), torch.tensor([2, 0])  # one state, two actions
    with torch.no_grad():
        logits, values = model.logits(obs), model.value(obs)
    returns = values + torch.tensor([2.0, 0.0])  # G - V(s): action 2 is better than action 0
    m.update(model, optimizer, obs, actions, returns, m.Args(ent_coef=0.0))
    with torch.no_grad():
        new_logits, new_values = model.logits(obs), model.value(obs)
    before, after = Categorical(logits=logits).probs[0], Categorical(logits=new_logits).probs[0]
    assert after[2] > before[2] and after[0] < before[0], (before, after)
    assert new_values[0] > values[0]  # the critic moves toward the mean return V(s) + 1


def test_explained_variance():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert m.explained_variance(returns, returns) == 1.0
    assert m.explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)  # the mean only
    assert m.explained_variance(-returns, returns) < 0  # worse than predicting the mean


def test_kl_divergence():
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    assert m.kl_divergence(logits, logits + 5.0) == pytest.approx(0.0, abs=1e-6)  # same π
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    expected = float((p * (p / q).log()).sum())
    assert m.kl_divergence(p.log()[None], q.log()[None]) == pytest.approx(expected, rel=1e-5)


def test_obs_stats_match_numpy_and_travel_in_the_state_dict():
    model = m.ActorCritic(obs_dim=3, n_actions=2, hidden=8)
    batches = [torch.randn(50, 3) * 4 + 2, torch.randn(70, 3) + 1]
    for batch in batches:
        model.update_obs_stats(batch)
    stacked = torch.cat(batches).numpy()
    np.testing.assert_allclose(model.obs_mean, stacked.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.obs_var, stacked.var(0), rtol=1e-3)
    restored = m.ActorCritic(obs_dim=3, n_actions=2, hidden=8)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored.normalize(batches[0]), model.normalize(batches[0]))


def test_checkpoint_eval_and_resume(run_script, tmp_path):
    result = run_script("lunarlander_nstep_ac.py", "--total-steps", "1024", "--eval-episodes", "0", "--save-model")
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = glob.glob(str(tmp_path / "runs" / "*" / "checkpoint.pt"))
    result = run_script("lunarlander_nstep_ac.py", "--eval-checkpoint", checkpoint, "--eval-episodes", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "over 1 fresh episodes: greedy mean return" in result.stdout
    result = run_script(
        "lunarlander_nstep_ac.py", "--resume", checkpoint, "--total-steps", "2048", "--eval-episodes", "0"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout
    assert len(run_dirs(tmp_path)) == 3


def test_learns_to_stop_crashing(run_script, tmp_path):
    """A random policy scores about -180; a learning one should be far above that by 150k steps."""
    result = run_script(
        "lunarlander_nstep_ac.py", "--total-steps", "150000", "--eval-episodes", "0", "--seed", "1", timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    _, _, returns = read_episodes(os.path.join(run_dir, "metrics.csv"))
    first, last = returns[:100].mean(), returns[-100:].mean()
    print(f"mean return of the first 100 episodes {first:.1f}, of the last 100 {last:.1f}")
    assert last > -60 and last > first + 100, (first, last)


def test_final_evaluation_reports_kept_model_greedy_and_sampled(run_script, tmp_path):
    result = run_script(
        "lunarlander_nstep_ac.py",
        "--total-steps",
        "4096",
        "--select-interval",
        "2048",
        "--select-episodes",
        "2",
        "--eval-episodes",
        "3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    evaluation = json.load(open(os.path.join(run_dir, "eval.json")))
    assert evaluation["episodes"] == 3 and len(evaluation["sampled_returns"]) == 3
    assert evaluation["kept_step"] in (2048, 4096)
    assert result.stdout.count("validation at step") == 2


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path, run_script):
    state, _ = stop_with_signal(
        tmp_path, "lunarlander_nstep_ac.py", ["--total-steps", "10000000", "--log-interval", "2000"], signal.SIGTERM
    )
    assert 2000 <= state["global_step"] < 10_000_000 and "kept_model" in state
    (run_dir,) = run_dirs(tmp_path)
    result = run_script(
        "lunarlander_nstep_ac.py",
        "--resume",
        os.path.join(run_dir, "checkpoint.pt"),
        "--total-steps",
        str(state["global_step"] + 1024),
        "--eval-episodes",
        "0",
        "--save-model",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = [d for d in run_dirs(tmp_path) if d != run_dir][0]
    final = torch.load(os.path.join(resumed, "checkpoint.pt"), weights_only=True)
    assert final["global_step"] == state["global_step"] + 1024
