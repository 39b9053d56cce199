"""PPO self-play on a two-player Pong duel: parallel workers, a curriculum of scripted bots, an Elo-rated
pool of past snapshots, and only the best model (against a fixed panel) kept.

    python ppo_selfplay.py --save-model            # train, then play every bot
    python ppo_selfplay.py --eval-checkpoint runs/<run>/best.pt --eval-episodes 100
"""
import contextlib
import copy
import multiprocessing as mp
import os
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical

from common.checkpoint import load_checkpoint, save_checkpoint
from common.metrics import MetricsWriter, write_evaluation
from common.utils import Progress, make_run_dir, parse_args, pick_device, seed_everything
from common.video import VideoWriter

# The table is the unit square; player 0 defends x = 0, player 1 defends x = 1. Speeds are per step.
PADDLE_HALF, PADDLE_SPEED, BALL_RADIUS = 0.1, 0.01, 0.01
SERVE_SPEED, SPEEDUP, MAX_SPEED, MAX_ANGLE = 0.02, 1.15, 0.06, 1.0  # MAX_ANGLE in radians
OBS_DIM, N_ACTIONS = 7, 3  # actions: 0 up (y decreases), 1 stay, 2 down


class PongDuel:
    """`n` Pong games stepped together in numpy. Rewards are player 0's points won minus lost."""
    def __init__(self, n: int, seed: int, score_limit: int = 5, max_steps: int = 2000):
        self.n, self.score_limit, self.max_steps, self.rng = n, score_limit, max_steps, np.random.default_rng(seed)
        self.ball, self.paddles = np.zeros((n, 4)), np.zeros((n, 2))  # (x, y, vx, vy), paddle centres' y
        self.score, self.t = np.zeros((n, 2), dtype=np.int64), np.zeros(n, dtype=np.int64)
        self.reset(np.ones(n, dtype=bool))

    def reset(self, mask) -> None:
        self.paddles[mask], self.score[mask], self.t[mask] = 0.5, 0, 0
        self.serve(mask)

    def serve(self, mask) -> None:  # from the centre, towards a random side at a random angle
        k = int(mask.sum())
        angle, side = self.rng.uniform(-0.5, 0.5, k), self.rng.choice([-1.0, 1.0], k)
        self.ball[mask] = np.stack([np.full(k, 0.5), self.rng.uniform(0.3, 0.7, k),
                                    side * SERVE_SPEED * np.cos(angle), SERVE_SPEED * np.sin(angle)], 1)

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """Each player's view with its own goal on the left: player 1 sees the table mirrored in x."""
        obs0 = np.concatenate([2 * self.ball[:, :2] - 1, self.ball[:, 2:] / MAX_SPEED, 2 * self.paddles - 1,
                               1 - self.t[:, None] / self.max_steps], 1).astype(np.float32)
        # obs: ball x, y, vx, vy, own paddle, other paddle, time left; mirroring negates x and vx
        return obs0, obs0[:, [0, 1, 2, 3, 5, 4, 6]] * np.array([-1, 1, -1, 1, 1, 1, 1], dtype=np.float32)

    def step(self, a0, a1) -> tuple[np.ndarray, np.ndarray]:
        """Player 0's reward and game-over flags of one step; finished games restart right away."""
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
            b[hit, 0] = player - (b[hit, 0] - player)
            b[hit, 2], b[hit, 3] = direction * speed * np.cos(angle), speed * np.sin(angle)
            self.score[miss, 1 - player] += 1
            reward[miss] = 2 * player - 1
        self.serve(reward != 0)
        self.t += 1
        done = (self.score.max(1) >= self.score_limit) | (self.t >= self.max_steps)
        self.reset(done)
        return reward, done

    def render(self, i: int, size: int = 160) -> np.ndarray:
        """RGB frame of game `i`: paddles, ball, and each player's points as dots along the top."""
        frame, half = np.zeros((size, size, 3), dtype=np.uint8), int(PADDLE_HALF * size)
        for player, colour in ((0, (80, 160, 255)), (1, (255, 120, 80))):
            y, x = int(self.paddles[i, player] * size), player * (size - 3)
            frame[max(y - half, 0):y + half, x:x + 3] = colour
            for k in range(self.score[i, player]):  # points as dots, from the centre line outwards
                x = size // 2 + (2 * player - 1) * (8 + 6 * k)
                frame[3:6, x:x + 3] = colour
        bx, by = (np.clip(self.ball[i, :2], 0, 1) * (size - 3)).astype(int)
        frame[by:by + 3, bx:bx + 3] = 255
        return frame


