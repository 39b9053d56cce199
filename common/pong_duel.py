"""A two-player Pong duel, many games stepped together in numpy, with scripted opponents and a
multi-process runner: the environment of ppo_selfplay.py (docs/ppo_selfplay.md#the-game).

    env = PongDuel(n_games=256, seed=0)
    obs0, obs1 = env.observe()        # each player's view, (256, OBS_DIM) float32, its own goal on the left
    reward, done, obs0, obs1 = env.step(actions, BOTS["predictor"](obs1))  # actions: 0 up, 1 stay, 2 down
    differences = play(BOTS["fast_tracker"], [BOTS["random"], BOTS["predictor"]], np.array([0, 0, 1]), seed=0)
    sharded = ShardedEnv(PongDuel, 256, n_workers=2, seed=0)  # games in shards that 2 processes step

The table is the unit square: player 0 defends x = 0, player 1 defends x = 1; speeds are per step.
Rewards are player 0's points won minus lost. A game ends at `score_limit` points or, a draw, after
`max_steps` steps, and restarts at once. A bot, like a policy, is a function from a batch of one
player's observations to a batch of actions.
"""

import contextlib
import multiprocessing as mp

import numpy as np

from common.stopping import children_ignore_signals

PADDLE_HALF = 0.1
PADDLE_SPEED = 0.01
BALL_RADIUS = 0.01
SERVE_SPEED = 0.02
SPEEDUP = 1.15  # the ball's speed is multiplied by this at each hit, up to MAX_SPEED
MAX_SPEED = 0.06
MAX_ANGLE = 1.0  # radians, off the paddle's end
OBS_DIM = 10
N_ACTIONS = 3  # 0 up (y decreases), 1 stay, 2 down


def hit_offset(ball_y, paddle_y):
    """Where the ball meets the paddle, from -1 (its top end) to 1 (its bottom end); beyond: a miss."""
    return (ball_y - paddle_y) / (PADDLE_HALF + BALL_RADIUS)


def height_after_walls(height):
    """The height a straight path reaches, folded back onto the table at each wall it bounces off."""
    return 1 - np.abs(1 - np.mod(height, 2))


