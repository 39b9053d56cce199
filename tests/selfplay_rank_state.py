"""Runs ppo_selfplay.py (its arguments follow) in this process, then writes what this torchrun rank holds at the
end to $RANK_STATE_DIR/rank<RANK>.json: a hash of the weights and of the optimizer state, and the league."""

import hashlib
import json
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "ppo_selfplay.py")

if __name__ == "__main__":
    sys.argv = [SCRIPT, *sys.argv[1:]]
    sys.path.insert(0, REPO)  # as when the script runs itself: common/ beside it
    run = runpy.run_path(SCRIPT, run_name="__main__")  # the script's variables once it has ended
    weights = hashlib.sha256()
    for tensor in run["model"].state_dict().values():
        weights.update(tensor.numpy().tobytes())
    moments = hashlib.sha256()
    for parameter_state in run["optimizer"].state_dict()["state"].values():
        moments.update(parameter_state["exp_avg"].numpy().tobytes() + parameter_state["exp_avg_sq"].numpy().tobytes())
    league = run["league"]
    state = {
        "weights": weights.hexdigest(),
        "adam_moments": moments.hexdigest(),
        "games": len(run["games"]),
        "global_step": run["global_step"],
        "league": {**league.resume_state(), "snapshots": sorted(league.snapshots)},
        "opponent_of_game": league.opponent_of_game.tolist(),
    }
    with open(os.path.join(os.environ["RANK_STATE_DIR"], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(state, f)
