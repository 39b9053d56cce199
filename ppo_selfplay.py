"""PPO self-play on a two-player Pong duel: parallel workers, a curriculum of scripted bots, an Elo-rated
pool of past snapshots; the best model against validation bots is kept and scored against held-out ones.

    python ppo_selfplay.py --save-model            # train, then play the named and the held-out bots
    python ppo_selfplay.py --eval-checkpoint runs/<run>/best.pt --eval-episodes 100
"""

import copy
import os
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical

from common.checkpoint import load_checkpoint, save_checkpoint
from common.metrics import MetricsWriter, write_evaluation
from common.parallel import ShardedEnv
from common.stopping import StopRequest
from common.utils import Progress, make_run_dir, parse_args, pick_device, seed_everything
from common.video import VideoWriter

# The table is the unit square; player 0 defends x = 0, player 1 defends x = 1. Speeds are per step.
PADDLE_HALF, PADDLE_SPEED, BALL_RADIUS = 0.1, 0.01, 0.01
SERVE_SPEED, SPEEDUP, MAX_SPEED, MAX_ANGLE = 0.02, 1.15, 0.06, 1.0  # MAX_ANGLE in radians
OBS_DIM, N_ACTIONS, HIDDEN = 10, 3, 64  # actions: 0 up (y decreases), 1 stay, 2 down; HIDDEN: layer width


class PongDuel:
    """`n` Pong games stepped together in numpy. Rewards are player 0's points won minus lost."""

    def __init__(self, n: int, seed: int, score_limit: int = 5, max_steps: int = 2000):
        self.n, self.score_limit, self.max_steps = n, score_limit, max_steps
        self.rng = np.random.default_rng(seed)
        self.ball, self.paddles = np.zeros((n, 4)), np.full((n, 2), 0.5)  # (x, y, vx, vy), paddle centres' y
        self.score, self.t = np.zeros((n, 2), dtype=np.int64), np.zeros(n, dtype=np.int64)
        self.serve(np.ones(n, dtype=bool))

    def serve(self, mask) -> None:  # from the centre, towards a random side at a random angle
        k = int(mask.sum())
        angle, side = self.rng.uniform(-0.5, 0.5, k), self.rng.choice([-1.0, 1.0], k)
        self.ball[mask] = np.stack(
            [
                np.full(k, 0.5),
                self.rng.uniform(0.3, 0.7, k),
                side * SERVE_SPEED * np.cos(angle),
                SERVE_SPEED * np.sin(angle),
            ],
            1,
        )

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """Each player's view, own goal on the left (player 1 sees the table mirrored in x), plus three reads
        of the ball's path: where it meets the goal line it heads for, how far a paddle can move by then, and
        where it lands on the other line if the paddle there stays put (hit as step() hits it)."""
        x, y, vx, vy = self.ball.T
        steps = np.where(vx > 0, 1 - x, x) / np.maximum(np.abs(vx), 1e-6)  # to the goal line it heads for
        fold = lambda height: 1 - np.abs(1 - np.mod(height, 2))  # a straight path's height, after the walls
        arrival, hit_steps = fold(y + vy * steps), np.floor(steps) + 1  # step() meets it one step past the line
        hit = fold(y + vy * hit_steps)
        offset = (hit - np.where(vx > 0, self.paddles[:, 1], self.paddles[:, 0])) / (PADDLE_HALF + BALL_RADIUS)
        returned = fold(hit + np.tan(np.clip(offset, -1, 1) * MAX_ANGLE) * (1 - (hit_steps - steps) * np.abs(vx)))
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

    def step(self, a0, a1) -> tuple[np.ndarray, ...]:
        """Player 0's reward, game-over flags and both views after one step; finished games restart."""
        self.paddles += (np.stack([a0, a1], 1) - 1) * PADDLE_SPEED
        np.clip(self.paddles, PADDLE_HALF, 1 - PADDLE_HALF, out=self.paddles)
        b = self.ball
        b[:, :2] += b[:, 2:]
        for wall in (b[:, 1] < 0, b[:, 1] > 1):  # bounce off the top and bottom walls
            b[wall, 1], b[wall, 3] = np.where(b[wall, 1] < 0, 0, 2) - b[wall, 1], -b[wall, 3]
        reward = np.zeros(self.n)
        for player, crossed in ((0, b[:, 0] < 0), (1, b[:, 0] > 1)):
            offset = (b[:, 1] - self.paddles[:, player]) / (PADDLE_HALF + BALL_RADIUS)
            hit, miss = crossed & (np.abs(offset) <= 1), crossed & (np.abs(offset) > 1)
            # The return angle grows with the distance from the paddle centre; each hit is faster.
            speed = np.minimum(np.hypot(b[hit, 2], b[hit, 3]) * SPEEDUP, MAX_SPEED)
            angle, direction = offset[hit] * MAX_ANGLE, 1 - 2 * player
            b[hit, 0] = 2 * player - b[hit, 0]  # reflected back onto the table
            b[hit, 2], b[hit, 3] = direction * speed * np.cos(angle), speed * np.sin(angle)
            self.score[miss, 1 - player] += 1
            reward[miss] = 2 * player - 1
        self.t += 1
        done = (self.score.max(1) >= self.score_limit) | (self.t >= self.max_steps)
        self.paddles[done], self.score[done], self.t[done] = 0.5, 0, 0  # a new game
        self.serve(done | (reward != 0))
        return reward, done, *self.observe()

    def render(self, i: int, size: int = 160) -> np.ndarray:
        """RGB frame of game `i`: paddles, ball, and each player's points as a bar along the top."""
        frame, half = np.zeros((size, size, 3), dtype=np.uint8), int(PADDLE_HALF * size)
        for player, colour in ((0, (80, 160, 255)), (1, (255, 120, 80))):
            y, x = int(self.paddles[i, player] * size), player * (size - 3)
            frame[max(y - half, 0) : y + half, x : x + 3] = colour
            left = 4 if player == 0 else size - 4 - 6 * self.score[i, 1]  # points: a bar from its own side
            frame[3:6, left : left + 6 * self.score[i, player]] = colour
        bx, by = (np.clip(self.ball[i, :2], 0, 1) * (size - 3)).astype(int)
        frame[by : by + 3, bx : bx + 3] = 255
        return frame


