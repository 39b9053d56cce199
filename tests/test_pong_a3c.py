"""pong_a3c.py: n-step returns, the loss, the shared Adam, the colour video env, evaluation seeds, one
run stopped by SIGTERM whose checkpoint the resume test continues, Ctrl-C to the group, a dead worker,
learning (on Breakout), the shipped model."""

import csv
import json
import math
import os
import re
import signal
import time

import numpy as np
import pytest
import torch

import pong_a3c as m
from common.checkpoint import KEYS
from conftest import REPO, alive, descendants, run_dirs, start_script, stop_with_signal, wait_for


def test_nstep_returns_bootstrap_episode_ends_and_truncation():
    rewards = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.float32)  # 3 steps x 2 envs
    terminated = np.array([[False, False], [True, False], [False, False]])
    no_truncation = np.zeros((3, 2), dtype=bool)
    final_values = np.full((3, 2), 4.0, np.float32)
    last_values = np.array([10.0, 10.0], np.float32)
    returns = m.nstep_returns(rewards, terminated, no_truncation, final_values, last_values, gamma=0.5)
    # env 0: the episode ends at t=1, so G_1 = 0 and G_0 = 1 + 0.5 * 0; G_2 = 1 + 0.5 * 10.
    # env 1: G_2 = 1 + 5 = 6, G_1 = 0.5 * 6, G_0 = 0.5 * 3.
    np.testing.assert_allclose(returns, [[1.0, 1.5], [0.0, 3.0], [6.0, 6.0]])
    # env 1 truncated at t=1: G_1 = 0 + 0.5 V(final state) = 2, G_0 = 0.5 * 2; G_2 does not reach back.
    truncated = np.array([[False, False], [False, True], [False, False]])
    returns = m.nstep_returns(rewards, terminated, truncated, final_values, last_values, gamma=0.5)
    np.testing.assert_allclose(returns, [[1.0, 1.0], [0.0, 2.0], [6.0, 6.0]])


def test_nstep_returns_without_truncation_are_the_old_numbers_bit_for_bit():
    """The old code folded a truncation's bootstrap into the reward and ran R_t = r_t + γ (1 - done_t)
    R_{t+1} with a float64 running return over float32 arrays; without truncation the new form must
    give the same bits, or learning would change."""
    rng = np.random.default_rng(0)
    rewards = rng.choice([-1.0, 0.0, 1.0], size=(20, 4)).astype(np.float32)
    terminated = rng.random((20, 4)) < 0.1
    last_values = rng.normal(size=4).astype(np.float32)
    old = np.zeros_like(rewards)
    running = last_values
    for t in reversed(range(20)):
        old[t] = running = rewards[t] + 0.99 * (1.0 - terminated[t]) * running
    no_truncation = np.zeros_like(terminated)
    new = m.nstep_returns(rewards, terminated, no_truncation, np.zeros_like(rewards), last_values, 0.99)
    assert new.dtype == np.float32 and np.array_equal(new, old)


def test_actor_critic_loss_pushes_up_advantaged_actions():
    logits = torch.zeros(2, 3, requires_grad=True)
    values = torch.zeros(2, requires_grad=True)
    loss, terms = m.actor_critic_loss(
        logits, values, torch.tensor([0, 1]), torch.tensor([1.0, -1.0]), vf_coef=0.5, ent_coef=0.0
    )
    loss.backward()
    assert logits.grad[0, 0] < 0 and logits.grad[1, 1] > 0  # gradient descent raises π(a0|s0)
    assert set(terms) == {"policy_loss", "value_loss", "entropy"} and all(type(v) is float for v in terms.values())
    np.testing.assert_allclose(terms["value_loss"], 0.5)
    np.testing.assert_allclose(terms["entropy"], np.log(3), rtol=1e-6)


def test_shared_adam_state_is_in_shared_memory_and_rom_names():
    model = m.ActorCritic(6)
    optimizer = m.SharedAdam(model.parameters(), 1e-3)
    optimizer.load_state_dict(optimizer.state_dict())  # what --resume does
    optimizer.share_memory()
    assert all(t.is_shared() for s in optimizer.state.values() for t in s.values())
    assert m.rom_name("ALE/Pong-v5") == "pong" and m.rom_name("ALE/MsPacman-v5") == "ms_pacman"


