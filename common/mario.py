"""Super Mario Bros as a gymnasium 1.x env on numpy 2, on either emulator stack.

    env = MarioEnv(world=1, stage=1, actions="right", render_mode="rgb_array")
    obs, info = env.reset(seed=0)          # obs: (240, 256, 3) uint8, one NES frame per step
    obs, info = env.reset(options={"noops": 12})   # a start 12 frames later (no buttons pressed)
    obs, reward, terminated, truncated, info = env.step(1)

Stacks (requirements.txt picks by Python version): gym-super-mario-bros 9.x / nes-py 9.x on Python
>= 3.13 (gymnasium-native), 7.4.0 / 8.2.1 below it (legacy gym 0.26 API). Both run the same ROM, and
tests/fixtures/mario_trajectory.json checks that they give the same frames, x_pos, rewards and
episode ends, so a model trained on one plays the same on the other.

Episodes (the upstream single-stage env, e.g. SuperMarioBros-1-1-v0): one attempt at the stage.
`terminated` when Mario loses his first life (enemy, pit) or touches the flag; `truncated` when the
in-game clock runs out (a time limit, not a mistake: the agent should bootstrap through it) or after
`max_episode_steps` frames. We end at the first life lost rather than at game over because a death
sends Mario back to the start of the stage: what follows is a new attempt, not a consequence the
value of the dying state should carry. The NES is deterministic: `seed` only seeds `np_random`.
Rewards are 7.4.0's, computed here on both stacks: x progress + clock ticks (-1) + death (-25,
clipped with the rest to [-15, 15] per frame). `info` has x_pos, y_pos, flag_get, time, life, score,
coins, status, world, stage as plain Python values.
"""

from importlib.metadata import version

import gymnasium as gym
import numpy as np

# which stack requirements.txt installed: nes-py 9 is gymnasium-native, 8.2.1 speaks gym 0.26
LEGACY = int(version("nes-py").split(".")[0]) < 9

if LEGACY:
    # The legacy stack alone needs this block; it goes when Python 3.13 is the floor.
    import contextlib
    import io
    import sys

    _stderr = io.StringIO()
    with contextlib.redirect_stderr(_stderr):  # gym 0.26 prints an "unmaintained" notice on import
        import gym as _gym
    from gym_notices.notices import notices as _notices

    _notice = _notices.get(_gym.__version__)  # anything else printed on import is passed on
    sys.stderr.write(_stderr.getvalue().replace(_notice + "\n", "", 1) if _notice else _stderr.getvalue())

    from gym_super_mario_bros.smb_env import SuperMarioBrosEnv as _LegacyEnv
    from nes_py._rom import ROM

    # numpy 2 (NEP 50) keeps `uint8 * Python int` in uint8, so these raise OverflowError (numpy 1
    # promoted them): 16 * header[4] * 2**10 at ROM load and ram[0x6d] * 0x100 at every step. The
    # same arithmetic on Python ints gives the numpy-1 values, as 9.x computes them.
    ROM.prg_rom_size = property(lambda self: 16 * int(self.header[4]))
    ROM.chr_rom_size = property(lambda self: 8 * int(self.header[5]))
    _LegacyEnv._x_position = property(lambda self: int(self.ram[0x6D]) * 256 + int(self.ram[0x86]))
    # y above the screen is 255 + (255 - y_pixel): in uint8 it wrapped around with an overflow
    # warning at every such frame; 9.x computes it on Python ints, so do we
    _LegacyEnv._y_position = property(lambda self: (510 if self._y_viewport < 1 else 255) - int(self._y_pixel))

    class SuperMarioBrosEnv(_LegacyEnv):
        """7.4.0 with 9.x's reset and step signatures, so that MarioEnv is written once."""

        def reset(self):
            return super().reset(), self._get_info()

        def step(self, action):
            screen, reward, done, info = super().step(action)
            return screen, reward, done, False, info
else:
    from gym_super_mario_bros import SuperMarioBrosEnv

