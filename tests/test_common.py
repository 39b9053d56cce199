"""common/: checkpoints, metrics, videos, run directories, argument errors, clean stopping."""

import errno
import json
import multiprocessing
import os
import pickle
import signal
import warnings
from dataclasses import dataclass

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from common.checkpoint import KEYS, load_checkpoint, load_weights, save_checkpoint
from common.metrics import MetricsWriter, read_episodes, write_evaluation
from common.run import check_args, make_run_dir, parse_args
from common.stopping import StopRequest, children_ignore_signals, resume_command
from common.video import VideoWriter


def checkpoint(script="demo", **values) -> dict:
    """A checkpoint with every key of the schema, in order; `values` set some of them."""
    state = dict.fromkeys(KEYS)
    state["script"] = script
    state["args"] = {}
    return state | values


def test_checkpoint_round_trip_weights_only(tmp_path):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, checkpoint(model=net.state_dict(), optimizer=optimizer.state_dict(), global_step=7))
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind
    torch.load(path, weights_only=True)  # plain data only: the safe loader accepts it
    state = load_checkpoint(path, "demo")
    restored = torch.nn.Linear(3, 2)
    restored.load_state_dict(state["model"])
    assert torch.equal(restored.weight, net.weight) and state["global_step"] == 7
    assert state["optimizer"]["state"][0]["step"] == 1


def test_checkpoint_has_exactly_the_schema_keys(tmp_path):
    with pytest.raises(ValueError):
        save_checkpoint(str(tmp_path / "ckpt.pt"), {"script": "demo", "global_step": 1})
    assert os.listdir(tmp_path) == []