def _toward(target, paddle):  # up (0), down (2) or stay (1) in observation units (y * 2 - 1)
    dead_zone = 2 * PADDLE_SPEED  # one paddle step: closer than that would only jitter
    return np.where(target < paddle - dead_zone, 0, np.where(target > paddle + dead_zone, 2, 1))


def predictor(obs, aim: float = 0.7):
    """Meets the ball where it will arrive, off-centre to angle it away from the opponent; else centres."""
    x, y, vx, vy, _, other = ((obs[:, :6] + [1, 1, 0, 0, 1, 1]) / [2, 2, 1 / MAX_SPEED, 1 / MAX_SPEED, 2, 2]).T
    arrival = np.mod(y + vy * x / np.maximum(-vx, 1e-6), 2)  # in table units, then unfold wall bounces
    arrival = np.where(arrival > 1, 2 - arrival, arrival) + aim * PADDLE_HALF * np.sign(other - 0.5)
    return _toward(np.where(vx < 0, 2 * arrival - 1, 0), obs[:, 4])


# Scripted opponents: plain functions from a batch of observations (see PongDuel.observe) to a batch of
# actions, easiest first (the curriculum's order). Add your own here.
BOTS = {"random": lambda obs: np.random.randint(0, N_ACTIONS, len(obs)),
        "slow_tracker": lambda obs: np.where(np.random.random(len(obs)) < 0.5, _toward(obs[:, 1], obs[:, 4]), 1),
        "fast_tracker": lambda obs: _toward(obs[:, 1], obs[:, 4]),  # follows the ball's height
        "predictor": predictor}


@dataclass
class Args:
    total_steps: int = 50_000_000
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
    """save <run>/checkpoint.pt at the end, <run>/best.pt when the best improves"""
    eval_episodes: int = 50
    """evaluation games against each bot after training (or --eval-checkpoint)"""
    eval_checkpoint: str | None = None
    """skip training: play every bot from this checkpoint, film a game"""
    resume: str | None = None
    """continue from this checkpoint (networks, optimizer, league, Elo)"""
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
    ent_coef: float = 0.01
    """weight of the entropy bonus"""
    vf_coef: float = 0.5
    """weight of the value loss"""
    max_grad_norm: float = 0.5
    """gradient clipping by global norm"""
    hidden_size: int = 64
    """units in each of the two hidden layers of the actor and of the critic"""
    curriculum_threshold: float = 0.8
    """win rate over --curriculum-window games that beats a bot"""
    curriculum_window: int = 200
    """games in the curriculum's win rate"""
    bot_fraction: float = 0.3
    """share of self-play games against the bots, so that nothing is forgotten"""
    pool_size: int = 10
    """self-play opponents: the latest --pool-size snapshots, recent ones more often"""
    snapshot_interval: int = 20
    """self-play updates between snapshots, each followed by a panel evaluation"""
    panel_games: int = 32
    """games against each panel member (every bot and the snapshot that beat it)"""

    def __post_init__(self):
        for name in ("total_steps", "log_interval", "n_games", "n_steps", "n_minibatches", "update_epochs",
                     "hidden_size", "curriculum_window", "pool_size", "snapshot_interval", "panel_games"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.eval_episodes < 0 or not 0 <= self.n_workers <= self.n_games or self.learning_rate <= 0:
            raise ValueError("--eval-episodes must be >= 0, 0 <= --n-workers <= --n-games, --learning-rate > 0")
        for path in (self.eval_checkpoint, self.resume):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"checkpoint not found: {path}")


