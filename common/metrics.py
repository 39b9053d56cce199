"""Metrics CSV (one row per finished episode and per log interval) and a learning-curve PNG."""
import csv
import json
import os
import time
import warnings

import numpy as np

BASE_FIELDS = ("kind", "global_step", "time_s", "episode_return", "episode_length", "sps")


class MetricsWriter:
    """Writes `metrics.csv` in the run directory; `extra_fields` are the script's own columns."""

    def __init__(self, run_dir: str, extra_fields=(), start_time_s: float = 0.0):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, "metrics.csv")
        self.file = open(self.path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=BASE_FIELDS + tuple(extra_fields))
        self.writer.writeheader()
        # Resumed runs pass the wall-clock of the run they continue so time_s keeps counting.
        self.start = time.perf_counter() - start_time_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def episode(self, global_step: int, episode_return: float, episode_length: int, **extra):
        self._write("episode", global_step, episode_return=episode_return,
                    episode_length=episode_length, **extra)

    def log(self, global_step: int, sps: float, **extra):
        self._write("log", global_step, sps=round(sps, 1), **extra)

    def _write(self, kind, global_step, **values):
        row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}
        try:
            self.writer.writerow({"kind": kind, "global_step": global_step,
                                  "time_s": round(self.elapsed(), 3), **row})
            self.file.flush()
        except OSError as e:  # a full disk: stop with one line; the last checkpoint stays
            raise SystemExit(f"error: cannot write {self.path}: {e.strerror or e}") from None

    def close(self, y: str = "episode_return") -> None:
        self.file.close()
        plot_learning_curve(self.path, os.path.join(self.run_dir, "learning_curve.png"), y)


def write_evaluation(run_dir: str, returns, **extra) -> float:
    """Write `eval.json` (episodes, mean_return, returns, and any extra fields), the file
    benchmarks/benchmark.py reads; return the mean return."""
    returns = [float(r) for r in returns]
    mean = float(np.mean(returns)) if returns else float("nan")
    path = os.path.join(run_dir, "eval.json")
    try:
        with open(path, "w") as f:
            json.dump({"episodes": len(returns), "mean_return": mean, "returns": returns, **extra}, f)
    except OSError as e:
        raise SystemExit(f"error: cannot write {path}: {e.strerror or e}") from None
    return mean


def read_episodes(csv_path: str, y: str = "episode_return"):
    """(global_step, time_s, y) arrays of the episode rows of a metrics CSV."""
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "episode" and r[y] != ""]
    columns = [[float(r[key]) for r in rows] for key in ("global_step", "time_s", y)]
    return tuple(np.array(c) for c in columns)


def plot_learning_curve(csv_path: str, png_path: str, y: str = "episode_return", window: int = 20):
    """Episode values and their running mean against env steps; warns instead of failing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt

        steps, _, values = read_episodes(csv_path, y)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, values, ".", alpha=0.3, label=y)
        if len(values) >= window:
            running = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], running, label=f"mean of last {window}")
        ax.set_xlabel("env steps")
        ax.set_ylabel(y)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png_path, dpi=100)
        plt.close(fig)
    except Exception as e:
        warnings.warn(f"learning curve {png_path} not written: {type(e).__name__}: {e}")
