"""Clean stopping: Ctrl-C and SIGTERM ask the training loop to stop; it saves, then exits 130/143.

    stop = StopRequest()                    # before the loop; child processes start inside
    while step < total and not stop:        #   `with children_ignore_signals():`
        ...                                 # the step in progress always completes
    save_checkpoint(...)                    # always, when stopped
    stop.exit(step, checkpoint_path)        # prints how to resume, exits 128 + signal number

A flag checked between steps, instead of a KeyboardInterrupt raised wherever the main thread
happens to be, makes the outcome the same wherever the signal lands. The handlers are installed
even when the script was started with SIGINT ignored (`nohup`, `&` in a non-interactive shell).
A second signal exits at once with the same code: checkpoints are written atomically, so the last
one survives.
"""
import contextlib
import os
import shlex
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """False until Ctrl-C (SIGINT) or SIGTERM arrives; `exit()` then ends the process."""

    def __init__(self):
        self.signum = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise SystemExit(128 + self.signum)
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def exit(self, step: int, checkpoint_path: str | None) -> None:
        """Print where the run stopped and how to continue it, then exit with `exit_code`."""
        where = f"; checkpoint {checkpoint_path}" if checkpoint_path else ""
        print(f"stopped by {signal.Signals(self.signum).name} at step {step}{where}", flush=True)
        if checkpoint_path:
            print(f"continue with: {resume_command(sys.argv, checkpoint_path)}", flush=True)
        raise SystemExit(self.exit_code)


def resume_command(argv: list[str], checkpoint_path: str) -> str:
    """The command line that was run, with `--resume checkpoint_path` in place of any --resume."""
    kept, skip = [], False
    for arg in argv[1:]:
        if not skip and arg != "--resume" and not arg.startswith("--resume="):
            kept.append(arg)
        skip = arg == "--resume"
    return shlex.join(["python", os.path.basename(argv[0]), *kept, "--resume", checkpoint_path])


@contextlib.contextmanager
def children_ignore_signals():
    """Start child processes inside this block: they ignore Ctrl-C and SIGTERM from birth.

    A terminal's Ctrl-C goes to every process of the group. A spawned child that is still importing
    torch would die of it (exit 1, a traceback) before it could ignore SIGINT itself, and the run
    would report a dead worker instead of stopping cleanly. An ignored signal stays ignored through
    fork and exec (a handler or a blocked mask does not survive multiprocessing's spawn), so the
    signals are ignored while the children start, for the milliseconds that `start()` takes; a
    signal that arrives in that window is lost. The main process tells the children when to stop.
    """
    handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
