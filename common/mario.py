"""Super Mario Bros (gym-super-mario-bros 7.4.0, nes-py 8.2.1) as a gymnasium 1.x env on numpy 2.

    env = MarioEnv(world=1, stage=1, actions="right", render_mode="rgb_array")
    obs, info = env.reset(seed=0)          # obs: (240, 256, 3) uint8, one NES frame per step
    obs, reward, terminated, truncated, info = env.step(1)

Episodes (the upstream single-stage env, e.g. SuperMarioBros-1-1-v0): one attempt at the stage.
`terminated` when Mario loses his first life (enemy, pit) or touches the flag; `truncated` when the
in-game clock runs out (a time limit, not a mistake: the agent should bootstrap through it) or after
`max_episode_steps` frames. We end at the first life lost rather than at game over because a death
sends Mario back to the start of the stage: what follows is a new attempt, not a consequence the
value of the dying state should carry. The NES is deterministic: `seed` only seeds `np_random`.
Rewards are upstream's: x progress + clock ticks (-1) + death (-25, clipped with the rest to
[-15, 15] per frame). `info` has x_pos, flag_get, time, life, score, coins, status, world, stage.
"""
import contextlib
import io
import sys
import warnings

import gymnasium as gym
import numpy as np

_stderr = io.StringIO()
with contextlib.redirect_stderr(_stderr):  # gym 0.26 prints an "unmaintained" notice on import
    import gym as _gym
from gym_notices.notices import notices as _notices  # noqa: E402

_notice = _notices.get(_gym.__version__)  # anything else printed on import is passed on
sys.stderr.write(_stderr.getvalue().replace(_notice + "\n", "", 1) if _notice else _stderr.getvalue())

from gym_super_mario_bros.actions import COMPLEX_MOVEMENT, RIGHT_ONLY, SIMPLE_MOVEMENT  # noqa: E402
from gym_super_mario_bros.smb_env import SuperMarioBrosEnv  # noqa: E402
from nes_py._rom import ROM  # noqa: E402
from nes_py.wrappers import JoypadSpace  # noqa: E402

# numpy 2 (NEP 50) keeps `uint8 * Python int` in uint8, so these raise OverflowError (numpy 1
# promoted them): 16 * header[4] * 2**10 at ROM load and ram[0x6d] * 0x100 at every step. The same
# arithmetic on Python ints gives the numpy-1 values.
ROM.prg_rom_size = property(lambda self: 16 * int(self.header[4]))
ROM.chr_rom_size = property(lambda self: 8 * int(self.header[5]))
SuperMarioBrosEnv._x_position = property(lambda self: int(self.ram[0x6d]) * 0x100 + int(self.ram[0x86]))

ACTION_SETS = {
    "right": [["right"], ["right", "A"]],  # the PyTorch Mario tutorial's two actions
    "right_only": RIGHT_ONLY,
    "simple": SIMPLE_MOVEMENT,
    "complex": COMPLEX_MOVEMENT,
}


class MarioEnv(gym.Env):
    """One stage of Super Mario Bros; discrete actions are joypad button combinations."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 60}

    def __init__(self, world: int = 1, stage: int = 1, actions: str = "right",
                 render_mode: str | None = None, max_episode_steps: int | None = None):
        if actions not in ACTION_SETS or render_mode not in (None, "rgb_array"):
            raise ValueError(f"actions must be one of {sorted(ACTION_SETS)}, render_mode rgb_array")
        self.nes = SuperMarioBrosEnv(target=(world, stage))
        buttons = JoypadSpace._button_map
        self.action_bytes = [sum(buttons[b] for b in combo) for combo in ACTION_SETS[actions]]
        self.action_meanings = [" ".join(combo) for combo in ACTION_SETS[actions]]
        self.action_space = gym.spaces.Discrete(len(self.action_bytes))
        self.observation_space = gym.spaces.Box(0, 255, self.nes.observation_space.shape, np.uint8)
        self.render_mode, self.max_episode_steps, self.steps = render_mode, max_episode_steps, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        self.nes.reset()
        # the emulator's screen is a view of C++ memory that the next frame overwrites: copy it
        return self.nes.screen.copy(), self._info(self.nes._get_info())

    def step(self, action):
        with warnings.catch_warnings():
            # y_pos above the screen wraps around in uint8 as it always did; only that warning goes
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
            screen, reward, done, info = self.nes.step(self.action_bytes[int(action)])
        info = self._info(info)
        self.steps += 1
        time_up = done and not info["flag_get"] and info["time"] == 0
        terminated = done and not time_up
        out_of_steps = self.max_episode_steps is not None and self.steps >= self.max_episode_steps
        return screen.copy(), reward, terminated, time_up or (out_of_steps and not done), info

    def render(self):
        return self.nes.screen.copy() if self.render_mode == "rgb_array" else None

    def close(self):
        if self.nes._env is not None:
            self.nes.close()

    @staticmethod
    def _info(info: dict) -> dict:
        """numpy scalars from the RAM as plain Python values (JSON and CSV friendly)."""
        return {k: v.item() if isinstance(v, np.generic) else v for k, v in info.items()}