class PongDuel:
    """`n_games` Pong games stepped together in numpy."""

    def __init__(self, n_games: int, seed: int, score_limit: int = 5, max_steps: int = 2000):
        self.n_games = n_games
        self.score_limit = score_limit
        self.max_steps = max_steps
        self.rng = np.random.default_rng(seed)
        self.ball = np.zeros((n_games, 4))  # x, y, vx, vy
        self.paddles = np.full((n_games, 2), 0.5)  # the paddle centres' y
        self.score = np.zeros((n_games, 2), dtype=np.int64)
        self.t = np.zeros(n_games, dtype=np.int64)
        self.serve(np.ones(n_games, dtype=bool))

    def serve(self, mask) -> None:
        """From the centre line, towards a random side at a random angle."""
        n_served = int(mask.sum())
        angle = self.rng.uniform(-0.5, 0.5, n_served)
        side = self.rng.choice([-1.0, 1.0], n_served)
        height = self.rng.uniform(0.3, 0.7, n_served)
        self.ball[mask] = np.stack(
            [np.full(n_served, 0.5), height, side * SERVE_SPEED * np.cos(angle), SERVE_SPEED * np.sin(angle)], 1
        )

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """Each player's view, own goal on the left (player 1 sees the table mirrored in x), plus three reads
        of the ball's path: where it meets the goal line it heads for, how far a paddle can move by then, and
        where it lands on the other line if the paddle there stays put (hit as step() hits it)."""
        x, y, vx, vy = self.ball.T
        steps = np.where(vx > 0, 1 - x, x) / np.maximum(np.abs(vx), 1e-6)  # to the goal line it heads for
        arrival = height_after_walls(y + vy * steps)
        hit_steps = np.floor(steps) + 1  # step() meets the ball one step past the line
        hit = height_after_walls(y + vy * hit_steps)
        offset = hit_offset(hit, np.where(vx > 0, self.paddles[:, 1], self.paddles[:, 0]))
        returned = height_after_walls(
            hit + np.tan(np.clip(offset, -1, 1) * MAX_ANGLE) * (1 - (hit_steps - steps) * np.abs(vx))
        )
        # ball x, y, vx, vy, own paddle, other paddle, time left, arrival, reach, return (mirrored: -x, -vx, swap)
        obs0 = np.stack(
            [
                2 * x - 1,
                2 * y - 1,
                vx / MAX_SPEED,
                vy / MAX_SPEED,
                *(2 * self.paddles.T - 1),
                1 - self.t / self.max_steps,
                2 * arrival - 1,
                2 * PADDLE_SPEED * steps,
                2 * returned - 1,
            ],
            1,
            dtype=np.float32,
        )
        return obs0, obs0[:, [0, 1, 2, 3, 5, 4, 6, 7, 8, 9]] * np.float32([-1, 1, -1, 1, 1, 1, 1, 1, 1, 1])

    def step(self, actions0, actions1) -> tuple[np.ndarray, ...]:
        """Player 0's reward, game-over flags and both views after one step; finished games restart."""
        self.paddles += (np.stack([actions0, actions1], 1) - 1) * PADDLE_SPEED
        np.clip(self.paddles, PADDLE_HALF, 1 - PADDLE_HALF, out=self.paddles)
        ball = self.ball
        ball[:, :2] += ball[:, 2:]
        for wall in (ball[:, 1] < 0, ball[:, 1] > 1):  # bounce off the top and bottom walls
            ball[wall, 1] = np.where(ball[wall, 1] < 0, 0, 2) - ball[wall, 1]
            ball[wall, 3] = -ball[wall, 3]
        reward = np.zeros(self.n_games)
        for player, crossed in ((0, ball[:, 0] < 0), (1, ball[:, 0] > 1)):
            offset = hit_offset(ball[:, 1], self.paddles[:, player])
            hit = crossed & (np.abs(offset) <= 1)
            miss = crossed & (np.abs(offset) > 1)
            # The return angle grows with the distance from the paddle centre; each hit is faster.
            speed = np.minimum(np.hypot(ball[hit, 2], ball[hit, 3]) * SPEEDUP, MAX_SPEED)
            angle = offset[hit] * MAX_ANGLE
            ball[hit, 0] = 2 * player - ball[hit, 0]  # reflected back onto the table
            ball[hit, 2] = (1 - 2 * player) * speed * np.cos(angle)
            ball[hit, 3] = speed * np.sin(angle)
            self.score[miss, 1 - player] += 1
            reward[miss] = 2 * player - 1
        self.t += 1
        done = (self.score.max(1) >= self.score_limit) | (self.t >= self.max_steps)
        self.paddles[done] = 0.5  # a new game
        self.score[done] = 0
        self.t[done] = 0
        self.serve(done | (reward != 0))
        return reward, done, *self.observe()

    def render(self, game: int, size: int = 160) -> np.ndarray:
        """RGB frame of one game: paddles, ball, and each player's points as a bar along the top."""
        frame = np.zeros((size, size, 3), dtype=np.uint8)
        half = int(PADDLE_HALF * size)
        for player, colour in ((0, (80, 160, 255)), (1, (255, 120, 80))):
            y = int(self.paddles[game, player] * size)
            x = player * (size - 3)
            frame[max(y - half, 0) : y + half, x : x + 3] = colour
            left = 4 if player == 0 else size - 4 - 6 * self.score[game, 1]  # points: a bar from its own side
            frame[3:6, left : left + 6 * self.score[game, player]] = colour
        ball_x, ball_y = (np.clip(self.ball[game, :2], 0, 1) * (size - 3)).astype(int)
        frame[ball_y : ball_y + 3, ball_x : ball_x + 3] = 255
        return frame


def move_toward(target, paddle, dead_zone=2 * PADDLE_SPEED):
    """Up (0), down (2) or stay (1), in observation units; within the dead zone it stays (no jitter)."""
    return np.where(target < paddle - dead_zone, 0, np.where(target > paddle + dead_zone, 2, 1))


def scripted(aim=0.7, react=1.0, shadow=0.0, noise=0.0, lazy=0.0):
    """Meets the ball where it arrives, `aim` paddle half-lengths off-centre (> 0: to angle it away from the
    opponent) and off by up to `noise` (one error per flight), once it comes at it nearer than `react`
    tables; until then goes to `shadow` x the ball's height (0: the centre). Stays put in a share `lazy`."""

    def act(obs):
        x, y, vx, vy, own, other, _, arrival, *_ = obs.T
        error = noise * np.sin(1e3 * np.abs(vx) + 1e2 * np.abs(vy))  # a pseudo-random draw per flight
        target = arrival + error + aim * 2 * PADDLE_HALF * np.sign(other)
        action = move_toward(np.where((vx < 0) & ((x + 1) / 2 <= react), target, shadow * y), own)
        return np.where(np.random.random(len(obs)) < lazy, 1, action) if lazy else action

    return act


# Scripted opponents, easiest first. Add yours.
BOTS = {
    "random": lambda obs: np.random.randint(0, N_ACTIONS, len(obs)),
    "slow_tracker": lambda obs: np.where(np.random.random(len(obs)) < 0.5, BOTS["fast_tracker"](obs), 1),
    "fast_tracker": lambda obs: move_toward(obs[:, 1], obs[:, 4]),  # follows the ball's height
    "predictor": scripted(aim=0.7),
}
# The family of `scripted` bots. Each style range is cut into 4 bins: bots for training and for choosing the
# kept model draw from bins 0 and 2, held-out bots (evaluation only) from bins 1 and 3, so none of them aims,
# reacts or waits like a family bot the learner met. Weaknesses share one range, skewed towards 0 (strong bots).
STYLE = {"aim": (-1.0, 1.0), "react": (0.85, 1.0), "shadow": (0.0, 0.4)}
SKILL = {"noise": 0.05, "lazy": 0.08}


