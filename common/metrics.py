"""metrics.csv (a row per episode and per log interval), the progress line and eval.json."""

import csv
import json
import os
import time

import numpy as np

BASE_FIELDS = ("kind", "global_step", "time_s", "episode_return", "episode_length", "sps")


class MetricsWriter:
    """Writes `metrics.csv` in the run directory (`extra_fields`: the script's own columns) and prints
    the progress line. A resumed run passes its checkpoint's global_step and time_s: counting goes on.
    Without a run directory (a torchrun rank other than 0) it counts and writes nothing."""

    def __init__(self, run_dir: str, extra_fields, total_steps: int, start_step: int = 0, start_time_s: float = 0.0):
        self.path = os.path.join(run_dir, "metrics.csv") if run_dir else os.devnull
        self.file = open(self.path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=BASE_FIELDS + tuple(extra_fields))
        self.writer.writeheader()
        self.total_steps = total_steps
        self.start_step = start_step
        self.started = time.perf_counter()
        self.start = self.started - start_time_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def steps_per_second(self, step: int) -> float:
        return (step - self.start_step) / max(time.perf_counter() - self.started, 1e-9)

    def episode(self, global_step: int, episode_return: float, episode_length: int, **extra) -> None:
        self._write("episode", global_step, episode_return=episode_return, episode_length=episode_length, **extra)

    def log(self, global_step: int, **extra) -> None:
        self._write("log", global_step, sps=round(self.steps_per_second(global_step), 1), **extra)

    def _write(self, kind: str, global_step: int, **values) -> None:
        row = {key: (round(value, 6) if isinstance(value, float) else value) for key, value in values.items()}
        try:
            self.writer.writerow({"kind": kind, "global_step": global_step, "time_s": round(self.elapsed(), 3), **row})
            self.file.flush()
        except OSError as e:  # a full disk: one line; the last checkpoint stays
            raise SystemExit(f"error: cannot write {self.path}: {e.strerror or e}") from None

    def print_progress(self, step: int, recent_returns, extra: str = "") -> None:
        """`step | mean recent return | [extra |] steps/s | ETA` on one line."""
        sps = self.steps_per_second(step)
        mean = f"{np.mean(recent_returns):8.2f}" if len(recent_returns) else "     n/a"
        eta = int((self.total_steps - step) / max(sps, 1e-9))
        extra = f"{extra} | " if extra else ""
        speed = f"{sps:7.0f} steps/s | ETA {eta // 60}m{eta % 60:02d}s"
        print(f"step {step:>9}/{self.total_steps} | return {mean} | {extra}{speed}", flush=True)

    def close(self) -> None:
        self.file.close()


def read_episodes(csv_path: str, column: str = "episode_return"):
    """(global_step, time_s, column) arrays of the episode rows of a metrics.csv."""
    with open(csv_path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["kind"] == "episode" and row[column] != ""]
    return tuple(np.array([float(row[key]) for row in rows]) for key in ("global_step", "time_s", column))


def write_evaluation(run_dir: str, episodes: list[dict], kept_step: int) -> float:
    """Print the result of `evaluate` (a dict per episode, with at least its "return") and write it
    to eval.json: episodes, mean_return, returns, kept_step and the per-episode dicts."""
    returns = [float(episode["return"]) for episode in episodes]
    mean = float(np.mean(returns)) if returns else float("nan")
    result = {"episodes": len(returns), "mean_return": mean, "returns": returns, "kept_step": kept_step}
    path = os.path.join(run_dir, "eval.json")
    try:
        with open(path, "w") as f:
            json.dump({**result, "per_episode": episodes}, f)
    except OSError as e:
        raise SystemExit(f"error: cannot write {path}: {e.strerror or e}") from None
    worst = min(returns, default=float("nan"))
    print(f"evaluation of the model kept at step {kept_step}, {len(returns)} greedy episodes: ", end="")
    print(f"mean return {mean:.2f}, worst {worst:.2f}", flush=True)
    return mean