def _toward(target, paddle, dead_zone=2 * PADDLE_SPEED):  # up (0), down (2) or stay (1), in observation units
    return np.where(target < paddle - dead_zone, 0, np.where(target > paddle + dead_zone, 2, 1))  # no jitter


def scripted(aim=0.7, react=1.0, shadow=0.0, noise=0.0, lazy=0.0):
    """Meets the ball where it arrives, `aim` paddle half-lengths off-centre (> 0: to angle it away from the
    opponent) and off by up to `noise` (one error per flight), once it comes at it nearer than `react`
    tables; until then goes to `shadow` x the ball's height (0: the centre). Stays put in a share `lazy`."""

    def act(obs):
        x, y, vx, vy, own, other, _, arrival, *_ = obs.T
        error = noise * np.sin(1e3 * np.abs(vx) + 1e2 * np.abs(vy))  # a pseudo-random draw per flight
        target = arrival + error + aim * 2 * PADDLE_HALF * np.sign(other)
        action = _toward(np.where((vx < 0) & ((x + 1) / 2 <= react), target, shadow * y), own)
        return np.where(np.random.random(len(obs)) < lazy, 1, action) if lazy else action

    return act


# Scripted opponents: functions from a batch of observations to a batch of actions, easiest first. Add yours.
BOTS = {
    "random": lambda obs: np.random.randint(0, N_ACTIONS, len(obs)),
    "slow_tracker": lambda obs: np.where(np.random.random(len(obs)) < 0.5, BOTS["fast_tracker"](obs), 1),
    "fast_tracker": lambda obs: _toward(obs[:, 1], obs[:, 4]),  # follows the ball's height
    "predictor": scripted(aim=0.7),
}
# The family of `scripted` bots. Each style range is cut into 4 bins: bots for training and for choosing the
# kept model draw from bins 0 and 2, held-out bots (evaluation only) from bins 1 and 3, so none of them aims,
# reacts or waits like a family bot the learner met. Weaknesses share one range, skewed towards 0 (strong bots).
STYLE, SKILL = {"aim": (-1.0, 1.0), "react": (0.85, 1.0), "shadow": (0.0, 0.4)}, {"noise": 0.05, "lazy": 0.08}


