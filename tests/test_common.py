"""common/: checkpoints, videos, metrics and the one-line argument errors."""

import multiprocessing
import os
import signal
import warnings
from dataclasses import dataclass

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint, save_checkpoint
from common.metrics import MetricsWriter, read_episodes
from common.stopping import StopRequest, children_ignore_signals, resume_command
from common.utils import make_run_dir, parse_args
from common.video import VideoWriter


def test_checkpoint_round_trip_weights_only(tmp_path):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(
        path,
        {
            "script": "demo",
            "net": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "global_step": 7,
            "args": {"a": 1},
        },
    )
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind
    torch.load(path, weights_only=True)  # plain data only: the safe loader accepts it
    state = load_checkpoint(path, "demo")
    restored = torch.nn.Linear(3, 2)
    restored.load_state_dict(state["net"])
    assert torch.equal(restored.weight, net.weight) and state["global_step"] == 7
    assert state["optimizer"]["state"][0]["step"] == 1


def test_checkpoint_write_failure_keeps_previous(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, {"script": "demo", "global_step": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"script": "demo", "bad": lambda: None})  # unpicklable
    assert load_checkpoint(path, "demo")["global_step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_ctrl_c_during_a_checkpoint_write_waits_for_the_file(tmp_path, monkeypatch):
    """Ctrl-C in the middle of torch.save: the new checkpoint is still completed, and then the
    KeyboardInterrupt arrives (a half-written zip made torch raise a RuntimeError instead)."""
    save = torch.save

    def save_interrupted(obj, f):
        os.kill(os.getpid(), signal.SIGINT)
        save(obj, f)

    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, {"script": "demo", "global_step": 1})
    monkeypatch.setattr(torch, "save", save_interrupted)
    # Python's own Ctrl-C handler, as in a terminal: a background CI shell starts us with SIGINT
    # ignored, and an ignored signal must stay ignored after the write.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, {"script": "demo", "global_step": 2})
    finally:
        signal.signal(signal.SIGINT, previous)
    assert load_checkpoint(path, "demo")["global_step"] == 2
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_load_checkpoint_errors_are_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    save_checkpoint(str(tmp_path / "other.pt"), {"script": "other"})
    for name, expected in (("junk.pt", "cannot load"), ("other.pt", "not a demo checkpoint")):
        with pytest.raises(SystemExit) as e:
            load_checkpoint(str(tmp_path / name), "demo")
        assert expected in str(e.value) and "\n" not in str(e.value)


def test_video_written_and_readable(tmp_path):
    path = str(tmp_path / "videos" / "clip.mp4")
    video = VideoWriter(path, fps=10)
    frames = [np.full((48, 64, 3), 20 * i, dtype=np.uint8) for i in range(10)]
    for frame in frames:
        video.add(frame)
    video.close()
    read = [f for f in imageio.get_reader(path)]
    assert len(read) == 10 and read[0].shape == (48, 64, 3)
    assert abs(float(read[9].mean()) - 180) < 5  # the content survived the encoding


def test_video_failure_only_warns(tmp_path):
    (tmp_path / "file").write_text("a file where a directory should be")
    video = VideoWriter(str(tmp_path / "file" / "clip.mp4"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        video.add(np.zeros((8, 8, 3), dtype=np.uint8))
        video.add(np.zeros((8, 8, 3), dtype=np.uint8))
        video.close()
    assert len(caught) == 1 and "not written" in str(caught[0].message)


def test_metrics_rows_and_curve(tmp_path):
    run_dir = make_run_dir(str(tmp_path), "ALE/Pong-v5", "demo", 1)
    assert os.path.basename(run_dir).startswith("ALE-Pong-v5__demo__1__")
    metrics = MetricsWriter(run_dir, ("loss",))
    for i in range(30):
        metrics.episode(10 * (i + 1), float(i), 10)
    metrics.log(300, 1234.5, loss=0.5)
    metrics.close()
    steps, seconds, returns = read_episodes(os.path.join(run_dir, "metrics.csv"))
    assert list(steps[:2]) == [10, 20] and returns[-1] == 29 and (np.diff(seconds) >= 0).all()
    assert os.path.getsize(os.path.join(run_dir, "learning_curve.png")) > 1000


def test_second_run_dir_in_the_same_second_is_distinct(tmp_path):
    assert make_run_dir(str(tmp_path), "E", "s", 1) != make_run_dir(str(tmp_path), "E", "s", 1)


@dataclass
class _Args:
    steps: int = 1
    """steps"""

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError("--steps must be positive")


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--steps", "x"], ["--nope"]])
def test_parse_args_one_line_error(argv, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["prog", *argv])
    with pytest.raises(SystemExit) as e:
        parse_args(_Args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, {"script": "demo", "global_step": 1})

    def save_on_a_full_disk(obj, f):  # what torch's zip writer raises when a write fails
        f.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    with pytest.raises(SystemExit) as exit_:
        save_checkpoint(path, {"script": "demo", "global_step": 2})
    assert str(exit_.value).startswith(f"error: cannot write checkpoint {path} (write failed")
    assert load_checkpoint(path, "demo")["global_step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_checkpoint_permissions_follow_the_umask(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    previous = os.umask(0o022)
    try:
        save_checkpoint(path, {"script": "demo"})
    finally:
        os.umask(previous)
    assert os.stat(path).st_mode & 0o777 == 0o644  # readable by others, as any written file


def test_stop_request_flags_the_first_signal_and_exits_on_the_second():
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = StopRequest()
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.exit_code == 143
        with pytest.raises(SystemExit) as exit_:
            os.kill(os.getpid(), signal.SIGINT)  # a second signal: stop at once
        assert exit_.value.code == 143
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_resume_command_replaces_any_resume():
    argv = ["/x/mario_ddqn.py", "--total-steps", "2000000", "--resume", "old.pt", "--seed", "2"]
    assert resume_command(argv, "runs/a b/checkpoint.pt") == (
        "python mario_ddqn.py --total-steps 2000000 --seed 2 --resume 'runs/a b/checkpoint.pt'"
    )
    assert resume_command(["s.py", "--resume=old.pt"], "c.pt") == "python s.py --resume c.pt"


def report_sigint_handler(queue):
    queue.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_children_are_born_ignoring_stop_signals():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with children_ignore_signals():
            child = ctx.Process(target=report_sigint_handler, args=(queue,))
            child.start()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored at once
        assert queue.get(timeout=60) is True
        child.join(10)
    finally:
        signal.signal(signal.SIGINT, previous)
