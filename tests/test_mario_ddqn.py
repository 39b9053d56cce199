"""mario_ddqn.py: the Double-DQN target, the frame replay buffer, preprocessing, and learning."""
import csv
import os

import numpy as np
import torch

import mario_ddqn as m
from common.metrics import read_episodes
from conftest import run_dirs


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
            ret, steps = ret + 0.5 ** steps * reward, steps + 1
        got = (obs[i, :, 0].tolist(), int(actions[i]), next_stack == next_obs[i, :, 0].tolist(),
               float(terminated[i]), float(discount[i]))
        assert got == (stack, action, True, done, 0.5 ** steps), (got, key)
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

    class Args:
        stage, actions, frame_skip = (1, 1), "right", 4

    env = m.make_env(Args)
    frame, _ = env.reset(seed=0)
    assert frame.shape == (84, 84) and frame.dtype == np.uint8 and 0 < frame.mean() < 255
    for _ in range(10):  # 40 frames of walking right
        frame, reward, terminated, truncated, info = env.step(0)
    assert frame.shape == (84, 84) and reward > 0 and info["x_pos"] > 50
    white = np.full((240, 256, 3), 255, np.uint8)
    assert (env.process(white) == 255).all()
    env.close()


def test_learning_short_horizon(run_script, tmp_path):
    """A reduced configuration of the same code path: 4000 steps with the 12-button action set,
    a small buffer, learning from step 500 and a fast target sync. It does not show that Mario
    clears anything; it shows that the update learns (the Q-values of visited states rise from
    ~0 toward their discounted return) and that acting on it pays: after exploration, episodes
    end well to the right of the start (x = 40), mostly at the first Goomba (x ~ 300)."""
    result = run_script("mario_ddqn.py", "--actions", "complex", "--total-steps", "4000",
                        "--learning-starts", "500", "--buffer-size", "5000",
                        "--target-update-interval", "250", "--exploration-fraction", "0.25",
                        "--seed", "1", "--eval-episodes", "0", "--log-interval", "500", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        q_mean = [float(r["q_mean"]) for r in csv.DictReader(f) if r["kind"] == "log"][-1]
    steps, _, x_pos = read_episodes(os.path.join(run_dir, "metrics.csv"), "x_pos")
    after = x_pos[steps > 1500]  # episodes that ended once epsilon reached its floor (0.02)
    print(f"final q_mean {q_mean:.2f}; x_pos after exploration: {after.tolist()}")
    assert q_mean > 1.0, q_mean  # an untrained net's Q-values stay near 0
    assert len(after) >= 5 and after.mean() > 250, after.tolist()


def test_checkpoint_resume_and_play(run_script, tmp_path):
    """The checkpoint --save-model leaves holds the step count; --resume goes on from there, and
    --eval-checkpoint plays the saved network and records the episode."""
    short = ("--buffer-size", "1000", "--learning-starts", "100", "--eval-episodes", "0", "--save-model",
             "--checkpoint-interval", "300", "--log-interval", "150")
    result = run_script("mario_ddqn.py", "--total-steps", "450", *short)
    assert result.returncode == 0, result.stderr[-3000:]
    (first,) = run_dirs(tmp_path)
    checkpoint = os.path.join(first, "checkpoint.pt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 450
    result = run_script("mario_ddqn.py", "--total-steps", "600", "--resume", checkpoint, *short)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "step       600/600" in result.stdout
    assert "step       150/600" not in result.stdout  # the step count went on from 450
    result = run_script("mario_ddqn.py", "--eval-checkpoint", checkpoint, "--eval-patience", "20")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "greedy evaluation over 1 episodes" in result.stdout
    assert os.path.getsize(os.path.join(run_dirs(tmp_path)[-1], "videos", "eval.mp4")) > 0
