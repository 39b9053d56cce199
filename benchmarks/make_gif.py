"""Film a trained agent with its script's --eval-checkpoint and write a short GIF for the docs.

    python benchmarks/make_gif.py --script cartpole_dqn.py --checkpoint runs/<run>/checkpoint.pt \
        --out docs/cartpole_dqn.gif

The script plays its evaluation with --capture-video into a temporary folder (every script films
its first evaluation episode to <run>/videos/eval.mp4); the first `--seconds` of that video, every
`--every`-th frame, shrunk by `--shrink`, become the GIF.
"""

import glob
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import imageio.v2 as imageio
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.run import parse_args  # noqa: E402


@dataclass
class Args:
    script: str
    """the script that trained the checkpoint, e.g. cartpole_dqn.py"""
    checkpoint: str
    """the checkpoint to play (passed to --eval-checkpoint)"""
    out: str
    """where to write the GIF"""
    seconds: float = 8.0
    """length of the GIF, in seconds of the video"""
    every: int = 2
    """keep every n-th frame"""
    shrink: int = 2
    """keep every n-th pixel in each direction"""
    script_args: str = "--eval-episodes 1"
    """extra arguments for the evaluation run"""

    def __post_init__(self):
        if not os.path.isfile(self.script) or not os.path.isfile(self.checkpoint):
            raise ValueError("--script and --checkpoint must be existing files")
        if self.seconds <= 0 or self.every < 1 or self.shrink < 1:
            raise ValueError("--seconds must be > 0, --every and --shrink >= 1")


if __name__ == "__main__":
    args = parse_args(Args)
    with tempfile.TemporaryDirectory() as runs:
        command = [
            sys.executable,
            args.script,
            "--eval-checkpoint",
            args.checkpoint,
            "--capture-video",
            "--runs-dir",
            runs,
            *shlex.split(args.script_args),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        videos = glob.glob(os.path.join(runs, "*", "videos", "eval.mp4"))
        if result.returncode != 0 or not videos:
            raise SystemExit(f"error: {shlex.join(command)} wrote no video:\n{result.stderr[-2000:]}")
        reader = imageio.get_reader(videos[0])
        fps = reader.get_meta_data().get("fps", 30)
        frames = [
            np.asarray(frame)[:: args.shrink, :: args.shrink]
            for i, frame in enumerate(reader)
            if i < args.seconds * fps and i % args.every == 0
        ]
        reader.close()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    imageio.mimsave(args.out, frames, duration=1000 * args.every / fps, loop=0)  # duration: ms a frame
    print(f"{args.out}: {len(frames)} frames, {os.path.getsize(args.out) / 1e6:.2f} MB")
