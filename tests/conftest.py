"""Shared test helpers: the repository root on sys.path and a subprocess runner for scripts."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


@pytest.fixture
def run_script(tmp_path):
    """Run `python <script> args...` with cwd and --runs-dir in a temporary directory."""

    def run(script: str, *args: str, timeout: float = 300, preexec_fn=None):
        command = [sys.executable, os.path.join(REPO, script), "--runs-dir", str(tmp_path / "runs"), *args]
        env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
        return subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn
        )

    return run


def run_dirs(tmp_path) -> list[str]:
    """The run directories the scripts created under `tmp_path/runs`."""
    runs = tmp_path / "runs"
    return sorted(str(runs / d) for d in os.listdir(runs)) if runs.exists() else []


def start_script(tmp_path, script: str, *args: str):
    """Popen `script` with stdout/stderr in files (no pipe to block on): (proc, out, err).

    It starts with SIGINT ignored, as a shell starts a background job (`&`, nohup): the scripts
    must stop cleanly on Ctrl-C all the same. It leads a new session, so a test can signal the
    whole group as a terminal's Ctrl-C does."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, script), "--runs-dir", str(tmp_path / "runs"), *args],
        cwd=tmp_path,
        env=env,
        stdout=open(out, "w"),
        stderr=open(err, "w"),
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    return proc, out, err


def wait_for(path, pattern: str, proc, timeout: float = 120.0) -> list:
    """The matches of `pattern` in the file at `path`, waiting for the first; fails if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(pattern, path.read_text())
        if found:
            return found
        assert proc.poll() is None, f"exited early with {proc.returncode}: {path.read_text()[-2000:]}"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"{pattern!r} not seen in {timeout} s: {path.read_text()[-2000:]}")


def descendants(pid: int) -> set:
    """Pids of all live descendants of `pid` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except (ValueError, OSError, IndexError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_with_signal(tmp_path, script: str, args, signum, ready: str = r"step +\d+/", to_group: bool = False):
    """Start `script`, wait until `ready` shows in its output, send `signum` (to the process or its
    whole group) and check the clean stop: exit 128 + signum within 10 s, no child process left,
    a checkpoint that loads with weights_only=True. Returns (checkpoint state, stdout text)."""
    proc, out, err = start_script(tmp_path, script, *args)
    try:
        wait_for(out, ready, proc)
        children = descendants(proc.pid)
        sent = time.monotonic()
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        proc.wait(timeout=10)
        while any(alive(pid) for pid in children) and time.monotonic() < sent + 10:
            time.sleep(0.1)
        assert time.monotonic() - sent < 10, "took 10 s or more to stop"
        assert proc.returncode == 128 + signum, err.read_text()[-3000:]
        assert not [pid for pid in children if alive(pid)], "a child process outlived the script"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    import torch  # here, not at the top: the Mario adapter tests also run where torch is not

    (run_dir,) = run_dirs(tmp_path)
    path = os.path.join(run_dir, "checkpoint.pt")
    text = out.read_text()
    assert f"checkpoint {path}" in text and f"--resume {path}" in text, text[-2000:]
    return torch.load(path, weights_only=True), text
