"""A batched numpy environment of many games, split into shards that worker processes step.

The environment is any class `make_env(n_games, seed)` with `observe()` and `step(*actions)`, both
returning a tuple of arrays batched over its games (as `ppo_selfplay.PongDuel` does)."""
import contextlib
import multiprocessing as mp

import numpy as np

from common.stopping import children_ignore_signals


def _worker(conn, make_env, n_games: int, seed: int) -> None:
    """Steps one shard; it ignores Ctrl-C and SIGTERM (children_ignore_signals): the parent stops it."""
    env = make_env(n_games, seed)
    with contextlib.suppress(EOFError, BrokenPipeError):  # a gone parent reads as EOF
        conn.send(env.observe())
        while (actions := conn.recv()) is not None:
            conn.send(env.step(*actions))


class ShardedEnv:
    """`n_games` games in shards stepped by `n_workers` processes (by this process when 0); shard w is
    seeded `seed * 1000 + w`. step() without actions returns the current observations."""

    def __init__(self, make_env, n_games: int, n_workers: int, seed: int):
        self.local, ctx = make_env(n_games, seed) if n_workers == 0 else None, mp.get_context("spawn")
        sizes = [len(shard) for shard in np.array_split(np.arange(n_games), max(n_workers, 1))]
        self.cuts, self.pipes, self.procs = np.cumsum(sizes)[:-1], [], []
        for w in range(n_workers):  # spawn: a fresh interpreter, no forked torch threads or locks
            parent, child = ctx.Pipe()
            self.procs.append(ctx.Process(target=_worker, args=(child, make_env, sizes[w], seed * 1000 + w),
                                          daemon=True))
            with children_ignore_signals():  # a Ctrl-C to the group must spare a starting worker
                self.procs[-1].start()
            child.close()  # only the worker holds its end now: a dead worker reads as EOF, not a hang
            self.pipes.append(parent)

    def step(self, *actions) -> list:
        """The env's step(*actions) (or observe() without actions), over all games in order."""
        if self.local:
            return self.local.step(*actions) if actions else self.local.observe()
        if actions:
            for pipe, *shard in zip(self.pipes, *(np.split(a, self.cuts) for a in actions)):
                pipe.send(shard)
        return [np.concatenate(parts) for parts in zip(*(p.recv() for p in self.pipes))]  # in game order

    def close(self) -> None:  # stop the workers; kill any that does not stop
        for pipe, proc in zip(self.pipes, self.procs):
            with contextlib.suppress(OSError):  # the worker may be gone already
                pipe.send(None)
            proc.join(timeout=2)
            proc.kill()
