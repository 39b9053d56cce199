"""Run control: the command line, argument checks, seeds and the run directory."""

import contextlib
import io
import itertools
import math
import os
import random
import sys
import time

import numpy as np
import torch
import tyro


def parse_args(args_class):
    """`tyro.cli(args_class)`, with tyro's error box for a bad command line shortened to one line,
    `error: <message>`, and exit code 2."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(args_class)
    except SystemExit as e:
        if not e.code:  # --help
            raise
        # The box: a title row, the message (wrapped over rows), then a rule and the help hint.
        rows = [row.strip(" │╭╮╰╯─") for row in captured.getvalue().splitlines()[1:]]
        message = " ".join(itertools.takewhile(bool, rows))
        message = message.removeprefix("Error parsing ").removeprefix(f"{args_class.__name__}: ")
        print(f"error: {message or 'invalid arguments, see --help'}", file=sys.stderr)
        raise SystemExit(2) from None


def check_args(args, ranges: dict) -> None:
    """Raise ValueError (parse_args shows it as one `error:` line) for a number out of range: a field
    named in `ranges` must lie in its [low, high], any other must be positive; NaN and infinity fail
    every check. Also for a checkpoint path that is not a file."""
    ranges = {"seed": (0, 2**31 - 1), "eval_episodes": (0, 10**5)} | ranges
    for name, value in vars(args).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        low, high = ranges.get(name, (0, math.inf))
        if not (math.isfinite(value) and low <= value <= high and (name in ranges or value > 0)):
            limits = f"in [{low}, {high}]" if name in ranges else "positive"
            raise ValueError(f"--{name.replace('_', '-')} must be {limits}, got {value}")
    for path in (args.eval_checkpoint, args.resume):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"checkpoint not found: {path}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# One rule for the seeds of evaluation episodes, so that none is ever a training episode's:
def validation_seed(seed: int) -> int:
    """The first seed of the episodes that choose the kept model (the same every round)."""
    return 1_000_000 + 1_000 * seed


def evaluation_seed(seed: int) -> int:
    """The first seed of the final evaluation and of `--eval-checkpoint`: used nowhere else."""
    return 2_000_000 + 1_000 * seed


def make_run_dir(runs_dir: str, env_id: str, script: str, seed: int) -> str:
    """Create and return `runs_dir/<env>__<script>__<seed>__<timestamp>[-<pid>]`."""
    path = os.path.join(runs_dir, f"{env_id.replace('/', '-')}__{script}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        try:
            os.makedirs(path)
        except FileExistsError:  # another run started in the same second
            path = f"{path}-{os.getpid()}"
            os.makedirs(path)
    except OSError as e:  # a read-only parent, a file in the way, a full disk
        raise SystemExit(f"error: cannot create a run directory in --runs-dir {runs_dir}: {e.strerror or e}") from None
    return path
