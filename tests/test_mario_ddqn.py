"""mario_ddqn.py: the Double-DQN target, the frame replay buffer, preprocessing, learning, the checkpoint
schema, clean stops and exact resumes, the no-op-start evaluation, the shipped files, one-line errors.

One short training run (the learning test's) is shared by the tests that need a trained checkpoint."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

import mario_ddqn as m
from common.checkpoint import KEYS
from common.mario import ACTION_SETS, MarioEnv
from common.metrics import read_episodes
from common.run import evaluation_seed
from conftest import REPO, run_dirs, stop_with_signal

SHIPPED = os.path.join(REPO, "pretrained", "mario_ddqn_1-1.pt")
COMMITTED_RUN = os.path.join(REPO, "benchmarks", "mario_run", "checkpoint.pt")


class Fixed(torch.nn.Module):
    """A 'network' that returns the same Q-values whatever the input."""

    def __init__(self, q):
        super().__init__()
        self.q = torch.tensor(q, dtype=torch.float32)

    def forward(self, obs):
        return self.q


def test_double_dqn_target_by_hand():
    online = Fixed([[1.0, 5.0, 0.0], [3.0, 2.0, 1.0], [0.0, 0.0, 9.0]])
    target = Fixed([[10.0, 20.0, 99.0], [30.0, 40.0, 99.0], [7.0, 8.0, -4.0]])
    rewards, terminated = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, 0.0, 1.0])
    discount = torch.tensor(0.5)  # γ^m
    y = m.double_dqn_target(online, target, rewards, torch.zeros(3, 4, 84, 84), terminated, discount)
    # online argmax: actions 1, 0, 2; target values 20, 30, (terminal); y = r + 0.5 * value
    assert torch.allclose(y, torch.tensor([1.0 + 0.5 * 20.0, 2.0 + 0.5 * 30.0, 0.5]))
    # vanilla DQN (max of the target net) would give 1 + 0.5 * 99 and 2 + 0.5 * 99


def test_replay_rebuilds_stacks_and_n_step_returns_across_episodes_and_wraparound():
    """Against naive stacking: frames are numbered, and every sampled (s, a, R, s', done, γ^m) must
    be the one the agent saw, including the first states of episodes and after the buffer wraps;
    the 3-step return stops early at a termination, at a truncated episode's last frame and at
    the newest frame."""
    rng = np.random.default_rng(0)
    buffer = m.FrameReplayBuffer(capacity=23, frame_shape=(1,), seed=0)
    reference, frame_id = {}, 0
    for _ in range(12):  # 12 episodes of 1..19 steps: about 130 frames through 23 slots
        frame_id += 1
        stack = [frame_id] * 4
        buffer.start_episode(np.array([frame_id]))
        length = int(rng.integers(1, 20))
        for t in range(length):
            frame_id += 1
            action, terminated = int(rng.integers(3)), t == length - 1 and rng.random() < 0.5
            next_stack = stack[1:] + [frame_id]
            reference[stack[-1]] = (stack, action, float(frame_id), next_stack, float(terminated))
            buffer.add(action, float(frame_id), terminated, np.array([frame_id]))
            stack = next_stack
    obs, actions, returns, next_obs, terminated, discount = buffer.sample(500, "cpu", n_step=3, gamma=0.5)
    assert obs.dtype == torch.uint8 and obs.shape == (500, 4, 1)
    seen, steps_seen = set(), set()
    for i in range(500):
        key = int(obs[i, -1, 0])
        stack, action, ret, next_stack, done = reference[key]
        steps = 1
        while steps < 3 and not done and next_stack[-1] in reference:  # no transition: episode end
            _, _, reward, next_stack, done = reference[next_stack[-1]]
            ret, steps = ret + 0.5**steps * reward, steps + 1
        got = (
            obs[i, :, 0].tolist(),
            int(actions[i]),
            next_stack == next_obs[i, :, 0].tolist(),
            float(terminated[i]),
            float(discount[i]),
        )
        assert got == (stack, action, True, done, 0.5**steps), (got, key)
        assert abs(float(returns[i]) - ret) < 1e-3 * ret, (float(returns[i]), ret)
        seen.add(key)
        steps_seen.add(steps)
    assert min(seen) > frame_id - 23  # only transitions still in the buffer
    assert len(seen) >= 15  # nearly all of the ~20 sampleable ones
    assert steps_seen == {1, 2, 3}


def test_area_resize_and_preprocessing():
    weights = m.area_matrix(240, 84).numpy()
    assert weights.shape == (84, 240) and np.allclose(weights.sum(axis=1), 1.0)
    assert np.allclose(m.area_matrix(4, 2).numpy(), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])

    env = m.SkipMaxGray(MarioEnv(1, 1, "right"), skip=4)
    frame, _ = env.reset(seed=0)
    assert frame.shape == (84, 84) and frame.dtype == np.uint8 and 0 < frame.mean() < 255
    for _ in range(10):  # 40 frames of walking right
        frame, reward, terminated, truncated, info = env.step(0)
    assert frame.shape == (84, 84) and reward > 0 and info["x_pos"] > 50
    white = np.full((240, 256, 3), 255, np.uint8)
    assert (env.observation(white) == 255).all()
    env.close()


def run_mario(runs_dir, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """conftest's run_script for a module-scoped fixture: `python mario_ddqn.py --runs-dir runs_dir args...`."""
    command = [sys.executable, os.path.join(REPO, "mario_ddqn.py"), "--runs-dir", str(runs_dir), *args]
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The learning test's run (about 40 s here) with --save-model; its run directory. Its checkpoint
    also feeds the schema and evaluation tests."""
    runs = tmp_path_factory.mktemp("trained") / "runs"
    result = run_mario(
        runs,
        *("--actions", "complex", "--total-steps", "4000", "--learning-starts", "500", "--buffer-size", "5000"),
        *("--target-update-interval", "250", "--exploration-steps", "1000", "--seed", "1"),
        *("--eval-episodes", "0", "--log-interval", "500", "--save-model", "--checkpoint-interval", "3000"),
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [os.path.join(runs, d) for d in os.listdir(runs)]
    return run_dir


def test_learns_short_horizon(trained):
    """A reduced configuration of the same code path: 4000 steps with the 12-button action set,
    a small buffer, learning from step 500 and a fast target sync. It does not show that Mario
    clears anything; it shows that the update learns (the Q-values of visited states rise from
    ~0 toward their discounted return) and that acting on it pays: after exploration, episodes
    end well to the right of the start (x = 40), mostly at the first Goomba (x ~ 300)."""
    with open(os.path.join(trained, "metrics.csv"), newline="") as f:
        q_mean = [float(r["q_mean"]) for r in csv.DictReader(f) if r["kind"] == "log"][-1]
    steps, _, x_pos = read_episodes(os.path.join(trained, "metrics.csv"), "x_pos")
    after = x_pos[steps > 1500]  # episodes that ended once epsilon reached its floor (0.02)
    print(f"final q_mean {q_mean:.2f}; x_pos after exploration: {after.tolist()}")
    assert q_mean > 1.0, q_mean  # an untrained net's Q-values stay near 0
    assert len(after) >= 5 and after.mean() > 250, after.tolist()


def test_checkpoint_is_the_one_file_with_the_shared_schema(trained):
    """--save-model leaves checkpoint.pt alone (no weights.pt): the latest network is the kept one,
    saved once, and resume_state holds the target network and both random streams."""
    assert sorted(os.listdir(trained)) == ["checkpoint.pt", "metrics.csv"]
    state = torch.load(os.path.join(trained, "checkpoint.pt"), weights_only=True)
    assert tuple(state) == KEYS and state["script"] == "mario_ddqn" and state["args"]["actions"] == "complex"
    assert state["global_step"] == state["kept_step"] == 4000 and math.isnan(state["kept_score"])
    assert state["kept_model"] is state["model"] and state["optimizer"]["param_groups"][0]["lr"] == 2.5e-4
    assert set(state["resume_state"]) == {"target_model", "rng"}
    assert set(state["resume_state"]["rng"]) == {"explore", "replay"}
    assert state["model"].keys() == state["resume_state"]["target_model"].keys()


def test_eval_checkpoint_from_power_on_then_no_op_starts(trained, run_script, tmp_path):
    """--eval-checkpoint plays the kept model and films episode 0, from power-on; the others start
    after 0-30 no-op frames drawn from evaluation_seed(--seed); eval.json has each episode's return,
    x_pos, flag, no-op count and length, and a summary line gives the flags."""
    checkpoint = os.path.join(trained, "checkpoint.pt")
    result = run_script(
        "mario_ddqn.py",
        *("--eval-checkpoint", checkpoint, "--actions", "complex"),
        *("--eval-episodes", "4", "--eval-patience", "10", "--seed", "5"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert os.path.getsize(os.path.join(run_dir, "videos", "eval.mp4")) > 0
    assert not os.path.exists(os.path.join(run_dir, "metrics.csv"))  # no training happened
    evaluation = json.load(open(os.path.join(run_dir, "eval.json")))
    assert evaluation["episodes"] == 4 and evaluation["kept_step"] == 4000
    episodes = evaluation["per_episode"]
    noops = [episode["noops"] for episode in episodes]
    assert noops == [0] + np.random.default_rng(evaluation_seed(5)).integers(31, size=3).tolist()
    assert all(set(episode) == {"return", "x_pos", "flag_get", "noops", "length"} for episode in episodes)
    flags = sum(episode["flag_get"] for episode in episodes)
    assert flags == 0 and f"flags {flags}/4" in result.stdout and f"no-op frames {noops}" in result.stdout


def log_rows(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == "log"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_saves_a_checkpoint_that_resumes_exactly(tmp_path, run_script, signum):
    """SIGTERM to the process, or Ctrl-C to its group (started with SIGINT ignored, as a background
    job), without --save-model: the step in progress completes, the checkpoint is written, the run
    exits 143/130. --resume with another --total-steps (and random starts, as the shipped model was
    fine-tuned) continues the step count and epsilon."""
    short = [
        *("--learning-starts", "20", "--batch-size", "16", "--buffer-size", "500"),
        *("--exploration-steps", "2000", "--log-interval", "50"),
    ]
    state, _ = stop_with_signal(
        tmp_path, "mario_ddqn.py", ["--total-steps", "1000000", *short], signum, to_group=signum == signal.SIGINT
    )
    assert tuple(state) == KEYS  # no replay buffer: it refills
    stopped_at = state["global_step"]
    assert 50 <= stopped_at < 1_000_000 and state["args"]["exploration_steps"] == 2000
    (first,) = run_dirs(tmp_path)
    assert not os.path.exists(os.path.join(first, "weights.pt"))
    checkpoint = os.path.join(first, "checkpoint.pt")
    result = run_script(
        "mario_ddqn.py",
        *("--resume", checkpoint, "--total-steps", str(stopped_at + 120), "--train-noops", "30"),
        *("--eval-episodes", "0", *short),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {checkpoint} at step {stopped_at}; the replay buffer refills first" in result.stdout
    (resumed,) = [d for d in run_dirs(tmp_path) if d != first]
    before, after = log_rows(first), log_rows(resumed)
    assert int(after[0]["global_step"]) == (stopped_at // 50 + 1) * 50  # counting went on

    def epsilon(row):  # the step that row logs acted with epsilon at step - 1 (steps taken before it)
        return 1 - 0.98 * min(max(int(row["global_step"]) - 1 - 20, 0) / 2000, 1)

    for row in before + after:  # one straight line across the stop, whatever --total-steps
        assert float(row["epsilon"]) == pytest.approx(epsilon(row), abs=1e-6), row
    assert float(after[0]["epsilon"]) < float(before[-1]["epsilon"]) < 1


def test_shipped_model_loads_weights_only_and_plays(run_script, tmp_path):
    """pretrained/mario_ddqn_1-1.pt (the kept network alone: model, optimizer and resume_state are
    None) loads with weights_only=True and, through --eval-checkpoint, plays a filmed greedy episode
    well past the first Goombas (an untrained network stops near x_pos 300-700); whether it reaches
    the flag is a benchmark (docs), not this test."""
    state = torch.load(SHIPPED, weights_only=True)
    assert tuple(state) == KEYS and state["kept_step"] == state["global_step"] == 2_525_000
    assert state["model"] is state["optimizer"] is state["resume_state"] is None
    result = run_script("mario_ddqn.py", "--eval-checkpoint", SHIPPED, "--eval-episodes", "1", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert os.path.getsize(os.path.join(run_dir, "videos", "eval.mp4")) > 0
    evaluation = json.load(open(os.path.join(run_dir, "eval.json")))
    assert evaluation["kept_step"] == 2_525_000 and evaluation["per_episode"][0]["x_pos"] > 1000


def test_committed_run_checkpoint_resumes(run_script):
    """benchmarks/mario_run/checkpoint.pt, the long run's latest, still resumes (a few steps here)."""
    state = torch.load(COMMITTED_RUN, weights_only=True)
    step = state["global_step"]
    assert tuple(state) == KEYS and state["kept_model"] is state["model"] and step == state["kept_step"]
    total = (step // 50 + 2) * 50  # 50-100 steps more, a multiple of --log-interval
    result = run_script(
        "mario_ddqn.py",
        *("--resume", COMMITTED_RUN, "--total-steps", str(total), "--learning-starts", "20"),
        *("--log-interval", "50", "--eval-episodes", "0"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {step};" in result.stdout and f"step {total:>9}/{total}" in result.stdout


def fake_checkpoint(**changes) -> dict:
    """A checkpoint of the shared schema with an untrained network, the defaults' Args and `changes`."""
    model = m.QNetwork(len(ACTION_SETS["right_only"])).state_dict()
    state = {
        "script": "mario_ddqn",
        "args": asdict(m.Args()),
        "global_step": 0,
        "time_s": 0.0,
        "model": model,
        "optimizer": {},
        "kept_model": model,
        "kept_step": 0,
        "kept_score": math.nan,
        "resume_state": {"target_model": model, "rng": {}},
    }
    return state | changes


@pytest.mark.parametrize(
    "case",
    ["actions", "exploration", "epsilon", "buffer", "noops", "cartpole", "shipped", "other_actions", "already_done"],
)
def test_bad_input_is_one_line_error(case, run_script, tmp_path):
    """What a new user might try: one `error:` line, a non-zero exit, no run directory."""
    saved = str(tmp_path / "saved.pt")
    files = {
        "cartpole": {"script": "cartpole_dqn", "model": {}},
        "other_actions": fake_checkpoint(args=asdict(m.Args(actions="right"))),
        "already_done": fake_checkpoint(global_step=500_000),
    }
    if case in files:
        torch.save(files[case], saved)
    argv = {
        "actions": ["--actions", "bogus"],
        "exploration": ["--exploration-steps", "0"],
        "epsilon": ["--end-epsilon", "2"],
        "buffer": ["--buffer-size", "16"],  # smaller than a batch
        "noops": ["--train-noops", "-1"],
        "cartpole": ["--resume", saved],
        "shipped": ["--resume", SHIPPED, "--total-steps", "3000000"],  # weights alone: nothing to resume
        "other_actions": ["--eval-checkpoint", saved],
        "already_done": ["--resume", saved],
    }[case]
    result = run_script("mario_ddqn.py", *argv, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert case != "other_actions" or "--actions right" in lines[0], lines
    assert run_dirs(tmp_path) == []