def worker(conn, n_games: int, seed: int) -> None:
    """Worker process: receives both players' actions for its shard of games, sends back the results."""
    env = PongDuel(n_games, seed)
    # Ctrl-C reaches the whole process group, and a gone learner reads as EOF: the learner closes everything.
    with contextlib.suppress(KeyboardInterrupt, EOFError, BrokenPipeError):
        conn.send(env.observe())
        while (actions := conn.recv()) is not None:
            conn.send((*env.step(*actions), *env.observe()))


class Collector:  # the games, in `n_workers` shards stepped by worker processes (or in-process when 0)
    def __init__(self, n_games: int, n_workers: int, seed: int):
        self.local = PongDuel(n_games, seed) if n_workers == 0 else None
        self.bounds = np.cumsum([len(s) for s in np.array_split(np.arange(n_games), max(n_workers, 1))])
        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch threads or locks
        ends = [ctx.Pipe() for _ in range(n_workers)]
        self.pipes = [parent for parent, _ in ends]
        self.procs = [ctx.Process(target=worker, args=(child, n, seed * 1000 + w), daemon=True)
                      for w, ((_, child), n) in enumerate(zip(ends, np.diff(self.bounds, prepend=0)))]
        for proc, (_, child) in zip(self.procs, ends):
            proc.start()
            child.close()  # only the worker holds its end now: a dead worker reads as EOF, not a hang

    def observe(self):  # (obs0, obs1) of every game
        return self.local.observe() if self.local else self._gather()

    def step(self, a0, a1):
        """(player 0's reward, game over, obs0, obs1) of every game; finished games restart."""
        if self.local:
            return (*self.local.step(a0, a1), *self.local.observe())
        for pipe, b0, b1 in zip(self.pipes, np.split(a0, self.bounds[:-1]), np.split(a1, self.bounds[:-1])):
            pipe.send((b0, b1))
        return self._gather()

    def _gather(self):  # the workers' results, concatenated in game order
        return [np.concatenate(parts) for parts in zip(*(pipe.recv() for pipe in self.pipes))]

    def close(self) -> None:  # stop the workers; kill any that does not stop
        for pipe, proc in zip(self.pipes, self.procs):
            with contextlib.suppress(OSError):  # the worker may be gone already
                pipe.send(None)
            proc.join(timeout=2)
            proc.kill()


def mlp(hidden: int, out: int, last_scale: float = 1.0) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(OBS_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                        nn.Linear(hidden, out))
    net[-1].weight.data.mul_(last_scale)  # a small last actor layer starts near-uniform
    return net


def policy_fn(actor: nn.Module, device, greedy: bool = False):
    """A network as an opponent-style function: obs batch -> action batch (sampled or greedy)."""
    def act(obs):
        with torch.no_grad():
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
    advantages, last = torch.zeros_like(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_v = next_value if t == len(rewards) - 1 else values[t + 1]
        delta = rewards[t] + gamma * (1 - dones[t]) * next_v - values[t]  # δ_t = r_t + γV(s_t+1) - V(s_t)
        advantages[t] = last = delta + gamma * lam * (1 - dones[t]) * last  # A_t = δ_t + γλ A_t+1
    return advantages, advantages + values


def clipped_surrogate(new_logp, old_logp, advantages, clip: float) -> torch.Tensor:
    """L = -E[min(ρA, clip(ρ, 1-ε, 1+ε)A)] with the probability ratio ρ = π(a|s) / π_old(a|s)."""
    ratio = (new_logp - old_logp).exp()
    return -torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages).mean()


