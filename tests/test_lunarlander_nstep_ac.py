"""lunarlander_nstep_ac.py: n-step returns, the loss and the direction of one update, the KL brake,
checkpoints, learning. One run stopped by SIGTERM (`stopped`) and its resumption (`resumed`) feed the
checkpoint, resume and evaluation tests."""

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

import lunarlander_nstep_ac as m
from common.checkpoint import KEYS
from common.metrics import read_episodes
from conftest import REPO, run_dirs, stop_with_signal


def test_nstep_returns_termination_and_truncation_inside_the_window():
    gamma = 0.5
    # env 0: terminates at t=1, is truncated at t=2 (V(final state) = 10), goes on at t=3.
    # env 1: no episode end: plain discounted sum bootstrapped from V(s_4) = 8.
    # env 2: terminated and truncated at t=3 at once: termination wins, no bootstrap.
    rewards = torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0], [3.0, 1.0, 1.0], [4.0, 1.0, 6.0]])
    terminated = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1]])
    truncated = torch.tensor([[False, False, False], [False, False, False], [True, False, False], [False, False, True]])
    final_values = torch.tensor([[0.0, 0, 0], [0, 0, 0], [10, 0, 0], [0, 0, 99]])
    last_values = torch.tensor([100.0, 8.0, 50.0])
    returns = m.nstep_returns(rewards, terminated, truncated, final_values, last_values, gamma)
    expected = torch.tensor(
        [
            [1 + 0.5 * 2, 1 + 0.5 * 2.75, 1 + 0.5 * 3],
            [2.0, 1 + 0.5 * 3.5, 1 + 0.5 * 4],
            [3 + 0.5 * 10, 1 + 0.5 * 5, 1 + 0.5 * 6],
            [4 + 0.5 * 100, 1 + 0.5 * 8, 6.0],
        ]
    )
    torch.testing.assert_close(returns, expected)


def test_actor_critic_loss_terms_and_the_detached_advantage():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    values = torch.tensor([1.0, -1.0], requires_grad=True)
    actions = torch.tensor([1, 0])
    returns = torch.tensor([3.0, 0.0])
    loss, logged = m.actor_critic_loss(logits, values, actions, returns, vf_coef=0.5, ent_coef=0.1)
    dist = Categorical(logits=logits.detach())
    advantages = returns - values.detach()  # 2, 1
    policy_loss = -(dist.log_prob(actions) * advantages).mean().item()
    value_loss = 0.5 * ((returns - values.detach()) ** 2).mean().item()  # ½ mean(4, 1)
    entropy = dist.entropy().mean().item()
    assert logged == pytest.approx({"policy_loss": policy_loss, "value_loss": 1.25, "entropy": entropy})
    assert loss.item() == pytest.approx(policy_loss + 0.5 * value_loss - 0.1 * entropy)
    loss.backward()
    # only the critic's term reaches V(s): d/dV c_V ½ mean((G - V)²) = -c_V (G - V) / n
    torch.testing.assert_close(values.grad, -0.5 * (returns - values.detach()) / 2)