def test_the_colour_env_of_the_videos_plays_the_network_envs_game():
    """Same seed, same actions (sticky ones too): the same rewards and episode ends, and the colour
    screen, grayscaled and shrunk, looks like the network's newest 84x84 frame."""
    args = m.Args(sticky_actions=0.25)
    env, screen = m.make_env(args), m.make_env(args, colour=True)
    obs, frame = env.reset(seed=3)[0], screen.reset(seed=3)[0]
    rng, rewards = np.random.default_rng(0), []
    for _ in range(1500):
        action = rng.integers(0, 6, size=1)
        obs, reward, terminated, truncated, _ = env.step(action)
        frame, colour_reward, colour_terminated, colour_truncated, _ = screen.step(action)
        rewards.append(reward[0])
        assert (reward, terminated, truncated) == (colour_reward, colour_terminated, colour_truncated)
    assert frame.shape == (1, 1, 210, 160, 3) and np.count_nonzero(rewards) > 5
    gray = frame[0, -1].astype(np.float32).mean(-1)
    shrunk = torch.nn.functional.interpolate(torch.from_numpy(gray)[None, None], (84, 84), mode="area")
    assert np.corrcoef(shrunk.flatten().numpy(), obs[0, -1].flatten())[0, 1] > 0.9


def test_evaluate_plays_episode_i_on_seed_plus_i_and_cuts_long_games():
    torch.manual_seed(0)
    model = m.ActorCritic(6)
    args = m.Args(eval_max_steps=400)  # a game takes longer: all are cut
    two = m.evaluate(model, args, 2, seed=7, device="cpu")
    second_alone = m.evaluate(model, args, 1, seed=8, device="cpu")
    assert len(two) == 2 and two[1] == second_alone[0]
    assert all(-21 < episode["return"] <= 0 for episode in two)  # cut before the 21st point