def family(prefix: str, n: int, seed: int, held_out: bool = False) -> dict:
    """{name: parameters} of `n` bots of the family, drawn from the training or from the held-out bins."""
    rng = np.random.default_rng(seed)
    bins = rng.choice([1, 3] if held_out else [0, 2], (n, len(STYLE))) + rng.random((n, len(STYLE)))
    style = [{k: float(lo + (hi - lo) * b / 4) for (k, (lo, hi)), b in zip(STYLE.items(), row)} for row in bins]
    skill = [{k: hi * rng.random() ** 2 for k, hi in SKILL.items()} for _ in range(n)]
    return {f"{prefix}{i}": {**a, **b} for i, (a, b) in enumerate(zip(style, skill))}


VALIDATION, HELD_OUT = family("val_", 8, seed=1), family("held_out_", 12, seed=2, held_out=True)


@dataclass
class Args:
    total_steps: int = 30_000_000
    """learner steps (one per game per step), rounded up to whole rollouts"""
    seed: int = 1
    """seed of the games, the networks, the bots and the opponent sampling"""
    cuda: bool = True
    """use CUDA when it is available"""
    runs_dir: str = "runs"
    """where the run directory PongDuel__<script>__<seed>__<timestamp> is created"""
    capture_video: bool = False
    """film the first evaluation game (vs the strongest bot): videos/eval.mp4"""
    save_model: bool = False
    """save <run>/checkpoint.pt at the end (a stop by Ctrl-C/SIGTERM always does), best.pt on a new best"""
    eval_episodes: int = 50
    """greedy games against each named and each held-out bot after training (or --eval-checkpoint)"""
    eval_checkpoint: str | None = None
    """skip training: play every bot from this checkpoint, film a game"""
    resume: str | None = None
    """continue from this checkpoint: networks, optimizer, step count, curriculum, league, Elo, best"""
    log_interval: int = 200_000
    """learner steps between progress lines and `log` rows in metrics.csv"""
    n_workers: int = 0
    """processes stepping shards of the games (0: step them in the learner process)"""
    n_games: int = 256
    """games played at once"""
    n_steps: int = 128
    """steps of every game per rollout"""
    learning_rate: float = 1e-3
    """Adam learning rate, annealed linearly to 0"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """λ of generalized advantage estimation"""
    n_minibatches: int = 4
    """minibatches per epoch"""
    update_epochs: int = 2
    """passes over each rollout"""
    clip_coef: float = 0.2
    """ε of the clipped surrogate objective"""
    ent_coef: float = 0.003
    """weight of the entropy bonus, annealed linearly to 0"""
    curriculum_threshold: float = 0.9
    """win rate over --curriculum-window games that beats a bot"""
    curriculum_window: int = 200
    """games in the curriculum's win rate"""
    bot_fraction: float = 0.8
    """share of self-play games against the bots, so that nothing is forgotten"""
    pool_size: int = 10
    """self-play opponents: the latest --pool-size snapshots, recent ones more often"""
    snapshot_interval: int = 20
    """self-play updates between snapshots, each followed by a panel evaluation"""
    panel_games: int = 64
    """games against each panel member (the validation bots, the beat_* snapshots); 32 chose worse models"""
    family_bots: int = 8
    """bots drawn from the family's training ranges, played after the curriculum as the named bots are"""

    def __post_init__(self):
        ranges = {name: (1, float("inf")) for name, value in asdict(self).items() if type(value) is int}
        # Caps: workers load torch (more than 4 per core only contend); memory of games at once, of rollouts
        ranges |= {
            "seed": (0, 2**32 - 1),
            "learning_rate": (1e-7, 1),
            "eval_episodes": (0, 10**5),
            "n_workers": (0, min(self.n_games, 4 * (os.cpu_count() or 1))),
            "n_games": (1, 10**5),
            "family_bots": (0, 1000),
            "panel_games": (1, 10**4),
            "n_steps": (1, 2**22 // max(self.n_games, 1)),
            "n_minibatches": (1, self.n_games * self.n_steps),
            **dict.fromkeys(
                ("gamma", "gae_lambda", "clip_coef", "ent_coef", "curriculum_threshold", "bot_fraction"), (0, 1)
            ),
        }
        for name, (low, high) in ranges.items():
            if not low <= (value := getattr(self, name)) <= high:  # NaN fails too
                raise ValueError(f"--{name.replace('_', '-')} must be in [{low}, {high}], got {value}")


def mlp(out: int, last_scale: float = 1.0) -> nn.Sequential:
    net = nn.Sequential(
        nn.Linear(OBS_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, out)
    )
    net[-1].weight.data.mul_(last_scale)  # a small last actor layer starts near-uniform
    return net


def policy_fn(actor: nn.Module, device, greedy: bool = False):
    """A network as an opponent-style function: obs batch -> action batch (sampled or greedy)."""

    @torch.no_grad()
    def act(obs):
        logits = actor(torch.as_tensor(obs, device=device))
        return (logits.argmax(1) if greedy else Categorical(logits=logits).sample()).cpu().numpy()

    return act


def opponent_actions(fns, opp, obs) -> np.ndarray:
    """Each opponent acts in one batch on its games (opp[i]: index in `fns` of game i's opponent)."""
    actions = np.empty(len(obs), dtype=np.int64)
    for k in np.unique(opp):
        actions[opp == k] = fns[k](obs[opp == k])
    return actions


def gae(rewards, values, dones, next_value, gamma: float, lam: float):
    """Advantages and returns; dones[t] = 1 when step t ended a game (no bootstrapping across it)."""
    advantages, last, values = torch.zeros_like(rewards), 0.0, torch.cat([values, next_value[None]])
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * (1 - dones[t]) * values[t + 1] - values[t]  # δ_t = r_t + γV_t+1 - V_t
        advantages[t] = last = delta + gamma * lam * (1 - dones[t]) * last  # A_t = δ_t + γλ A_t+1
    return advantages, advantages + values[:-1]


def clipped_surrogate(new_logp, old_logp, advantages, clip: float) -> torch.Tensor:
    """L = -E[min(ρA, clip(ρ, 1-ε, 1+ε)A)] with the probability ratio ρ = π(a|s) / π_old(a|s)."""
    ratio = (new_logp - old_logp).exp()
    return -torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages).mean()


