"""Checkpoints: one schema for all five scripts, state dicts and plain data only, written atomically,
loaded with `torch.load(..., weights_only=True)`. The top-level keys:
    script        the script's name: a checkpoint of another script is refused
    args          the Args it ran with, as a dict
    global_step   environment steps taken so far
    time_s        wall-clock seconds of training so far (a resumed run keeps counting)
    model         the network being trained (state dict)
    optimizer     its optimizer (state dict)
    kept_model    the network that the final evaluation and `--eval-checkpoint` play: the best on
                  validation where the script chooses one, else the latest (state dict)
    kept_step     the global_step at which kept_model was kept
    kept_score    its validation score (NaN where the script keeps the latest)
    resume_state  whatever else `--resume` needs (plain data and state dicts), per script
A shipped model (pretrained/) has model, optimizer and resume_state set to None."""

import io
import os

import torch

KEYS = ("script", "args", "global_step", "time_s", "model", "optimizer")
KEYS += ("kept_model", "kept_step", "kept_score", "resume_state")
# The Args fields that every script has first; they never change a network's shape.
RUN_CONTROL = ("total_steps", "seed", "cuda", "runs_dir", "capture_video", "save_model", "eval_episodes")
RUN_CONTROL += ("eval_checkpoint", "resume", "log_interval")


def save_checkpoint(path: str, state: dict) -> None:
    """Serialise in memory, write `path`.tmp, then rename it over `path`: a crash or a second Ctrl-C
    mid-write leaves the previous checkpoint whole. A full or read-only disk is one `error:` line."""
    if tuple(state) != KEYS:
        raise ValueError(f"a checkpoint has the keys {KEYS}, got {tuple(state)}")
    buffer = io.BytesIO()
    torch.save(state, buffer)  # in memory: a failing disk shows as an OSError below, not inside torch
    tmp_path = path + ".tmp"
    try:
        with open(tmp_path, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:  # the previous checkpoint, if any, is kept
        raise SystemExit(f"error: cannot write checkpoint {path} ({e.strerror or e})") from None
    finally:
        if os.path.exists(tmp_path):  # the write failed, or a second signal cut it short
            os.unlink(tmp_path)


def load_checkpoint(path: str, script: str, device="cpu") -> dict:
    """Load a checkpoint written by `script`; anything else exits with a one-line error."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # missing, truncated, not a checkpoint, unsafe pickle...
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise SystemExit(f"error: cannot load checkpoint {path}: {type(e).__name__}: {first_line}") from None
    if not isinstance(state, dict) or state.get("script") != script:
        found = state.get("script") if isinstance(state, dict) else type(state).__name__
        raise SystemExit(f"error: {path} is not a {script} checkpoint (found {found!r})")
    if tuple(state) != KEYS:
        raise SystemExit(f"error: {path} was written by an older version of {script} (keys {', '.join(state)})")
    return state


def load_weights(module: torch.nn.Module, weights: dict, path: str, state: dict, args) -> None:
    """`module.load_state_dict(weights)`; a network of another shape ends in one `error:` line naming
    the arguments with which the checkpoint was trained differently."""
    try:
        module.load_state_dict(weights)
    except RuntimeError:
        trained_with = [
            f"--{name.replace('_', '-')} {value}"
            for name, value in state["args"].items()
            if name not in RUN_CONTROL and vars(args).get(name, value) != value
        ]
        reason = ", ".join(trained_with) or "another network"
        raise SystemExit(f"error: {path} does not fit these arguments: it was trained with {reason}") from None
