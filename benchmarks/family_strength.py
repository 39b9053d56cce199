"""How strong each validation and held-out bot of the Pong duel's family (common/pong_duel.py) is: its
wins against `predictor` (and against itself for scale), as a markdown table.

    python benchmarks/family_strength.py --games 200
"""

import os
import sys
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common.pong_duel as game  # noqa: E402
from common.run import parse_args  # noqa: E402


@dataclass
class Args:
    games: int = 200
    """games of each bot against predictor"""
    seed: int = 7
    """seed of the games (serves) and of the bots' random draws"""

    def __post_init__(self):
        if self.games < 1:
            raise ValueError("--games must be >= 1")


if __name__ == "__main__":
    args = parse_args(Args)
    np.random.seed(args.seed)
    predictor = game.BOTS["predictor"]
    diff = game.play(predictor, [predictor], np.zeros(args.games, int), args.seed)
    print(f"predictor vs predictor: wins {np.mean(diff > 0):.0%}, draws {np.mean(diff == 0):.0%}\n")
    print("| bot | " + " | ".join(next(iter(game.HELD_OUT.values()))) + " | wins vs predictor |")
    print("|---|" + "---|" * (len(next(iter(game.HELD_OUT.values()))) + 1))
    for bots in (game.VALIDATION, game.HELD_OUT):
        for name, params in bots.items():
            diff = game.play(game.scripted(**params), [predictor], np.zeros(args.games, int), args.seed)
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in params.values()) + f" | {np.mean(diff > 0):.0%} |")
