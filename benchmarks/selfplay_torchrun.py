"""ppo_selfplay.py launched three ways at equal total games: training time and final win rates per seed.

    python benchmarks/selfplay_torchrun.py --seeds 1 2 3 --launches python workers torchrun
    torchrun --standalone --nproc-per-node 2 benchmarks/selfplay_torchrun.py --collectives

`python`: one process; `workers`: one process with --n-workers 2; `torchrun`: torchrun --standalone
--nproc-per-node 2. Runs go one at a time (measurements must not share the CPU); each ends with the final
evaluation (--eval-episodes greedy games against each named and held-out bot). --collectives (under torchrun)
times what one update exchanges between the ranks: the all_gather of every step and the all_reduce of the
flattened gradients of every minibatch.
"""

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common.run import parse_args  # noqa: E402

LAUNCHES = {
    "python": [sys.executable],
    "workers": [sys.executable],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
}


@dataclass
class Args:
    seeds: list[int] = field(default_factory=lambda: [1])
    """one run per seed and launch"""
    launches: list[str] = field(default_factory=lambda: ["python", "workers", "torchrun"])
    """python (one process), workers (--n-workers 2), torchrun (2 ranks on this machine)"""
    eval_episodes: int = 100
    """greedy games against each named and each held-out bot"""
    script_args: str = ""
    """extra arguments for every run, e.g. "--total-steps 3000000\""""
    out: str | None = None
    """also write the rows to this JSON file"""
    keep_runs: str | None = None
    """keep the run directories under this folder (default: a temporary folder, deleted at the end)"""
    collectives: bool = False
    """under torchrun: time the all_gather of a step and the all_reduce of a minibatch's gradients"""
    repeats: int = 2000
    """--collectives: calls timed of each"""


def run(launch: str, seed: int, args: Args, runs_dir: str) -> dict:
    """One training run and its final evaluation: seconds of training, win rates from eval.json."""
    workers = ["--n-workers", "2"] if launch == "workers" else []
    script = [os.path.join(ROOT, "ppo_selfplay.py"), "--seed", str(seed), "--runs-dir", runs_dir, *workers]
    command = [*LAUNCHES[launch], *script, "--eval-episodes", str(args.eval_episodes), *shlex.split(args.script_args)]
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True)
    (run_dir,) = [os.path.join(runs_dir, d) for d in os.listdir(runs_dir)]
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        train_seconds = float(f.readlines()[-1].split(",")[2])  # time_s of the last row
    with open(os.path.join(run_dir, "eval.json")) as f:
        episodes = json.load(f)["per_episode"]
    wins = {}
    for episode in episodes:
        wins.setdefault(episode["opponent"], []).append(episode["return"] > 0)
    held_out = [np.mean(won) for name, won in wins.items() if name.startswith("held_out_")]
    return {
        "launch": launch,
        "seed": seed,
        "train_seconds": round(train_seconds, 1),
        "win_vs_predictor": float(np.mean(wins["predictor"])),
        "win_vs_held_out_mean": float(np.mean(held_out)),
        "win_vs_held_out_worst": float(np.min(held_out)),
    }


def time_collectives(args: Args) -> None:
    """Seconds per call of the two exchanges of a default update on this machine (rank 0 prints)."""
    import torch
    import torch.distributed as dist

    import ppo_selfplay
    from common.stopping import StopRequest

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    defaults = ppo_selfplay.Args()
    model = ppo_selfplay.ActorCritic()
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    share = defaults.n_games // dist.get_world_size()
    reward, done, stop = np.zeros(share), np.zeros(share, bool), StopRequest(shared=True)
    timings = {}
    for name, exchange in (
        ("all_gather of a step", lambda: ppo_selfplay.gather_step(reward, done, stop, defaults.n_games, "cpu")),
        ("all_reduce of a minibatch's gradients", lambda: dist.all_reduce(flat)),
    ):
        for _ in range(args.repeats // 10):  # warm-up
            exchange()
        dist.barrier()
        started = time.perf_counter()
        for _ in range(args.repeats):
            exchange()
        timings[name] = (time.perf_counter() - started) / args.repeats
    if dist.get_rank() == 0:
        per_update = {
            "all_gather of a step": defaults.n_steps,
            "all_reduce of a minibatch's gradients": defaults.update_epochs * defaults.n_minibatches,
        }
        print(f"{dist.get_world_size()} ranks, gloo, {flat.numel()} parameters ({flat.numel() * 4 / 1024:.0f} kB)")
        for name, seconds in timings.items():
            print(f"{name}: {seconds * 1e6:.0f} µs a call, {per_update[name]} calls an update")
        total = sum(timings[name] * calls for name, calls in per_update.items())
        print(f"per update: {total * 1e3:.1f} ms")


if __name__ == "__main__":
    args = parse_args(Args)
    if args.collectives:
        time_collectives(args)
        raise SystemExit(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for launch in args.launches:
                rows.append(run(launch, seed, args, os.path.join(args.keep_runs or tmp, f"{launch}-{seed}")))
    print("\n| launch | seed | training (s) | vs predictor | vs held-out, mean | vs held-out, worst |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        rates = [f"{row[key]:.0%}" for key in ("win_vs_predictor", "win_vs_held_out_mean", "win_vs_held_out_worst")]
        print(f"| {row['launch']} | {row['seed']} | {row['train_seconds']:.0f} | {' | '.join(rates)} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
