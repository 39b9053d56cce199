"""Argument parsing, seeding, device choice, run directories and the progress line."""
import contextlib
import io
import os
import random
import sys
import time

import numpy as np
import torch
import tyro


def parse_args(args_class):
    """`tyro.cli`, except that a bad command line ends in one `error:` line and exit code 2."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args, unknown = tyro.cli(args_class, return_unknown_args=True)
    except SystemExit as exit_:
        if not exit_.code:  # --help
            raise
        # tyro's error box is a title line, a rule and the message, drawn with -, ─ or box corners.
        lines = [line.strip(" -─│╭╮╰╯") for line in captured.getvalue().splitlines()]
        title, message, *_ = [line for line in lines if line] + ["invalid arguments", ""]
        print(f"error: {title}: {message}".rstrip(": "), file=sys.stderr)
        sys.exit(2)
    if unknown:
        print(f"error: unrecognized arguments: {' '.join(unknown)}", file=sys.stderr)
        sys.exit(2)
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(cuda: bool) -> torch.device:
    return torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")


def make_run_dir(runs_dir: str, env_id: str, script: str, seed: int) -> str:
    """Create and return `runs_dir/<env>__<script>__<seed>__<timestamp>[-n]/`."""
    stem = f"{env_id.replace('/', '-')}__{script}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in [""] + [f"-{n}" for n in range(1, 1000)]:
        try:
            os.makedirs(os.path.join(runs_dir, stem + suffix))
            return os.path.join(runs_dir, stem + suffix)
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory for {stem} in {runs_dir}")


class Progress:
    """Prints `step | mean recent return | steps/s | ETA` on one line per call."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total_steps, self.start_step = total_steps, start_step
        self.start_time = time.perf_counter()

    def steps_per_second(self, step: int) -> float:
        return (step - self.start_step) / max(time.perf_counter() - self.start_time, 1e-9)

    def print(self, step: int, recent_returns) -> None:
        sps = self.steps_per_second(step)
        mean = f"{np.mean(recent_returns):8.2f}" if len(recent_returns) else "     n/a"
        eta = (self.total_steps - step) / max(sps, 1e-9)
        print(f"step {step:>9}/{self.total_steps} | return {mean} | {sps:7.0f} steps/s | "
              f"ETA {int(eta) // 60:d}m{int(eta) % 60:02d}s", flush=True)
