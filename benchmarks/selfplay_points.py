"""Where a ppo_selfplay.py model loses its points: for every return of the opponent (the ball turns
towards the model), could the model's paddle still reach the point where the ball will arrive? A
markdown table per opponent: points won and lost, lost on a serve, lost points whose arrival was already out of reach
when the opponent hit, and how far off the table's centre the model's paddle was at those returns and at all of them.

    python benchmarks/selfplay_points.py --checkpoint pretrained/ppo_selfplay.pt --games 200
"""

import os
import sys
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common.pong_duel as game  # noqa: E402
from common.checkpoint import load_checkpoint  # noqa: E402
from common.run import parse_args  # noqa: E402
from ppo_selfplay import ActorCritic, as_policy  # noqa: E402


@dataclass
class Args:
    checkpoint: str = "pretrained/ppo_selfplay.pt"
    """a checkpoint.pt or the shipped model: its kept model plays"""
    games: int = 200
    """greedy games against each opponent"""
    opponents: list[str] = field(default_factory=lambda: ["predictor", "held_out_11", "held_out_9", "fast_tracker"])
    """named bots or held-out family bots"""
    seed: int = 7
    """seed of the games (serves) and of the bots' random draws"""

    def __post_init__(self):
        if self.games < 1:
            raise ValueError("--games must be >= 1")
        unknown = [name for name in self.opponents if name not in {**game.BOTS, **game.HELD_OUT}]
        if unknown:
            raise ValueError(f"unknown opponents {unknown}: named bots are {list(game.BOTS)}, held-out held_out_0..11")


def points(policy, bot, games: int, seed: int) -> dict:
    env = game.PongDuel(games, seed)
    (obs0, obs1), done = env.observe(), np.zeros(games, dtype=bool)
    heading_away, margin, offset = obs0[:, 2] > 0, np.full(games, np.nan), np.full(games, np.nan)
    won, lost_margin, lost_offset, all_offsets = 0, [], [], []
    while not done.all():
        reward, finished, obs0, obs1 = env.step(policy(obs0), bot(obs1))
        returned = heading_away & (obs0[:, 2] < 0)  # the opponent just hit the ball back
        # out of reach: the paddle's distance to the arrival point, less the hit zone, beyond what it can move
        gap = np.abs(obs0[:, 7] - obs0[:, 4]) - 2 * (game.PADDLE_HALF + game.BALL_RADIUS)  # observation units
        margin, offset = np.where(returned, obs0[:, 8] - gap, margin), np.where(returned, np.abs(obs0[:, 4]), offset)
        live = ~done
        all_offsets += offset[live & returned].tolist()
        won += int((live & (reward > 0)).sum())
        lost_margin += margin[live & (reward < 0)].tolist()
        lost_offset += offset[live & (reward < 0)].tolist()
        heading_away = np.where(reward != 0, False, obs0[:, 2] > 0)  # after a point: a new serve
        margin, offset = np.where(reward != 0, np.nan, margin), np.where(reward != 0, np.nan, offset)
        done |= finished
    lost_margin, lost_offset = np.array(lost_margin), np.array(lost_offset)
    return {
        "won": won,
        "lost": len(lost_margin),
        "out_of_reach": int((lost_margin < 0).sum()),
        "on_serve": int(np.isnan(lost_margin).sum()),  # the serve came at it: no return yet
        "offset": float(np.nanmean(lost_offset)) / 2 if (lost_offset >= 0).any() else float("nan"),
        "offset_all": float(np.mean(all_offsets)) / 2,
    }


if __name__ == "__main__":
    args = parse_args(Args)
    np.random.seed(args.seed)
    state = load_checkpoint(args.checkpoint, "ppo_selfplay")
    model = ActorCritic()
    model.load_state_dict(state["kept_model"])
    policy = as_policy(model.actor, "cpu", greedy=True)
    print(
        "| opponent | points won | points lost | lost: on the serve | out of reach at the return | "
        "paddle off-centre at those returns | at every return (tables) |\n|---|---|---|---|---|---|---|"
    )
    for name in args.opponents:
        bot = game.BOTS[name] if name in game.BOTS else game.scripted(**game.HELD_OUT[name])
        p = points(policy, bot, args.games, args.seed)
        counts = f"{p['won']} | {p['lost']} | {p['on_serve']} | {p['out_of_reach']}"
        print(f"| {name} | {counts} | {p['offset']:.2f} | {p['offset_all']:.2f} |")
