"""Run one of our scripts for several seeds and report steps and seconds to a return threshold.

    python benchmarks/benchmark.py --script cartpole_dqn.py --threshold 475 --window 20
    python benchmarks/benchmark.py --script lunarlander_nstep_ac.py --threshold 200 --window 100 \
        --seeds 1 2 3 --script-args="--total-steps 500000"

For each seed the script runs to the end in a subprocess (one at a time: measurements must not
share the CPU). From its metrics.csv we take the first env step and wall-clock second at which the
mean of the last `window` episodes reaches `threshold`, and from its eval.json the greedy mean.
"""

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.metrics import read_episodes  # noqa: E402
from common.run import parse_args  # noqa: E402


@dataclass
class Args:
    script: str
    """the script to benchmark, e.g. cartpole_dqn.py"""
    threshold: float
    """target for the mean of the last `window` episodes"""
    window: int = 20
    """episodes in the running mean"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """one run per seed"""
    metric: str = "episode_return"
    """metrics.csv column to average (e.g. x_pos)"""
    script_args: str = ""
    """extra arguments passed to every run, e.g. "--total-steps 500000\""""
    out: str | None = None
    """also write the per-seed rows and medians to this JSON file"""
    keep_runs: str | None = None
    """keep the run directories under this folder (default: a temporary folder, deleted at the end)"""

    def __post_init__(self):
        if not os.path.isfile(self.script) or self.window <= 0 or not self.seeds:
            raise ValueError("--script must be an existing file, --window > 0, --seeds not empty")


def time_to_threshold(csv_path: str, metric: str, window: int, threshold: float):
    """(env steps, seconds) when the running mean first reaches the threshold, else (None, None)."""
    steps, seconds, values = read_episodes(csv_path, metric)
    if len(values) < window:
        return None, None
    running = np.convolve(values, np.ones(window) / window, mode="valid")
    hits = np.nonzero(running >= threshold)[0]
    if not len(hits):
        return None, None
    return int(steps[hits[0] + window - 1]), float(seconds[hits[0] + window - 1])


def run_seed(args: Args, seed: int, runs_dir: str) -> dict:
    command = [sys.executable, args.script, "--seed", str(seed), "--runs-dir", runs_dir, *shlex.split(args.script_args)]
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True)
    (run_dir,) = [os.path.join(runs_dir, d) for d in os.listdir(runs_dir)]
    steps, seconds = time_to_threshold(os.path.join(run_dir, "metrics.csv"), args.metric, args.window, args.threshold)
    _, total_seconds, values = read_episodes(os.path.join(run_dir, "metrics.csv"), args.metric)
    eval_path = os.path.join(run_dir, "eval.json")
    greedy = json.load(open(eval_path))["mean_return"] if os.path.exists(eval_path) else None
    return {
        "seed": seed,
        "steps_to_threshold": steps,
        "seconds_to_threshold": seconds,
        f"final_mean_{args.metric}": float(np.mean(values[-args.window :])) if len(values) else None,
        "train_seconds": float(total_seconds[-1]) if len(total_seconds) else None,
        "greedy_eval": greedy,
    }


def median(values):
    """Median over seeds; a seed that never reached the threshold counts as infinitely slow."""
    finite = [float("inf") if v is None else v for v in values]
    m = statistics.median(finite)
    return None if m == float("inf") else m


if __name__ == "__main__":
    args = parse_args(Args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows.append(run_seed(args, seed, os.path.join(args.keep_runs or tmp, str(seed))))
    medians = {k: median([r[k] for r in rows]) for k in rows[0] if k != "seed"}
    print(f"\n{args.script} {args.script_args}: mean of last {args.window} {args.metric} >= {args.threshold}")
    print("| seed | " + " | ".join(medians) + " |")
    print("|---" * (len(medians) + 1) + "|")
    for row in rows + [{"seed": "median", **medians}]:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "medians": medians}, f, indent=1)
