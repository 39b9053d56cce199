"""Checkpoints: state dicts and plain data, written atomically, loaded with weights_only=True."""
import contextlib
import os
import tempfile

import torch


def save_checkpoint(path: str, state: dict) -> None:
    """Write to a temporary file in the same directory, then rename it over `path`.

    A crash mid-write leaves the previous checkpoint intact: `os.replace` is atomic.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:  # KeyboardInterrupt too; it may arrive after the rename is done
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise


def load_checkpoint(path: str, script: str, device="cpu") -> dict:
    """Load a checkpoint written by `script`; anything else exits with a one-line error."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # missing, truncated, not a checkpoint, unsafe pickle...
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise SystemExit(f"error: cannot load checkpoint {path}: {type(e).__name__}: {first_line}")
    if not isinstance(state, dict) or state.get("script") != script:
        found = state.get("script") if isinstance(state, dict) else type(state).__name__
        raise SystemExit(f"error: {path} is not a {script} checkpoint (found {found!r})")
    return state
