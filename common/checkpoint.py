"""Checkpoints: state dicts and plain data, written atomically, loaded with weights_only=True."""
import contextlib
import os
import signal
import tempfile
import threading

import torch


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C and SIGTERM until the block is done, then deliver the first one received.

    A KeyboardInterrupt raised inside torch.save leaves its zip writer half-done, and the writer's
    cleanup then raises a RuntimeError in its place: the script would crash instead of stopping
    cleanly. Only the main thread can set signal handlers; elsewhere nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])


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
            # torch's zip writer reports a failed write (ENOSPC, EFBIG) as a RuntimeError
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, OSError) or (isinstance(e, RuntimeError) and any(
                    s in message for s in ("unexpected pos", "file write failed", "PytorchStreamWriter"))):
                reason = (e.strerror if isinstance(e, OSError) and e.strerror
                          else f"write failed, is the disk full? torch: {message}")
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
