"""Clean stopping: Ctrl-C and SIGTERM set a flag that the training loop reads between steps (so a stop
is the same wherever the signal lands); the script then saves a checkpoint, prints the command that
continues the run and exits 130 / 143. A second signal, or one after `training_done()`, exits at once."""

import contextlib
import os
import shlex
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """False until Ctrl-C (SIGINT) or SIGTERM arrives; set even if SIGINT was ignored (`nohup`). `shared`
    (torchrun's ranks): a signal is only `received` until `join` makes every rank stop at the same step."""

    def __init__(self, shared: bool = False):
        self.signum = None
        self.received = 0  # the signal this process received
        self.shared = shared
        self.exit_at_once = False
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received or self.exit_at_once:
            raise SystemExit(128 + signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        self.received = signum
        if not self.shared:
            self.signum = signum

    def join(self, signum: int) -> None:
        """Stop as if `signum` (0: none) had arrived here: the signal that any rank received."""
        self.signum = self.signum or signum or None

    def __bool__(self) -> bool:
        return self.signum is not None

    def training_done(self) -> None:
        """The checkpoint is written: from now on (the final evaluation) a signal exits at once."""
        self.exit_at_once = True

    def exit(self, step: int, checkpoint_path: str) -> None:
        """Print where the run stopped and how to continue it, then exit 130 / 143."""
        print(f"stopped by {signal.Signals(self.signum).name} at step {step}; checkpoint {checkpoint_path}")
        print(f"continue with: {resume_command(sys.argv, checkpoint_path)}", flush=True)
        raise SystemExit(128 + self.signum)


def resume_command(argv: list[str], checkpoint_path: str) -> str:
    """The command as it was launched, with `--resume checkpoint_path` in place of any --resume."""
    kept = []
    for i, arg in enumerate(argv[1:], start=1):
        if arg != "--resume" and not arg.startswith("--resume=") and argv[i - 1] != "--resume":
            kept.append(arg)
    return shlex.join([*launcher(), argv[0], *kept, "--resume", checkpoint_path])


def launcher() -> list[str]:
    """python, or torchrun with the layout it was given (read from the variables torchrun sets)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return ["python"]
    env = os.environ
    layout = ["--standalone"]
    if env["GROUP_WORLD_SIZE"] != "1":  # this machine's command; the others differ in --node-rank
        layout = ["--nnodes", env["GROUP_WORLD_SIZE"], "--node-rank", env["GROUP_RANK"]]
        layout += ["--master-addr", env["MASTER_ADDR"], "--master-port", env["MASTER_PORT"]]
    return ["torchrun", *layout, "--nproc-per-node", env["LOCAL_WORLD_SIZE"]]


def collective(operation, *tensors) -> None:
    """A torch.distributed call (all_reduce, all_gather, ...): a rank that died or stopped answering (gloo's
    connection reset, the process group's timeout) ends this one with one line, not a traceback."""
    try:
        operation(*tensors)
    except RuntimeError as e:  # gloo: "[source.cc:537] Read error [host]:port: Connection reset by peer. This ..."
        reason = str(e).splitlines()[0].split("] ", 1)[-1].split(". ")[0]
        raise SystemExit(f"error: another torchrun rank stopped answering ({reason})") from None


@contextlib.contextmanager
def children_ignore_signals():
    """Children started in this block ignore Ctrl-C and SIGTERM from birth (only an ignored disposition
    survives a spawn): a Ctrl-C to the process group cannot kill one still importing torch."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