def family(prefix: str, n_bots: int, seed: int, held_out: bool = False) -> dict:
    """{name: parameters of `scripted`} of `n_bots` bots of the family, from the training or the held-out bins."""
    rng = np.random.default_rng(seed)
    bins = rng.choice([1, 3] if held_out else [0, 2], (n_bots, len(STYLE))) + rng.random((n_bots, len(STYLE)))
    styles = [
        {
            name: float(low + (high - low) * position / 4)
            for (name, (low, high)), position in zip(STYLE.items(), row, strict=True)
        }
        for row in bins
    ]
    skills = [{name: high * rng.random() ** 2 for name, high in SKILL.items()} for _ in range(n_bots)]
    return {f"{prefix}{i}": {**style, **skill} for i, (style, skill) in enumerate(zip(styles, skills, strict=True))}


VALIDATION = family("val_", 8, seed=1)
HELD_OUT = family("held_out_", 12, seed=2, held_out=True)


def opponent_actions(opponents: list, opponent_of_game: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Each opponent acts in one batch on its own games: opponents[opponent_of_game[i]] plays game i."""
    actions = np.empty(len(obs), dtype=np.int64)
    for opponent in np.unique(opponent_of_game):
        games = opponent_of_game == opponent
        actions[games] = opponents[opponent](obs[games])
    return actions


def play(policy, opponents: list, opponent_of_game: np.ndarray, seed: int, video=None) -> np.ndarray:
    """Score differences of `policy` (player 0) in one game against each opponents[opponent_of_game[i]];
    game 0 goes frame by frame to `video` (a VideoWriter) when one is given."""
    env = PongDuel(len(opponent_of_game), seed)
    obs0, obs1 = env.observe()
    score_difference = np.zeros(len(opponent_of_game))
    over = np.zeros(len(opponent_of_game), dtype=bool)
    while not over.all():
        if video is not None and not over[0]:
            video.add(env.render(0))
        reward, finished, obs0, obs1 = env.step(policy(obs0), opponent_actions(opponents, opponent_of_game, obs1))
        score_difference += reward * ~over  # a finished game restarts: its points no longer count
        over |= finished
    return score_difference


def _worker(conn, make_env, n_games: int, seed: int) -> None:
    """Steps one shard; it ignores Ctrl-C and SIGTERM (children_ignore_signals): the parent stops it."""
    env = make_env(n_games, seed)
    with contextlib.suppress(EOFError, BrokenPipeError):  # a gone parent reads as EOF
        conn.send(env.observe())
        actions = conn.recv()
        while actions is not None:
            conn.send(env.step(*actions))
            actions = conn.recv()


class ShardedEnv:
    """`n_games` games of `make_env(n_games, seed)` (a batched env like PongDuel) in shards stepped by
    `n_workers` processes (by this process when 0); shard w is seeded `seed * 1000 + w`. step() without
    actions returns the current observations."""

    def __init__(self, make_env, n_games: int, n_workers: int, seed: int):
        self.local = make_env(n_games, seed) if n_workers == 0 else None
        context = mp.get_context("spawn")  # a fresh interpreter: no forked torch threads or locks
        sizes = [len(shard) for shard in np.array_split(np.arange(n_games), max(n_workers, 1))]
        self.cuts = np.cumsum(sizes)[:-1]
        self.pipes = []
        self.procs = []
        for worker in range(n_workers):
            parent, child = context.Pipe()
            shard = (child, make_env, sizes[worker], seed * 1000 + worker)
            self.procs.append(context.Process(target=_worker, args=shard, daemon=True))
            with children_ignore_signals():  # a Ctrl-C to the group must spare a starting worker
                self.procs[-1].start()
            child.close()  # only the worker holds its end now: a dead worker reads as EOF, not a hang
            self.pipes.append(parent)

    def step(self, *actions) -> list:
        """The env's step(*actions) (or observe() without actions), over all games in order."""
        if self.local is not None:
            return self.local.step(*actions) if actions else self.local.observe()
        if actions:
            shards_actions = zip(*(np.split(batch, self.cuts) for batch in actions), strict=True)
            for pipe, shard_actions in zip(self.pipes, shards_actions, strict=True):
                pipe.send(list(shard_actions))
        return [
            np.concatenate(parts) for parts in zip(*(pipe.recv() for pipe in self.pipes), strict=True)
        ]  # in game order

    def close(self) -> None:
        """Stop the workers; kill any that does not stop."""
        for pipe, proc in zip(self.pipes, self.procs, strict=True):
            with contextlib.suppress(OSError):  # the worker may be gone already
                pipe.send(None)
            proc.join(timeout=2)
            proc.kill()