from gym_super_mario_bros.actions import COMPLEX_MOVEMENT, RIGHT_ONLY, SIMPLE_MOVEMENT  # noqa: E402
from nes_py.wrappers import JoypadSpace  # noqa: E402

ACTION_SETS = {
    "right": [["right"], ["right", "A"]],  # the PyTorch Mario tutorial's two actions
    "right_only": RIGHT_ONLY,
    "simple": SIMPLE_MOVEMENT,
    "complex": COMPLEX_MOVEMENT,
}
INFO_KEYS = ("x_pos", "y_pos", "flag_get", "time", "life", "score", "coins", "status", "world", "stage")


class MarioEnv(gym.Env):
    """One stage of Super Mario Bros; discrete actions are joypad button combinations."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 60}

    def __init__(
        self,
        world: int = 1,
        stage: int = 1,
        actions: str = "right",
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
    ):
        if actions not in ACTION_SETS or render_mode not in (None, "rgb_array"):
            raise ValueError(f"actions must be one of {sorted(ACTION_SETS)}, render_mode rgb_array")
        self.nes = SuperMarioBrosEnv(target=(world, stage))
        buttons = JoypadSpace._button_map
        self.action_bytes = [sum(buttons[b] for b in combo) for combo in ACTION_SETS[actions]]
        self.action_meanings = [" ".join(combo) for combo in ACTION_SETS[actions]]
        self.action_space = gym.spaces.Discrete(len(self.action_bytes))
        self.observation_space = gym.spaces.Box(0, 255, self.nes.observation_space.shape, np.uint8)
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        screen, info = self.nes.reset()
        for _ in range((options or {}).get("noops", 0)):  # a later start: frames of no buttons
            screen, _, _, _, info = self.nes.step(0)
        info = self._info(info)
        self.last_x_pos = info["x_pos"]
        self.last_time = info["time"]
        # the emulator's screen is a view of C++ memory that the next frame overwrites: copy it
        return screen.copy(), info

    def step(self, action):
        screen, _, done, _, info = self.nes.step(self.action_bytes[int(action)])
        info = self._info(info)
        reward = self._reward(info, done)
        self.steps += 1
        time_up = done and not info["flag_get"] and info["time"] == 0
        terminated = done and not time_up
        out_of_steps = self.max_episode_steps is not None and self.steps >= self.max_episode_steps
        return screen.copy(), reward, terminated, time_up or (out_of_steps and not done), info

    def _reward(self, info: dict, done: bool) -> float:
        """7.4.0's reward. 9.x's differs: it adds score / 100, 5 per coin, +-5 per power-up change
        and 50 at the flag, and pays x progress only past the episode's best x (never negative)."""
        dx = info["x_pos"] - self.last_x_pos
        dt = info["time"] - self.last_time
        self.last_x_pos = info["x_pos"]
        self.last_time = info["time"]
        # RAM 0x0e is Mario's state (0x0b dying, 0x06 dead), 0xb5 > 1 is below the screen (a pit).
        # Dying ends the episode, so look only when done: after other steps upstream may have run
        # more frames (pipes, the flag) than `info` describes; a done step runs none.
        ram = self.nes.ram
        dying = done and (ram[0x0E] in (0x06, 0x0B) or ram[0xB5] > 1)
        # |dx| > 5 is no run but x jumping back to a start point (upstream's bound)
        reward = (dx if abs(dx) <= 5 else 0) + min(dt, 0) - (25 if dying else 0)
        return float(max(-15, min(15, reward)))

    def render(self):
        return self.nes.screen.copy() if self.render_mode == "rgb_array" else None

    def close(self):
        if self.nes._env is not None:
            self.nes.close()

    @staticmethod
    def _info(info: dict) -> dict:
        """The keys both stacks share, as plain Python values (7.4.0 gives numpy scalars)."""
        return {k: info[k].item() if isinstance(info[k], np.generic) else info[k] for k in INFO_KEYS}
