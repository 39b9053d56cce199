"""Argument parsing, seeding, device choice, run directories and the progress line."""
import contextlib
import io
import os
import random
import sys
import time

import gymnasium as gym
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
        # tyro's error box is a title line, then the message (wrapped over several lines, maybe
        # after a rule) and more after another rule, drawn with -, ─ or box corners.
        lines = [line.strip(" -─│╭╮╰╯") for line in captured.getvalue().splitlines()]
        first = next((i for i, line in enumerate(lines) if line), len(lines))
        title = lines[first] if first < len(lines) else "invalid arguments"
        rest = lines[first + 1:]
        start = next((i for i, line in enumerate(rest) if line), len(rest))
        end = next((i for i in range(start, len(rest)) if not rest[i]), len(rest))
        message = " ".join(rest[start:end])
        if message.startswith("Error parsing "):  # "... --seed: why" or "... Args: __post_init__'s why"
            where, why = message[len("Error parsing "):].split(": ", 1)
            title, message = (why, "") if where[:1].isupper() else (f"invalid {where}", why)
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
        except OSError as e:  # a read-only parent, a file in the way, a full disk
            raise SystemExit(f"error: cannot create a run directory in --runs-dir {runs_dir}: "
                             f"{e.strerror or e}") from None
    raise SystemExit(f"error: cannot create a run directory for {stem} in {runs_dir}")


def check_env_id(env_id: str) -> str:
    """`env_id` if gymnasium knows it; a ValueError (one `error:` line from parse_args) if not."""
    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise ValueError(f"--env-id {env_id}: {e}") from None
    return env_id


class Progress:
    """Prints `step | mean recent return | [extra |] steps/s | ETA` on one line per call."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total_steps, self.start_step = total_steps, start_step
        self.start_time = time.perf_counter()

    def steps_per_second(self, step: int) -> float:
        return (step - self.start_step) / max(time.perf_counter() - self.start_time, 1e-9)

    def print(self, step: int, recent_returns, extra: str = "") -> None:
        sps = self.steps_per_second(step)
        mean = f"{np.mean(recent_returns):8.2f}" if len(recent_returns) else "     n/a"
        eta = (self.total_steps - step) / max(sps, 1e-9)
        print(f"step {step:>9}/{self.total_steps} | return {mean} | {extra + ' | ' if extra else ''}"
              f"{sps:7.0f} steps/s | ETA {int(eta) // 60:d}m{int(eta) % 60:02d}s", flush=True)
