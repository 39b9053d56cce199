"""metrics.csv (a row per finished episode and per log interval) and eval.json. To plot a run:
`python benchmarks/plot_metrics.py --runs runs/<run>`."""

import csv
import json
import os
import time

import numpy as np

BASE_FIELDS = ("kind", "global_step", "time_s", "episode_return", "episode_length", "sps")


class MetricsWriter:
    """Writes `metrics.csv` in the run directory; `extra_fields` are the script's own columns. A
    resumed run passes the training time of the run it continues, so that time_s keeps counting."""

    def __init__(self, run_dir: str, extra_fields=(), start_time_s: float = 0.0):
        self.path = os.path.join(run_dir, "metrics.csv")
        self.file = open(self.path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=BASE_FIELDS + tuple(extra_fields))
        self.writer.writeheader()
        self.start = time.perf_counter() - start_time_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def episode(self, global_step: int, episode_return: float, episode_length: int, **extra) -> None:
        self._write("episode", global_step, episode_return=episode_return, episode_length=episode_length, **extra)

    def log(self, global_step: int, sps: float, **extra) -> None:
        self._write("log", global_step, sps=round(sps, 1), **extra)

    def _write(self, kind: str, global_step: int, **values) -> None:
        row = {key: (round(value, 6) if isinstance(value, float) else value) for key, value in values.items()}
        try:
            self.writer.writerow({"kind": kind, "global_step": global_step, "time_s": round(self.elapsed(), 3), **row})
            self.file.flush()
        except OSError as e:  # a full disk: one line; the last checkpoint stays
            raise SystemExit(f"error: cannot write {self.path}: {e.strerror or e}") from None

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
    print(
        f"evaluation of the model kept at step {kept_step}, {len(returns)} greedy episodes: mean return {mean:.2f}, "
        f"worst {min(returns, default=float('nan')):.2f}",
        flush=True,
    )
    return mean
