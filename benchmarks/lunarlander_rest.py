"""Why LunarLander's sampled policy scores far below its greedy one: a landed lander must stay
still for about half a second (25 steps) before Box2D puts it to sleep, which ends the episode
with +100; any engine firing wakes it. Gymnasium's heuristic controller lands; once both legs are
down it fires a random engine with probability 1 - p_noop. Prints return, length and the share
of episodes cut by the 1,000-step limit, per p_noop.

    python benchmarks/lunarlander_rest.py
"""

import gymnasium as gym
import numpy as np
from gymnasium.envs.box2d.lunar_lander import heuristic

EPISODES = 30

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    env = gym.make("LunarLander-v3")
    for p_noop in (1.0, 0.95, 0.9, 0.8, 0.7):
        returns, lengths, truncations = [], [], []
        for episode in range(EPISODES):
            obs, _ = env.reset(seed=episode)
            total, length, done = 0.0, 0, False
            while not done:
                action = heuristic(env.unwrapped, obs)
                if obs[6] and obs[7]:  # both legs on the ground
                    action = 0 if rng.random() < p_noop else int(rng.integers(1, 4))
                obs, reward, terminated, truncated, _ = env.step(action)
                total, length, done = total + reward, length + 1, terminated or truncated
            returns.append(total), lengths.append(length), truncations.append(truncated)
        print(
            f"p_noop on the ground {p_noop:.2f}: mean return {np.mean(returns):6.1f}, mean length "
            f"{np.mean(lengths):4.0f}, cut by the time limit {np.mean(truncations):4.0%}"
        )