def test_checkpoint_write_failure_keeps_previous(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, checkpoint(global_step=1))
    with pytest.raises((pickle.PicklingError, AttributeError)):  # which one depends on the Python version
        save_checkpoint(path, checkpoint(global_step=2, resume_state={"bad": lambda: None}))  # unpicklable
    assert load_checkpoint(path, "demo")["global_step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_a_stop_during_a_checkpoint_write_keeps_the_previous(tmp_path, monkeypatch):
    """A second Ctrl-C exits at once, wherever it lands: in the middle of a write the previous
    checkpoint stays whole and no temporary file is left."""
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, checkpoint(global_step=1))

    def interrupted_fsync(fd):
        raise SystemExit(130)

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(SystemExit):
        save_checkpoint(path, checkpoint(global_step=2))
    assert load_checkpoint(path, "demo")["global_step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, checkpoint(global_step=1))

    def fsync_on_a_full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync_on_a_full_disk)
    with pytest.raises(SystemExit) as exit_:
        save_checkpoint(path, checkpoint(global_step=2))
    assert str(exit_.value) == f"error: cannot write checkpoint {path} (No space left on device)"
    assert "\n" not in str(exit_.value)
    assert load_checkpoint(path, "demo")["global_step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_checkpoint_permissions_follow_the_umask(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    previous = os.umask(0o022)
    try:
        save_checkpoint(path, checkpoint())
    finally:
        os.umask(previous)
    assert os.stat(path).st_mode & 0o777 == 0o644  # readable by others, as any written file


def test_load_checkpoint_errors_are_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    save_checkpoint(str(tmp_path / "other.pt"), checkpoint("other"))
    for name, expected in (("junk.pt", "cannot load"), ("other.pt", "not a demo checkpoint")):
        with pytest.raises(SystemExit) as e:
            load_checkpoint(str(tmp_path / name), "demo")
        assert expected in str(e.value) and "\n" not in str(e.value)


@dataclass
class _NetArgs:
    hidden_size: int = 4
    seed: int = 1
    learning_rate: float = 1e-3


def test_load_weights_names_the_argument_that_differs():
    trained_with = {"hidden_size": 8, "seed": 3, "learning_rate": 1e-3}
    weights = torch.nn.Linear(2, 8).state_dict()
    with pytest.raises(SystemExit) as e:
        load_weights(torch.nn.Linear(2, 4), weights, "c.pt", {"args": trained_with}, _NetArgs())
    message = str(e.value)
    assert message.startswith("error: c.pt does not fit") and "--hidden-size 8" in message, message
    assert "--seed" not in message and "--learning-rate" not in message and "\n" not in message


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


def test_metrics_rows_and_evaluation(tmp_path, capsys):
    run_dir = make_run_dir(str(tmp_path), "ALE/Pong-v5", "demo", 1)
    assert os.path.basename(run_dir).startswith("ALE-Pong-v5__demo__1__")
    metrics = MetricsWriter(run_dir, ("loss",), total_steps=600)
    for i in range(30):
        metrics.episode(10 * (i + 1), float(i), 10)
    metrics.log(300, loss=0.5)
    metrics.print_progress(300, [1.0, 2.0], "x_pos 7")
    metrics.close()
    steps, seconds, returns = read_episodes(os.path.join(run_dir, "metrics.csv"))
    assert list(steps[:2]) == [10, 20] and returns[-1] == 29 and (np.diff(seconds) >= 0).all()
    mean = write_evaluation(run_dir, [{"return": 1.0, "x_pos": 5}, {"return": 3.0, "x_pos": 7}], kept_step=300)
    printed = capsys.readouterr().out
    assert "step       300/600 | return     1.50 | x_pos 7 |" in printed and "steps/s | ETA" in printed
    assert mean == 2.0 and "mean return 2.00, worst 1.00" in printed
    result = json.load(open(os.path.join(run_dir, "eval.json")))
    assert result["returns"] == [1.0, 3.0] and result["kept_step"] == 300 and result["per_episode"][1]["x_pos"] == 7


def test_second_run_dir_in_the_same_second_is_distinct(tmp_path):
    assert make_run_dir(str(tmp_path), "E", "s", 1) != make_run_dir(str(tmp_path), "E", "s", 1)


@dataclass
class _Args:
    steps: int = 1
    """steps"""
    rate: float = 0.5
    """a rate in [0, 1]"""
    eval_checkpoint: str | None = None
    resume: str | None = None

    def __post_init__(self):
        check_args(self, {"rate": (0, 1)})


@pytest.mark.parametrize(
    "argv", [["--steps", "0"], ["--steps", "x"], ["--nope"], ["--rate", "nan"], ["--rate", "inf"], ["--rate", "2"],
             ["--steps", "1e999"], ["--resume", "no/such.pt"]],
)  # fmt: skip
def test_parse_args_one_line_error(argv, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["prog", *argv])
    with pytest.raises(SystemExit) as e:
        parse_args(_Args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err


def test_check_args_accepts_the_edges(monkeypatch):
    monkeypatch.setattr("sys.argv", ["prog", "--rate", "0", "--steps", "3"])
    assert parse_args(_Args) == _Args(steps=3, rate=0.0)


def test_stop_request_flags_the_first_signal_and_exits_on_the_second():
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = StopRequest()
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.signum == signal.SIGTERM
        with pytest.raises(SystemExit) as exit_:
            os.kill(os.getpid(), signal.SIGINT)  # a second signal: stop at once
        assert exit_.value.code == 130

        after_training = StopRequest()
        after_training.training_done()
        with pytest.raises(SystemExit) as exit_:  # the final evaluation: the first signal exits
            os.kill(os.getpid(), signal.SIGTERM)
        assert exit_.value.code == 143
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_resume_command_repeats_the_launch_and_replaces_any_resume():
    argv = ["/x/mario_ddqn.py", "--total-steps", "2000000", "--resume", "old.pt", "--seed", "2"]
    assert resume_command(argv, "runs/a b/checkpoint.pt") == (
        "python /x/mario_ddqn.py --total-steps 2000000 --seed 2 --resume 'runs/a b/checkpoint.pt'"
    )
    assert resume_command(["s.py", "--resume=old.pt"], "c.pt") == "python s.py --resume c.pt"


def test_resume_command_under_torchrun_repeats_its_layout(monkeypatch):
    """torchrun's variables give back its command: --standalone on one machine, this machine's --node-rank
    and the rendezvous address on several."""
    layout = {"TORCHELASTIC_RUN_ID": "x", "GROUP_WORLD_SIZE": "1", "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    layout |= {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    for name, value in layout.items():
        monkeypatch.setenv(name, value)
    expected = "torchrun --standalone --nproc-per-node 2 s.py --seed 2 --resume c.pt"
    assert resume_command(["s.py", "--seed", "2"], "c.pt") == expected
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    monkeypatch.setenv("GROUP_RANK", "1")
    nodes = "--nnodes 2 --node-rank 1 --master-addr 10.0.0.1 --master-port 29500 --nproc-per-node 2"
    assert resume_command(["s.py"], "c.pt") == f"torchrun {nodes} s.py --resume c.pt"


def test_stop_request_shared_by_ranks_waits_for_join():
    """Shared (torchrun): a signal is only received until join() makes the stop, with the signal any rank
    received; a second signal still exits at once."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = StopRequest(shared=True)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM and not stop
        stop.join(0)
        assert not stop
        stop.join(stop.received)
        assert stop and stop.signum == signal.SIGTERM
        with pytest.raises(SystemExit) as second:
            os.kill(os.getpid(), signal.SIGINT)
        assert second.value.code == 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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