def test_one_update_moves_toward_positive_and_away_from_negative_advantage():
    torch.manual_seed(0)
    model = m.ActorCritic(obs_dim=8, n_actions=4, hidden=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    obs = torch.randn(1, 8).repeat(2, 1)  # one state, two actions
    actions = torch.tensor([2, 0])
    with torch.no_grad():
        logits = model.logits(obs)
        values = model.value(obs)
    returns = values + torch.tensor([2.0, 0.0])  # G - V(s): action 2 is better than action 0
    m.update(model, optimizer, obs, actions, returns, m.Args(ent_coef=0.0))
    with torch.no_grad():
        new_logits = model.logits(obs)
        new_values = model.value(obs)
    before = Categorical(logits=logits).probs[0]
    after = Categorical(logits=new_logits).probs[0]
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
    p = torch.tensor([0.5, 0.5])
    q = torch.tensor([0.9, 0.1])
    expected = float((p * (p / q).log()).sum())
    assert m.kl_divergence(p.log()[None], q.log()[None]) == pytest.approx(expected, rel=1e-5)


def test_kl_brake_slows_after_a_large_step_and_recovers_after_small_ones():
    target = 3e-5
    assert m.brake_learning_rate(1.0, 7e-5, target) == pytest.approx(1 / 1.5)  # KL > 2 target
    assert m.brake_learning_rate(0.5, 3e-5, target) == 0.5  # in between: unchanged
    assert m.brake_learning_rate(0.5, 1e-5, target) == pytest.approx(0.75)  # KL < target / 2
    assert m.brake_learning_rate(0.9, 1e-5, target) == 1.0  # never above the scheduled rate
    assert m.brake_learning_rate(0.5, 1.0, 0.0) == 0.5  # target 0: no brake


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


def test_evaluate_plays_greedy_episodes_on_consecutive_seeds():
    torch.manual_seed(0)
    model = m.ActorCritic(obs_dim=8, n_actions=4, hidden=8)
    args = m.Args()
    two = m.evaluate(model, args, 2, seed=7, device="cpu")
    second_alone = m.evaluate(model, args, 1, seed=8, device="cpu")
    assert len(two) == 2 and two[1] == second_alone[0]


def run_lunar(tmp_path, *args: str):
    command = [sys.executable, os.path.join(REPO, "lunarlander_nstep_ac.py"), "--runs-dir", str(tmp_path / "runs")]
    return subprocess.run([*command, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """SIGTERM after the first progress line, without --save-model: (checkpoint state, its path)."""
    tmp_path = tmp_path_factory.mktemp("stopped")
    args = ["--total-steps", "10000000", "--log-interval", "2000"]
    state, _ = stop_with_signal(tmp_path, "lunarlander_nstep_ac.py", args, signal.SIGTERM)
    (run_dir,) = run_dirs(tmp_path)
    return state, os.path.join(run_dir, "checkpoint.pt")


@pytest.fixture(scope="module")
def resumed(stopped, tmp_path_factory):
    """--resume the stopped run for two validation rounds, 2048 steps apart, then the final evaluation:
    (the command's result, its run directory, the validation rounds as (step, greedy mean))."""
    state, checkpoint = stopped
    tmp_path = tmp_path_factory.mktemp("resumed")
    total_steps = (state["global_step"] // 2048 + 2) * 2048  # updates are 256 steps: both rounds fall on 2048s
    result = run_lunar(
        tmp_path, "--resume", checkpoint, "--total-steps", str(total_steps), "--select-interval", "2048",
        "--select-episodes", "2", "--eval-episodes", "3", "--save-model",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rounds = [(int(r["global_step"]), float(r["val_return"])) for r in csv.DictReader(f) if r["val_return"]]
    assert [step for step, _ in rounds] == [total_steps - 2048, total_steps]
    return result, run_dir, rounds


def test_sigterm_saves_a_checkpoint(stopped):
    state, _ = stopped
    assert tuple(state) == KEYS and state["script"] == "lunarlander_nstep_ac"
    assert 2000 <= state["global_step"] < 10_000_000 and "kept_model" in state
    assert 0 < state["resume_state"]["kl_brake"] <= 1.0
    # no validation round yet (the first comes at 50k): the kept model is the initial one
    assert state["kept_step"] == 0 and state["kept_score"] == -float("inf")


def test_resume_goes_on_validates_and_ends_with_the_final_evaluation(stopped, resumed):
    state, checkpoint = stopped
    result, run_dir, rounds = resumed
    assert f"resumed from {checkpoint} at step {state['global_step']}" in result.stdout
    assert result.stdout.count("validation at step") == 2
    final = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    assert final["global_step"] == rounds[-1][0]
    best = max(score for _, score in rounds)  # the kept model: the first of the best on validation
    assert round(final["kept_score"], 6) == best  # metrics.csv rounds to 6 decimals
    assert final["kept_step"] == min(step for step, score in rounds if score == best)
    evaluation = json.load(open(os.path.join(run_dir, "eval.json")))
    assert evaluation["episodes"] == 3 and len(evaluation["per_episode"]) == 3
    assert evaluation["kept_step"] == final["kept_step"]
    assert "3 greedy episodes: mean return" in result.stdout


def test_eval_checkpoint_plays_the_kept_model_and_films_it(resumed, tmp_path):
    _, trained_dir, _ = resumed
    checkpoint = os.path.join(trained_dir, "checkpoint.pt")
    kept_step = torch.load(checkpoint, weights_only=True)["kept_step"]
    result = run_lunar(tmp_path, "--eval-checkpoint", checkpoint, "--eval-episodes", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"model kept at step {kept_step}, 1 greedy episodes: mean return" in result.stdout
    (eval_run,) = run_dirs(tmp_path)
    evaluation = json.load(open(os.path.join(eval_run, "eval.json")))
    assert evaluation["episodes"] == 1 and evaluation["kept_step"] == kept_step
    assert os.path.getsize(os.path.join(eval_run, "videos", "eval.mp4")) > 0
    assert not os.path.exists(os.path.join(eval_run, "metrics.csv"))  # no training happened


def test_learns_to_stop_crashing(run_script, tmp_path):
    """A random policy scores about -180; a learning one should be far above that by 150k steps."""
    result = run_script(
        "lunarlander_nstep_ac.py", "--total-steps", "150000", "--eval-episodes", "0", "--seed", "1", timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    _, _, returns = read_episodes(os.path.join(run_dir, "metrics.csv"))
    first = returns[:100].mean()
    last = returns[-100:].mean()
    print(f"mean return of the first 100 episodes {first:.1f}, of the last 100 {last:.1f}")
    assert last > -60 and last > first + 100, (first, last)
