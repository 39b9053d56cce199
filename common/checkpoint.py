"""Checkpoints: state dicts and plain data, written atomically, loaded with weights_only=True."""
import os
import tempfile

import torch

from common.stopping import signals_held


def save_checkpoint(path: str, state: dict) -> None:
    """Write to a temporary file in the same directory, then rename it over `path`.

    A crash mid-write leaves the previous checkpoint intact: `os.replace` is atomic. Ctrl-C or
    SIGTERM during the write takes effect once the new checkpoint is in place. A full or read-only
    disk ends the run with one `error:` line; the previous checkpoint stays.
    """
    directory = os.path.dirname(os.path.abspath(path))
    with signals_held():
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp's 0600 would hide a shared checkpoint
        except OSError as e:
            raise SystemExit(f"error: cannot write checkpoint {path}: {e.strerror or e}")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
        except BaseException as e:
            os.unlink(tmp_path)
            # torch's zip writer reports a failed write (ENOSPC, EFBIG) as "unexpected pos"
            if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "unexpected pos" in str(e)):
                reason = e.strerror if isinstance(e, OSError) else "write failed, is the disk full?"
                raise SystemExit(f"error: cannot write checkpoint {path} ({reason}); the previous "
                                 "checkpoint, if any, is kept") from None
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