def ppo_update(actor, critic, optimizer, batch, args: Args, ent_coef: float, vf_coef=0.5, max_grad_norm=0.5):
    """Epochs of minibatch steps on clipped surrogate + value loss - entropy bonus; the last losses."""
    obs, actions, old_logp, advantages, returns = batch  # flat tensors
    for _ in range(args.update_epochs):
        for idx in torch.randperm(len(obs)).split(len(obs) // args.n_minibatches):
            dist, value = Categorical(logits=actor(obs[idx])), critic(obs[idx])[:, 0]
            logp, adv = dist.log_prob(actions[idx]), advantages[idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # per-minibatch advantage normalization
            pg_loss = clipped_surrogate(logp, old_logp[idx], adv, args.clip_coef)
            v_loss, entropy = 0.5 * (value - returns[idx]).pow(2).mean(), dist.entropy().mean()
            optimizer.zero_grad()
            (pg_loss + vf_coef * v_loss - ent_coef * entropy).backward()
            nn.utils.clip_grad_norm_([*actor.parameters(), *critic.parameters()], max_grad_norm)
            optimizer.step()
    return {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(), "entropy": entropy.item()}  # last minibatch


class League:  # the opponents (bots, then snapshots of the learner), each game's opponent, Elo, curriculum
    def __init__(self, args: Args, device, state: dict):
        self.args, self.device, self.rng = args, device, np.random.default_rng(args.seed)
        trained = {**BOTS, **family("train_", args.family_bots, 1000 + args.seed)}  # bots' functions or parameters
        self.names = [*trained, *VALIDATION]
        self.fns = [p if callable(p) else scripted(**p) for p in [*trained.values(), *VALIDATION.values()]]
        self.n_bots, self.n_fixed = len(trained), len(self.names)  # the bots played, then the validation bots
        self.window = deque(state.get("window", []), maxlen=args.curriculum_window)  # wins vs the current bot
        self.level, self.snapshots = state.get("level", 0), {}
        self.panel = list(range(self.n_bots, self.n_fixed))  # the judges: validation bots, beat_* snapshots
        self.elo = {name: 1000.0 for name in [*trained, "learner"]} | state.get("elo", {})
        for name, actor_state in state.get("snapshots", {}).items():
            self.add_snapshot(name, actor_state)
        self.opp = np.array([self.choose() for _ in range(args.n_games)])  # game i's opponent: fns[opp[i]]
        self.diff, self.length = np.zeros(args.n_games), np.zeros(args.n_games, int)  # of the running games
        self.recent = deque(maxlen=100)  # score differences of the last finished games

    def add_snapshot(self, name: str, actor_state: dict) -> None:
        actor = mlp(N_ACTIONS).to(self.device)
        actor.load_state_dict(actor_state)
        self.snapshots[name] = actor_state
        self.names.append(name)
        self.fns.append(policy_fn(actor, self.device))
        self.elo.setdefault(name, self.elo["learner"])  # a new snapshot starts at the learner's rating
        self.panel += [len(self.names) - 1] if name.startswith("beat_") else []

    def record(self, reward, done, step: int, actor, metrics) -> None:
        """A step of every game; finished ones are rated, logged, move the curriculum, get a new opponent."""
        self.diff, self.length = self.diff + reward, self.length + 1  # score difference and length so far
        for i in np.flatnonzero(done):
            k, name, diff = self.opp[i], self.names[self.opp[i]], self.diff[i]
            expected = 1 / (1 + 10 ** ((self.elo[name] - self.elo["learner"]) / 400))  # E=1/(1+10^(ΔR/400))
            delta = float(16 * ((np.sign(diff) + 1) / 2 - expected))  # R += K (S - E), S = 1, 1/2, 0; K = 16
            self.elo["learner"], self.elo[name] = self.elo["learner"] + delta, self.elo[name] - delta
            strongest = {"win_vs_strongest": int(diff > 0)} if k == len(BOTS) - 1 else {}
            metrics.episode(
                step,
                diff,
                self.length[i],
                opponent=name,
                win=int(diff > 0),
                elo=self.elo["learner"],
                level=self.level,
                **strongest,
            )
            self.recent.append(diff)
            self.window.extend([bool(diff > 0)] if k == self.level < len(BOTS) else [])
            full = len(self.window) == self.window.maxlen
            if full and np.mean(self.window) >= self.args.curriculum_threshold:
                print(f"step {step}: won {np.mean(self.window):.0%} of {len(self.window)} games vs {name}")
                self.add_snapshot(f"beat_{name}", copy.deepcopy(actor.state_dict()))
                self.level += 1
                self.window.clear()
            self.opp[i] = self.choose()
        self.diff[done], self.length[done] = 0, 0

    def choose(self) -> int:
        """The curriculum's bot; after it a recent snapshot (weights 1, 2, .. up to the newest) or a bot (the
        stronger, by Elo, the more often) in --bot-fraction of the games."""
        if self.level < len(BOTS):
            return self.level
        pool = np.arange(max(self.n_fixed, len(self.names) - self.args.pool_size), len(self.names))
        if len(pool) and self.rng.random() >= self.args.bot_fraction:
            weights = np.arange(1, len(pool) + 1)  # 1, 2, .., newest
            return int(self.rng.choice(pool, p=weights / weights.sum()))
        elo = np.array([self.elo[name] for name in self.names[: self.n_bots]])
        lose = 1 / (1 + 10 ** ((self.elo["learner"] - elo) / 400))  # 1 - E
        return int(self.rng.choice(self.n_bots, p=(lose**2 + 0.01) / (lose**2 + 0.01).sum()))


def play(policy, fns, opp, seed: int, video=None) -> np.ndarray:
    """Score differences of `policy` (player 0) in len(opp) games against fns[opp[i]]."""
    env = PongDuel(len(opp), seed)
    (obs0, obs1), diff, done = env.observe(), np.zeros(len(opp)), np.zeros(len(opp), dtype=bool)
    while not done.all():
        if video and not done[0]:
            video.add(env.render(0))
        reward, finished, obs0, obs1 = env.step(policy(obs0), opponent_actions(fns, opp, obs1))
        diff, done = diff + reward * ~done, done | finished
    return diff


def evaluate(actor, games: int, seed: int, device, run_dir: str, film: bool) -> None:
    """Greedy games against the named bots, strongest first (the first may be filmed), and the held-out bots,
    which played no part in training or in choosing the model: a table, the worst held-out bot, eval.json."""
    opponents = {**dict(reversed(BOTS.items())), **{name: scripted(**p) for name, p in HELD_OUT.items()}}
    video = VideoWriter(os.path.join(run_dir, "videos", "eval.mp4"), fps=60) if film else None
    diff = play(
        policy_fn(actor, device, greedy=True),
        list(opponents.values()),
        np.repeat(np.arange(len(opponents)), games),
        seed + 12345,
        video,
    )
    video and video.close()
    table = {
        name: [float(np.mean(d > 0)), float(np.mean(d == 0)), float(np.mean(d < 0)), float(np.mean(d))]
        for name, d in zip(opponents, diff.reshape(-1, games))
    }
    worst = min(HELD_OUT, key=lambda name: table[name][0])
    print(
        f"greedy evaluation, {len(diff)} games: mean score difference {diff.mean():.2f}\n"
        "| opponent | win | draw | loss | mean score diff |\n|---|---|---|---|---|\n"
        + "\n".join(f"| {n} | {w:.0%} | {d:.0%} | {lo:.0%} | {m:+.2f} |" for n, (w, d, lo, m) in table.items())
        + f"\nworst held-out bot: {worst} { ({k: round(v, 2) for k, v in HELD_OUT[worst].items()}) }, "
        f"won {table[worst][0]:.0%}"
    )
    write_evaluation(run_dir, diff.tolist(), win_draw_loss_diff=table, held_out_worst=worst, held_out=HELD_OUT)


if __name__ == "__main__":
    args = parse_args(Args)
    script = os.path.splitext(os.path.basename(__file__))[0]
    seed_everything(args.seed)
    torch.set_num_threads(1)  # small MLPs: one thread for the learner, one per worker
    torch.distributions.Distribution.set_default_validate_args(False)  # argument checks cost time
    device, batch_size = pick_device(args.cuda), args.n_games * args.n_steps
    state = load_checkpoint(path, script, device) if (path := args.eval_checkpoint or args.resume) else {}
    if (
        path
        and path == args.resume
        and (
            "critic" not in state  # best.pt holds the actor alone
            or state["args"]["n_games"] * state["args"]["n_steps"] != batch_size
        )
    ):
        raise SystemExit(f"error: {path}: --resume needs a checkpoint.pt with this --n-games x --n-steps")
    run_dir = make_run_dir(args.runs_dir, "PongDuel", script, args.seed)
    print(f"run directory: {run_dir} | device: {device}", flush=True)
    actor, critic = mlp(N_ACTIONS, 0.01).to(device), mlp(1).to(device)
    if args.eval_checkpoint:
        actor.load_state_dict(state.get("best_actor") or state["actor"])  # checkpoint.pt: its kept model
        evaluate(actor, max(args.eval_episodes, 1), args.seed, device, run_dir, film=True)
        raise SystemExit(0)
    optimizer = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=args.learning_rate, eps=1e-5)
    if state:
        actor.load_state_dict(state["actor"]), critic.load_state_dict(state["critic"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"resumed from {args.resume} at update {state['update']}, curriculum level {state['level']}")
    league, update = League(args, device, state), state.get("update", 0)  # update: whole updates done
    n_updates = -(-args.total_steps // batch_size)  # whole rollouts
    metrics = MetricsWriter(
        run_dir,
        ("opponent", "win", "win_vs_strongest", "elo", "level", "pg_loss", "v_loss", "entropy", "panel_score"),
        state.get("time_s", 0.0),
    )
    progress = Progress(n_updates * batch_size, update * batch_size)
    obs_buf = torch.zeros((args.n_steps, args.n_games, OBS_DIM), device=device)
    act_buf, logp_buf, val_buf, rew_buf, done_buf = torch.zeros(5, args.n_steps, args.n_games, device=device)
    best_score, best_actor, panel_score = state.get("best_score", -1.0), state.get("best_actor"), float("nan")
    stop = StopRequest()  # the handlers first: a Ctrl-C while the workers start only sets the flag
    collector = ShardedEnv(PongDuel, args.n_games, args.n_workers, args.seed)
    print("training: Ctrl-C or SIGTERM stops it and saves a checkpoint to resume from", flush=True)
    try:
        obs0, obs1 = collector.step()
        while update < n_updates and not stop:
            frac = 1 - update / n_updates  # learning rate and entropy bonus are annealed linearly to 0
            optimizer.param_groups[0]["lr"] = args.learning_rate * frac
            with torch.no_grad():
                for t in range(args.n_steps):
                    obs_buf[t] = torch.as_tensor(obs0, device=device)
                    dist, val_buf[t] = Categorical(logits=actor(obs_buf[t])), critic(obs_buf[t])[:, 0]
                    act_buf[t] = dist.sample()
                    logp_buf[t] = dist.log_prob(act_buf[t])
                    reward, done, obs0, obs1 = collector.step(
                        act_buf[t].long().cpu().numpy(), opponent_actions(league.fns, league.opp, obs1)
                    )
                    rew_buf[t], done_buf[t] = torch.as_tensor(reward), torch.as_tensor(done)
                    step = (update * args.n_steps + t + 1) * args.n_games
                    league.record(reward, done, step, actor, metrics)
                    if stop:
                        break
                next_value = critic(torch.as_tensor(obs0, device=device))[:, 0]
            if stop:  # Ctrl-C/SIGTERM: the rollout is dropped; the checkpoint holds the last whole update
                break
            advantages, returns = gae(rew_buf, val_buf, done_buf, next_value, args.gamma, args.gae_lambda)
            batch = [buf.flatten(0, 1) for buf in (obs_buf, act_buf, logp_buf, advantages, returns)]
            losses = ppo_update(actor, critic, optimizer, batch, args, args.ent_coef * frac)
            if league.level >= len(BOTS) and (update + 1) % args.snapshot_interval == 0:
                league.add_snapshot(f"snap_{update + 1}", copy.deepcopy(actor.state_dict()))
                diff = play(
                    policy_fn(actor, device, greedy=True),
                    league.fns,
                    np.repeat(league.panel, args.panel_games),
                    args.seed + update,
                )
                panel_score = float(np.mean((np.sign(diff) + 1) / 2))  # greedy: win 1, draw 1/2, loss 0
                if panel_score > best_score:
                    best_score, best_actor = panel_score, copy.deepcopy(actor.state_dict())
                    print(f"step {step}: new best model, panel score {panel_score:.3f}", flush=True)
                    if args.save_model:
                        save_checkpoint(
                            os.path.join(run_dir, "best.pt"),
                            {"script": script, "actor": best_actor, "panel_score": panel_score},
                        )
            update += 1
            if update == n_updates or step // args.log_interval > (step - batch_size) // args.log_interval:
                metrics.log(
                    step,
                    progress.steps_per_second(step),
                    level=league.level,
                    panel_score=panel_score,
                    elo=league.elo["learner"],
                    **losses,
                )
                progress.print(step, league.recent)
    finally:
        collector.close()
    metrics.close(y="elo")
    if args.save_model or stop:
        save_checkpoint(
            os.path.join(run_dir, "checkpoint.pt"),
            {  # all that --resume needs
                "script": script,
                "actor": actor.state_dict(),
                "critic": critic.state_dict(),
                "update": update,
                "optimizer": optimizer.state_dict(),
                "time_s": metrics.elapsed(),
                "level": league.level,
                "window": list(league.window),
                "elo": league.elo,
                "snapshots": league.snapshots,
                "best_actor": best_actor,
                "best_score": best_score,
                "args": asdict(args),
            },
        )
    if stop:
        stop.exit(update * batch_size, os.path.join(run_dir, "checkpoint.pt"))
    ranking = sorted(league.elo.items(), key=lambda item: -item[1])  # the bots, the learner and the top 10
    print(
        "Elo ratings:\n"
        + "\n".join(
            f"{rank + 1:4d} {name:>24} {rating:6.0f}"
            for rank, (name, rating) in enumerate(ranking)
            if rank < 10 or name in [*BOTS, "learner"]
        )
    )
    actor.load_state_dict(best_actor or actor.state_dict())  # the best model, once self-play judged one
    if args.eval_episodes > 0:
        evaluate(actor, args.eval_episodes, args.seed, device, run_dir, film=args.capture_video)
