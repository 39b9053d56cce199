"""common/mario.py: the gymnasium API, the numpy-2 overflow fixes, determinism, episode ends, and
the same trajectory on both emulator stacks. No torch: CI runs this file on Python 3.13 too.

Re-record the trajectory (on the legacy stack, the reference): python tests/test_mario_adapter.py
"""

import hashlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from common.mario import ACTION_SETS, LEGACY, MarioEnv
from conftest import REPO

FIXTURE = os.path.join(REPO, "tests", "fixtures", "mario_trajectory.json")
# "complex" action indices, (action, frames): walk right, bump the first ? block (a coin), stomp
# the first Goomba, walk back left, then run and jump right over the pipes until a Goomba kills
# Mario. It pays score and coins and moves left: where 9.x's own reward differs from 7.4.0's.
PLAN = [
    (1, 120),
    (0, 10),
    (5, 30),
    (0, 5),
    (5, 40),
    (0, 20),
    (6, 25),
    (1, 150),
    (2, 30),
    (1, 30),
    (2, 30),
    (1, 30),
    (2, 30),
    (1, 30),
    (2, 30),
    (1, 300),
]


@pytest.fixture
def env():
    env = MarioEnv(render_mode="rgb_array")
    yield env
    env.close()


@pytest.mark.skipif(not LEGACY, reason="nes-py 9 reads the ROM header and RAM as Python ints")
def test_numpy2_would_overflow_without_the_fix():
    """The upstream arithmetic on a uint8 header byte / RAM byte, as nes-py 8.2.1 writes it."""
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("numpy 1 promotes uint8 * int, the fix is a no-op there")
    with pytest.raises(OverflowError):
        _ = 16 * np.uint8(2) * 2**10  # ROM.prg_rom_stop on the Mario ROM header
    with pytest.raises(OverflowError):
        _ = np.uint8(1) * 0x100  # SuperMarioBrosEnv._x_position on the second page


def test_api_shapes_dtypes_and_info(env):
    assert env.action_space.n == 2 and env.action_meanings == ["right", "right A"]
    obs, info = env.reset(seed=0)
    assert obs.shape == (240, 256, 3) and obs.dtype == np.uint8 and obs in env.observation_space
    assert info["x_pos"] == 40 and info["flag_get"] is False and info["time"] == 400
    obs, reward, terminated, truncated, info = env.step(1)
    assert obs.shape == (240, 256, 3) and obs.dtype == np.uint8
    assert isinstance(reward, float) and terminated is False and truncated is False
    assert {"x_pos", "flag_get", "time", "life", "score", "coins"} <= set(info)
    assert isinstance(info["x_pos"], int) and isinstance(info["flag_get"], bool)
    assert np.array_equal(env.render(), obs)
    for name, combos in ACTION_SETS.items():
        assert MarioEnv(actions=name).action_space.n == len(combos)
    with pytest.raises(ValueError):
        MarioEnv(actions="everything")


def test_no_overflow_past_the_first_page(env):
    """Run right (jumping) until Mario is past x = 255, where ram[0x6d] * 0x100 used to overflow."""
    env.reset(seed=0)
    xs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow warning anywhere fails the test
        for t in range(600):
            _, _, terminated, truncated, info = env.step(1 if t % 20 < 10 else 0)
            xs.append(info["x_pos"])
            if terminated or truncated or info["x_pos"] > 300:
                break
    assert max(xs) > 300, max(xs)
    assert all(abs(b - a) <= 5 for a, b in zip(xs, xs[1:], strict=False))  # no wrap-around jump in x


def test_same_seed_same_actions_same_frames():
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=300)
    runs = []
    for _ in range(2):
        env = MarioEnv()
        obs, _ = env.reset(seed=5)
        frames = [obs]
        for a in actions:
            obs, _, terminated, truncated, _ = env.step(a)
            frames.append(obs)
            if terminated or truncated:
                obs, _ = env.reset()
                frames.append(obs)
        env.close()
        runs.append(np.stack(frames))
    assert runs[0].shape == runs[1].shape and np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0][0], runs[0][-1])  # the frames are copies, not one view


def test_reset_after_noops_is_a_later_start():
    """reset(options={"noops": n}) is power-on followed by n frames with no button pressed: the
    same frame and info as stepping the NOOP action n times, and the step after it pays only
    its own progress (the counters start where the no-ops left them)."""
    env, noop = MarioEnv(actions="complex"), ACTION_SETS["complex"].index(["NOOP"])
    env.reset()
    for _ in range(40):
        stepped, _, _, _, stepped_info = env.step(noop)
    walked = env.step(1)
    frame, info = env.reset(options={"noops": 40})
    assert np.array_equal(frame, stepped) and info == stepped_info
    assert env.step(1)[1:] == walked[1:]
    assert not np.array_equal(frame, env.reset(options={"noops": 0})[0])  # the power-on frame differs
    env.close()