def ppo_update(actor, critic, optimizer, obs, actions, old_logp, advantages, returns, args: Args) -> dict:
    """Epochs of minibatch steps on clipped surrogate + value loss - entropy bonus (flat tensors)."""
    params = [*actor.parameters(), *critic.parameters()]
    for _ in range(args.update_epochs):
        for idx in torch.randperm(len(obs)).split(len(obs) // args.n_minibatches):
            dist, value = Categorical(logits=actor(obs[idx])), critic(obs[idx])[:, 0]
            logp, adv = dist.log_prob(actions[idx]), advantages[idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # per-minibatch advantage normalization
            pg_loss = clipped_surrogate(logp, old_logp[idx], adv, args.clip_coef)
            v_loss = 0.5 * (value - returns[idx]).pow(2).mean()
            entropy = dist.entropy().mean()
            optimizer.zero_grad()
            (pg_loss + args.vf_coef * v_loss - args.ent_coef * entropy).backward()
            nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
    return {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(), "entropy": entropy.item(),
            "approx_kl": (old_logp[idx] - logp).mean().item()}  # of the last minibatch


class League:
    """The opponents (bots, then snapshots of the learner), each game's opponent, Elo ratings, the
    curriculum level and the panel (every bot and the snapshot that beat it) that judges the best model."""
    def __init__(self, args: Args, device, state: dict):
        self.args, self.device, self.rng = args, device, np.random.default_rng(args.seed)
        self.names, self.fns, self.n_bots = list(BOTS), list(BOTS.values()), len(BOTS)
        self.panel, self.window = list(range(self.n_bots)), deque(maxlen=args.curriculum_window)
        self.level, self.snapshots = state.get("level", 0), {}
        self.elo = state.get("elo", {name: 1000.0 for name in self.names + ["learner"]})
        for name, actor_state in state.get("snapshots", {}).items():
            self.add_snapshot(name, actor_state)
        self.opp = np.array([self.choose() for _ in range(args.n_games)])  # game i's opponent: fns[opp[i]]

    def add_snapshot(self, name: str, actor_state: dict) -> None:
        actor = mlp(self.args.hidden_size, N_ACTIONS).to(self.device)
        actor.load_state_dict(actor_state)
        self.snapshots[name] = actor_state
        self.names.append(name)
        self.fns.append(policy_fn(actor, self.device))
        self.elo.setdefault(name, self.elo["learner"])  # a new snapshot starts at the learner's rating
        self.panel += [len(self.names) - 1] if name.startswith("beat_") else []

    def finish(self, i: int, score_diff: float, length: int, step: int, actor, metrics) -> None:
        """Game i is over: rate and log it, move up the curriculum if its bot is beaten, pick a new opponent."""
        k, name = self.opp[i], self.names[self.opp[i]]
        expected = 1 / (1 + 10 ** ((self.elo[name] - self.elo["learner"]) / 400))  # E = 1 / (1 + 10^(ΔR/400))
        delta = float(16 * ((np.sign(score_diff) + 1) / 2 - expected))  # R += K (S - E), S = 1, 1/2, 0; K = 16
        self.elo["learner"], self.elo[name] = self.elo["learner"] + delta, self.elo[name] - delta
        metrics.episode(step, score_diff, length, opponent=name, win=int(score_diff > 0), elo=self.elo["learner"],
                        level=self.level, **({"win_vs_strongest": int(score_diff > 0)} if k == self.n_bots - 1 else {}))
        self.window.extend([score_diff > 0] if k == self.level < self.n_bots else [])
        if len(self.window) == self.window.maxlen and np.mean(self.window) >= self.args.curriculum_threshold:
            print(f"step {step}: won {np.mean(self.window):.0%} of {len(self.window)} games against {name}", flush=True)
            self.add_snapshot(f"beat_{name}", copy.deepcopy(actor.state_dict()))
            self.level += 1
            self.window.clear()
        self.opp[i] = self.choose()

    def choose(self) -> int:
        """The curriculum's bot; later a bot or a pool snapshot, weighted 1, 2, ... from weakest/oldest up."""
        if self.level < self.n_bots:
            return self.level
        pool = np.arange(max(self.n_bots, len(self.names) - self.args.pool_size), len(self.names))
        if len(pool) == 0 or self.rng.random() < self.args.bot_fraction:
            pool = np.arange(self.n_bots)  # the bots, the stronger ones more often
        return int(self.rng.choice(pool, p=np.arange(1, len(pool) + 1) / (len(pool) * (len(pool) + 1) / 2)))


def play(policy, fns, opp, seed: int, video=None) -> np.ndarray:
    """Score differences of `policy` (player 0) in len(opp) games against fns[opp[i]]."""
    env = PongDuel(len(opp), seed)
    diff, done = np.zeros(len(opp)), np.zeros(len(opp), dtype=bool)
    while not done.all():
        obs0, obs1 = env.observe()
        if video and not done[0]:
            video.add(env.render(0))
        reward, finished = env.step(policy(obs0), opponent_actions(fns, opp, obs1))
        diff, done = diff + reward * ~done, done | finished
    return diff


def evaluate(actor, games: int, seed: int, device, run_dir: str, video_path=None) -> None:
    """Greedy games against every bot, strongest first (the first is filmed): a table and eval.json."""
    names, video = list(BOTS)[::-1], VideoWriter(video_path, fps=60) if video_path else None
    diff = play(policy_fn(actor, device, greedy=True), list(BOTS.values())[::-1],
                np.repeat(np.arange(len(names)), games), seed + 12345, video)
    video and video.close()
    table = {name: [float(np.mean(d > 0)), float(np.mean(d == 0)), float(np.mean(d < 0)), float(np.mean(d))]
             for name, d in zip(names, diff.reshape(-1, games))}
    print(f"greedy evaluation, {len(diff)} games: mean score difference {diff.mean():.2f}\n"
          "| opponent | win | draw | loss | mean score diff |\n|---|---|---|---|---|\n" + "\n".join(
              f"| {name} | {w:.0%} | {d:.0%} | {lo:.0%} | {m:+.2f} |" for name, (w, d, lo, m) in table.items()))
    write_evaluation(run_dir, diff.tolist(), win_draw_loss_diff=table)


if __name__ == "__main__":
    args = parse_args(Args)
    script = os.path.splitext(os.path.basename(__file__))[0]
    seed_everything(args.seed)
    torch.set_num_threads(1)  # small MLPs: one thread for the learner, one per worker
    torch.distributions.Distribution.set_default_validate_args(False)  # argument checks cost time
    device = pick_device(args.cuda)
    run_dir = make_run_dir(args.runs_dir, "PongDuel", script, args.seed)
    print(f"run directory: {run_dir} | device: {device}", flush=True)
    actor, critic = mlp(args.hidden_size, N_ACTIONS, 0.01).to(device), mlp(args.hidden_size, 1).to(device)
    if args.eval_checkpoint:
        actor.load_state_dict(load_checkpoint(args.eval_checkpoint, script, device)["actor"])
        evaluate(actor, max(args.eval_episodes, 1), args.seed, device, run_dir,
                 os.path.join(run_dir, "videos", "eval.mp4"))
        raise SystemExit(0)
    optimizer = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=args.learning_rate, eps=1e-5)
    state = load_checkpoint(args.resume, script, device) if args.resume else {}
    if state:
        actor.load_state_dict(state["actor"]), critic.load_state_dict(state["critic"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"resumed from {args.resume} at update {state['update']}, curriculum level {state['level']}")
    league, batch_size, start_update = League(args, device, state), args.n_games * args.n_steps, state.get("update", 0)
    n_updates = -(-args.total_steps // batch_size)  # whole rollouts
    collector = Collector(args.n_games, args.n_workers, args.seed)
    print(f"worker pids: {' '.join(str(p.pid) for p in collector.procs)}", flush=True)
    metrics = MetricsWriter(run_dir, ("opponent", "win", "win_vs_strongest", "elo", "level", "pg_loss",
                                      "v_loss", "entropy", "approx_kl", "panel_score"), state.get("time_s", 0.0))
    progress = Progress(n_updates * batch_size, start_update * batch_size)
    obs_buf = torch.zeros((args.n_steps, args.n_games, OBS_DIM), device=device)
    act_buf, logp_buf, val_buf, rew_buf, done_buf = torch.zeros((5, args.n_steps, args.n_games), device=device)
    game_return, game_length = np.zeros(args.n_games), np.zeros(args.n_games, dtype=np.int64)
    recent, best_score, best_actor, panel_score = deque(maxlen=100), -1.0, None, float("nan")
    try:
        obs0, obs1 = collector.observe()
        for update in range(start_update, n_updates):
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1 - update / n_updates)  # annealing
            for t in range(args.n_steps):
                obs_buf[t] = torch.as_tensor(obs0, device=device)
                with torch.no_grad():
                    dist, val_buf[t] = Categorical(logits=actor(obs_buf[t])), critic(obs_buf[t])[:, 0]
                act_buf[t] = dist.sample()
                logp_buf[t] = dist.log_prob(act_buf[t])
                reward, done, obs0, obs1 = collector.step(act_buf[t].long().cpu().numpy(),
                                                          opponent_actions(league.fns, league.opp, obs1))
                rew_buf[t], done_buf[t] = torch.as_tensor(reward), torch.as_tensor(done)
                game_return, game_length = game_return + reward, game_length + 1
                step = (update * args.n_steps + t + 1) * args.n_games
                for i in np.flatnonzero(done):
                    league.finish(i, game_return[i], game_length[i], step, actor, metrics)
                    recent.append(game_return[i])
                game_return[done], game_length[done] = 0, 0
            with torch.no_grad():
                next_value = critic(torch.as_tensor(obs0, device=device))[:, 0]
            advantages, returns = gae(rew_buf, val_buf, done_buf, next_value, args.gamma, args.gae_lambda)
            losses = ppo_update(actor, critic, optimizer, obs_buf.flatten(0, 1), act_buf.flatten(),
                                logp_buf.flatten(), advantages.flatten(), returns.flatten(), args)
            if league.level >= league.n_bots and (update + 1) % args.snapshot_interval == 0:
                league.add_snapshot(f"snap_{update + 1}", copy.deepcopy(actor.state_dict()))
                # Keep the best model by its greedy score (win 1, draw 1/2) against the fixed panel.
                diff = play(policy_fn(actor, device, greedy=True), league.fns,
                            np.repeat(league.panel, args.panel_games), args.seed + update)
                panel_score = float(np.mean((np.sign(diff) + 1) / 2))
                if panel_score > best_score:
                    best_score, best_actor = panel_score, copy.deepcopy(actor.state_dict())
                    print(f"step {step}: new best model, panel score {panel_score:.3f}", flush=True)
                    if args.save_model:
                        save_checkpoint(os.path.join(run_dir, "best.pt"),
                                        {"script": script, "actor": best_actor, "panel_score": panel_score})
            if step // args.log_interval > (step - batch_size) // args.log_interval or update == n_updates - 1:
                metrics.log(step, progress.steps_per_second(step), level=league.level,
                            panel_score=panel_score, elo=league.elo["learner"], **losses)
                progress.print(step, recent)
    except KeyboardInterrupt:
        raise SystemExit("interrupted: workers stopped, nothing saved")
    finally:
        collector.close()
    metrics.close(y="elo")
    ranking = sorted(league.elo.items(), key=lambda item: -item[1])  # the bots, the learner and the top 10
    print("Elo ratings:\n" + "\n".join(f"{rank + 1:4d} {name:>24} {rating:6.0f}" for rank, (name, rating)
                                        in enumerate(ranking) if rank < 10 or name in [*BOTS, "learner"]))
    if args.save_model:
        save_checkpoint(os.path.join(run_dir, "checkpoint.pt"), {
            "script": script, "actor": actor.state_dict(), "critic": critic.state_dict(),
            "optimizer": optimizer.state_dict(), "update": n_updates, "time_s": metrics.elapsed(),
            "level": league.level, "elo": league.elo, "snapshots": league.snapshots, "args": asdict(args)})
    if best_actor is not None:  # the best model, not the last, is evaluated
        actor.load_state_dict(best_actor)
    if args.eval_episodes > 0:
        video_path = os.path.join(run_dir, "videos", "eval.mp4") if args.capture_video else None
        evaluate(actor, args.eval_episodes, args.seed, device, run_dir, video_path)