def read_log_steps(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [int(r["global_step"]) for r in csv.DictReader(f) if r["kind"] == "log"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """SIGTERM mid-training, without --save-model: the workers stop, the checkpoint is written all the
    same, exit 143. (checkpoint state, its path)"""
    tmp_path = tmp_path_factory.mktemp("stopped")
    args = ["--total-steps", "10000000", "--n-workers", "2", "--log-interval", "500", "--no-save-model"]
    state, _ = stop_with_signal(tmp_path, "pong_a3c.py", args, signal.SIGTERM)
    (run_dir,) = run_dirs(tmp_path)
    return state, os.path.join(run_dir, "checkpoint.pt")


def test_sigterm_saves_a_checkpoint_of_the_latest_network(stopped):
    state, _ = stopped
    assert tuple(state) == KEYS and state["script"] == "pong_a3c"
    assert state["global_step"] >= 500 and state["optimizer"]["state"][0]["step"] > 0
    # no model is selected: the kept model is the trained one, kept at the last step
    assert all(torch.equal(state["kept_model"][name], weights) for name, weights in state["model"].items())
    assert state["kept_step"] == state["global_step"] and math.isnan(state["kept_score"])
    assert state["resume_state"] is None


def test_resume_goes_on_follows_the_schedule_and_ends_with_the_final_evaluation(stopped, run_script, tmp_path):
    """--resume from the stopped run: the step count goes on from there, the learning rate follows the
    schedule of the whole run (here 0 from the stopped step on: the updates leave the network as it was),
    a checkpoint at the end, then the greedy evaluation of the network at that step."""
    state, checkpoint = stopped
    more_steps = 300
    result = run_script(
        "pong_a3c.py",
        "--resume",
        checkpoint,
        "--total-steps",
        str(state["global_step"] + more_steps),
        "--n-workers",
        "1",
        "--eval-episodes",
        "1",
        "--log-interval",
        "100",
        "--learning-rate-final",
        "0",
        "--schedule-steps",
        str(state["global_step"]),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {checkpoint} at step {state['global_step']}" in result.stdout
    (resumed,) = run_dirs(tmp_path)
    steps = read_log_steps(resumed)
    assert steps and min(steps) > state["global_step"], steps
    final = torch.load(os.path.join(resumed, "checkpoint.pt"), weights_only=True)
    assert final["global_step"] >= state["global_step"] + more_steps
    assert final["optimizer"]["state"][0]["step"] > state["optimizer"]["state"][0]["step"]  # updates were made
    assert all(torch.equal(final["model"][name], weights) for name, weights in state["model"].items())
    result = json.load(open(os.path.join(resumed, "eval.json")))
    assert result["episodes"] == 1 and result["kept_step"] == final["global_step"]


def test_ctrl_c_to_the_group_while_workers_start(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group. Sent while the workers are still
    importing torch, it used to kill them with a KeyboardInterrupt (exit 1); now they ignore it from
    birth and the main process stops them: exit 130, a checkpoint, no traceback. (That a stopped
    run's checkpoint resumes is the test above.)"""
    state, _ = stop_with_signal(
        tmp_path,
        "pong_a3c.py",
        ["--total-steps", "10000000", "--n-workers", "2", "--log-interval", "500"],
        signal.SIGINT,
        ready=r"training: Ctrl-C",
        to_group=True,
    )
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert tuple(state) == KEYS


def test_dead_worker_is_reported_and_run_exits_nonzero(tmp_path):
    proc, out, err = start_script(
        tmp_path, "pong_a3c.py", "--total-steps", "10000000", "--n-workers", "2", "--log-interval", "500"
    )
    (victim,) = wait_for(out, r"worker 1 pid (\d+)", proc)
    wait_for(out, r"step +\d+/", proc)
    children = descendants(proc.pid)
    os.kill(int(victim), signal.SIGKILL)
    proc.wait(timeout=20)
    assert proc.returncode == 1
    lines = err.read_text().strip().splitlines()
    assert lines and re.match(rf"error: worker 1 \(pid {victim}\) died with exit code -9", lines[-1])
    time.sleep(1)
    assert not [pid for pid in children if alive(pid)]


def test_learns_breakout_within_minutes(run_script, tmp_path):
    """The same code path at CI cost (a few minutes on 2 cores): Pong's sparse points show no
    progress in that time, so this runs ALE Breakout, whose returns rise within 200k steps (random
    play: about 1.3 per game). It shows that the workers' Hogwild updates improve the policy; it
    does not show that Pong is learned (see docs/pong_a3c.md for that). Sticky actions stay at
    0.25, the setting this test was seen failing with when learning was disabled. The timeout only
    guards against a hang: the pass criterion counts episodes and returns."""
    result = run_script(
        "pong_a3c.py",
        "--env-id",
        "ALE/Breakout-v5",
        "--n-workers",
        "2",
        "--envs-per-worker",
        "4",
        "--learning-rate",
        "5e-4",
        "--total-steps",
        "200000",
        "--eval-episodes",
        "0",
        "--no-save-model",
        "--log-interval",
        "20000",
        "--seed",
        "1",
        "--sticky-actions",
        "0.25",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        returns = [float(r["episode_return"]) for r in csv.DictReader(f) if r["kind"] == "episode"]
    assert len(returns) >= 400, len(returns)
    first, last = np.mean(returns[:200]), np.mean(returns[-200:])
    assert last >= first + 0.5, f"mean return of the first 200 games {first:.2f}, last 200 {last:.2f}"


def test_shipped_model_loads_weights_only_and_wins_a_game(run_script, tmp_path):
    """pretrained/pong_a3c.pt (a shipped model: no optimizer, no resume state) loads with
    weights_only=True and, through --eval-checkpoint, wins a greedy game (a random or untrained agent
    loses about -21) on film, without training."""
    path = os.path.join(REPO, "pretrained", "pong_a3c.pt")
    state = torch.load(path, weights_only=True)
    assert tuple(state) == KEYS and state["model"] is None and state["optimizer"] is None
    assert state["resume_state"] is None and state["kept_step"] == state["global_step"]
    result = run_script("pong_a3c.py", "--eval-checkpoint", path, "--eval-episodes", "1", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert os.path.getsize(os.path.join(run_dir, "videos", "eval.mp4")) > 0
    assert not os.path.exists(os.path.join(run_dir, "metrics.csv"))  # no training happened
    evaluation = json.load(open(os.path.join(run_dir, "eval.json")))
    assert evaluation["mean_return"] > 10 and evaluation["kept_step"] == state["kept_step"]


def test_schedules_are_linear_then_constant_and_constant_by_default():
    assert m.linear_schedule(0.01, 0.001, 8_000_000, 0) == 0.01
    assert m.linear_schedule(0.01, 0.001, 8_000_000, 4_000_000) == pytest.approx(0.0055)
    assert m.linear_schedule(0.01, 0.001, 8_000_000, 9_000_000) == pytest.approx(0.001)
    args = m.Args()
    assert m.linear_schedule(args.ent_coef, args.ent_coef_final, args.schedule_steps, 5_000_000) == 0.01
    assert m.linear_schedule(args.learning_rate, args.learning_rate_final, args.schedule_steps, 5_000_000) == 5e-4
