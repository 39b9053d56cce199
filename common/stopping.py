"""Clean stopping: Ctrl-C and SIGTERM set a flag the training loop checks between steps; the script
then saves a checkpoint and exits 130/143. A flag, not a KeyboardInterrupt raised wherever the main
thread happens to be, makes the outcome the same wherever the signal lands. The handlers are set
even when the script was started with SIGINT ignored (`nohup`, `&`); a second signal exits at once
(checkpoints are written atomically, so the last one survives)."""
import contextlib
import os
import shlex
import signal
import sys
import threading

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

    def exit(self, step: int, checkpoint_path: str) -> None:
        """Print where the run stopped and how to continue it, then exit with `exit_code`."""
        print(f"stopped by {signal.Signals(self.signum).name} at step {step}; checkpoint "
              f"{checkpoint_path}\ncontinue with: {resume_command(sys.argv, checkpoint_path)}", flush=True)
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
def _stop_signals_handled_by(handler):
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)


def children_ignore_signals():
    """Start child processes inside this block: they ignore Ctrl-C and SIGTERM from birth, so a
    terminal's Ctrl-C (sent to the whole group) cannot kill one still importing torch. Only an
    ignored disposition survives multiprocessing's spawn (a handler or a blocked mask does not); a
    signal in the milliseconds `start()` takes is lost. The main process tells children to stop."""
    return _stop_signals_handled_by(signal.SIG_IGN)


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C and SIGTERM until the block is done, then deliver the first one received: a
    KeyboardInterrupt inside torch.save would leave its zip writer half-done (a RuntimeError in its
    place). Only the main thread can set signal handlers; elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    with _stop_signals_handled_by(lambda signum, frame: received.append(signum)):
        yield
    if received:
        signal.raise_signal(received[0])
