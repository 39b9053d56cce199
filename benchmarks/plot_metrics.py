"""Plot columns of one or more runs' metrics.csv against env steps, one panel per column.

    python benchmarks/plot_metrics.py --runs runs/<run1> runs/<run2> --columns episode_return entropy kl \
        --out docs/lunarlander_diagnostics.png

Episode columns (episode_return, episode_length, x_pos) are drawn as a running mean over
--window episodes; log columns (losses, entropy, kl, ...) as they were logged.
"""

import csv
import os
import sys
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.run import parse_args  # noqa: E402


@dataclass
class Args:
    runs: tuple[str, ...]
    """run directories (each holds a metrics.csv)"""
    labels: tuple[str, ...] = ()
    """legend labels, one per run (default: the run directories' names)"""
    columns: tuple[str, ...] = ("episode_return",)
    """metrics.csv columns, one panel each"""
    out: str = "metrics.png"
    """the PNG to write"""
    window: int = 100
    """episodes in the running mean of episode columns"""
    log_y: tuple[str, ...] = ()
    """columns drawn on a log scale"""

    def __post_init__(self):
        for run in self.runs:
            if not os.path.isfile(os.path.join(run, "metrics.csv")):
                raise ValueError(f"no metrics.csv in {run}")
        if self.labels and len(self.labels) != len(self.runs):
            raise ValueError("--labels needs one label per run")


def series(csv_path: str, column: str, window: int):
    """(steps, values) of `column`: the running mean of episode rows, or the log rows as logged."""
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(column, "") != ""]
    steps = np.array([float(r["global_step"]) for r in rows])
    values = np.array([float(r[column]) for r in rows])
    if rows and rows[0]["kind"] == "episode" and len(values) >= window:
        return steps[window - 1 :], np.convolve(values, np.ones(window) / window, mode="valid")
    return steps, values


if __name__ == "__main__":
    args = parse_args(Args)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.columns), 1, figsize=(8, 2.2 * len(args.columns)), sharex=True, squeeze=False)
    for ax, column in zip(axes[:, 0], args.columns, strict=True):
        labels = args.labels or [os.path.basename(os.path.normpath(run)) for run in args.runs]
        for run, label in zip(args.runs, labels, strict=True):
            steps, values = series(os.path.join(run, "metrics.csv"), column, args.window)
            ax.plot(steps, values, label=label, lw=1)
        ax.set_ylabel(column)
        if column in args.log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    axes[-1, 0].set_xlabel("env steps")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