def test_death_terminates(env):
    """Holding right walks into the first Goomba: the first life lost ends the episode."""
    env.reset(seed=0)
    for _ in range(2000):
        _, reward, terminated, truncated, info = env.step(0)
        if terminated or truncated:
            break
    assert terminated and not truncated and not info["flag_get"] and reward < 0


def test_clock_and_step_limit_truncate(env):
    env.reset(seed=0)
    env.nes.ram[0x07F8:0x07FB] = [0, 0, 1]  # one tick left on the in-game clock
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(0)
        if terminated or truncated:
            break
    assert truncated and not terminated and info["time"] == 0
    limited = MarioEnv(max_episode_steps=50)
    limited.reset(seed=0)
    ends = [limited.step(0)[2:4] for _ in range(50)]
    assert ends[-1] == (False, True) and all(e == (False, False) for e in ends[:-1])
    limited.close()


def test_import_prints_no_gym_banner():
    result = subprocess.run(
        [sys.executable, "-c", "import common.mario"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def frame_hash(frame: np.ndarray) -> str:
    return hashlib.sha1(frame.tobytes()).hexdigest()[:16]  # 64 bits: plenty to tell frames apart


def play(actions) -> tuple[list, list]:
    """Step a fresh env through `actions` until the episode ends: the reset (frame, x) and one
    [action, frame, x_pos, reward, terminated, truncated, flag_get] row per step."""
    env = MarioEnv(world=1, stage=1, actions="complex")
    obs, info = env.reset(seed=0)
    start, rows = [frame_hash(obs), info["x_pos"]], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        rows.append([action, frame_hash(obs), info["x_pos"], reward, terminated, truncated, info["flag_get"]])
        if terminated or truncated:
            break
    env.close()
    return start, rows


def test_replays_the_recorded_trajectory():
    """Frames, x, rewards and episode end as 7.4.0 / nes-py 8.2.1 gave them, on this stack."""
    with open(FIXTURE) as f:
        recorded = json.load(f)
    start, rows = play([row[0] for row in recorded["steps"]])
    assert start == recorded["reset"]
    for t, (here, there) in enumerate(zip(rows, recorded["steps"], strict=True)):
        assert here == there, f"step {t} {recorded['columns']}: {here} here, {there} recorded"
    assert len(rows) == len(recorded["steps"])


@pytest.mark.skipif(not LEGACY, reason="7.4.0's own reward is the reference")
def test_reward_is_7_4_0s(monkeypatch):
    """Ours, computed from info and RAM, equals upstream's on random play (left too, a death)."""
    env, upstream = MarioEnv(actions="complex"), []
    step = env.nes.step

    def spy(action):
        out = step(action)
        upstream.append(out[1])
        return out

    monkeypatch.setattr(env.nes, "step", spy)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    ours, deaths = [], 0
    for action in rng.integers(0, env.action_space.n, size=3000):
        _, reward, terminated, truncated, _ = env.step(action)
        ours.append(reward)
        if terminated or truncated:
            deaths += terminated
            env.reset()
    env.close()
    assert ours == upstream and deaths >= 1 and any(-15 < r < -1 for r in ours)


def record():
    """Write the fixture from the legacy stack, the reference the other stack must reproduce."""
    if not LEGACY:
        sys.exit("record on the legacy stack (Python < 3.13): it is the reference")
    start, rows = play([action for action, frames in PLAN for _ in range(frames)])
    assert rows[-1][4] and not rows[-1][6], "the plan must end at Mario's first death"
    meta = {
        "about": "common/mario.py on gym-super-mario-bros 7.4.0 / nes-py 8.2.1, 1-1 from reset "
        "to the first death, one NES frame a step. frame: the first 16 hex digits of "
        "the sha1 of the (240, 256, 3) uint8 RGB bytes. Written by record() in "
        "tests/test_mario_adapter.py",
        "columns": ["action", "frame", "x_pos", "reward", "terminated", "truncated", "flag_get"],
        "reset": start,
    }
    header = "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in meta.items())
    steps = ",\n".join("  " + json.dumps(row, separators=(",", ":")) for row in rows)
    with open(FIXTURE, "w") as f:  # one step a line: a diff shows which steps changed
        f.write("{\n" + header + ' "steps": [\n' + steps + "\n ]\n}\n")


if __name__ == "__main__":
    record()
