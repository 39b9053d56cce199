"""PPO (Schulman et al., 2017) self-play on a two-player Pong duel (common/pong_duel.py): a curriculum of
scripted bots, then an Elo-rated league of the learner's past snapshots; the best model against a panel of
validation bots is kept and scored against held-out bots it never met. See docs/ppo_selfplay.md.

    python ppo_selfplay.py                                           # train, then play the named and held-out bots
    python ppo_selfplay.py --resume runs/<run>/checkpoint.pt         # continue a stopped run
    python ppo_selfplay.py --eval-checkpoint runs/<run>/checkpoint.pt --capture-video
    torchrun --standalone --nproc-per-node 2 ppo_selfplay.py         # 2 processes, each playing half the games
"""

import atexit
import copy
import math
import os
import sys
from collections import deque
from dataclasses import asdict, dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributions import Categorical

import common.pong_duel as duel
from common.checkpoint import load_checkpoint, load_weights, save_checkpoint
from common.metrics import MetricsWriter, write_evaluation
from common.run import check_args, evaluation_seed, make_run_dir, parse_args, seed_everything
from common.stopping import StopRequest, collective
from common.video import VideoWriter


@dataclass
class Args:
    total_steps: int = 30_000_000
    """learner steps (one per game per step), rounded up to whole rollouts"""
    seed: int = 1
    """seed of the games, the networks, the bots and the opponent sampling"""
    cuda: bool = True
    """use CUDA when it is available"""
    runs_dir: str = "runs"
    """where the run directory <env>__<script>__<seed>__<timestamp> is created"""
    capture_video: bool = False
    """record the first game of the final evaluation (against the strongest bot) to <run>/videos/eval.mp4"""
    save_model: bool = False
    """save <run>/checkpoint.pt at the end of training (a stop by Ctrl-C or SIGTERM always saves it)"""
    eval_episodes: int = 50
    """greedy games against each named and each held-out bot in the final evaluation (and --eval-checkpoint)"""
    eval_checkpoint: str | None = None
    """skip training: play this checkpoint's kept model greedily, record a video, write eval.json"""
    resume: str | None = None
    """continue training from this checkpoint.pt"""
    log_interval: int = 200_000
    """learner steps between progress lines and `log` rows in metrics.csv"""

    n_workers: int = 0
    """processes stepping shards of the games (0: in the learner's process; docs/ppo_selfplay.md#in-process-games)"""
    n_games: int = 256
    """games played at once, in all (torchrun: each process plays its share; docs/ppo_selfplay.md#torchrun)"""
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
    """weight of the entropy bonus, annealed linearly to 0 (docs/ppo_selfplay.md#entropy-annealed)"""
    curriculum_threshold: float = 0.9
    """win rate over --curriculum-window games that beats a bot"""
    curriculum_window: int = 200
    """games in the curriculum's win rate"""
    bot_fraction: float = 0.8
    """share of self-play games against the bots, so that nothing is forgotten (docs/ppo_selfplay.md#bot-games)"""
    pool_size: int = 10
    """self-play opponents: the latest --pool-size snapshots, recent ones more often"""
    snapshot_interval: int = 20
    """self-play updates between snapshots, each followed by a panel evaluation"""
    panel_games: int = 64
    """games against each panel member (the validation bots, the beat_* snapshots; docs/ppo_selfplay.md#panel-games)"""
    family_bots: int = 8
    """bots from the family's training ranges, played after the curriculum (docs/ppo_selfplay.md#family-bots)"""

    def __post_init__(self):
        ranks = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's processes: at least a game each
        ranges = {"seed": (0, 2**32 - ranks), "n_games": (ranks, 10**5), "panel_games": (1, 10**4)}
        ranges["n_workers"] = (0, min(self.n_games // ranks, 4 * (os.cpu_count() or 1)))  # more than 4 per core contend
        ranges["n_steps"] = (1, 2**22 // max(self.n_games, 1))  # caps the memory of games at once and of rollouts
        ranges["n_minibatches"] = (1, self.n_games // ranks * self.n_steps)
        ranges |= {"family_bots": (0, 1000), "learning_rate": (1e-7, 1)}
        shares = ("gamma", "gae_lambda", "clip_coef", "ent_coef", "curriculum_threshold", "bot_fraction")
        check_args(self, ranges | dict.fromkeys(shares, (0, 1)))


def mlp(n_outputs: int, last_layer_scale: float = 1.0, hidden: int = 64) -> nn.Sequential:
    network = nn.Sequential(
        nn.Linear(duel.OBS_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs)
    )
    network[-1].weight.data.mul_(last_layer_scale)  # a small last actor layer starts near-uniform
    return network


class ActorCritic(nn.Module):
    """Two separate MLPs: the actor gives the logits of π(a|s), the critic V(s)."""

    def __init__(self):
        super().__init__()
        self.actor = mlp(duel.N_ACTIONS, last_layer_scale=0.01)
        self.critic = mlp(1)


def as_policy(actor: nn.Module, device, greedy: bool = False):
    """An actor as a bot-style function: obs batch -> action batch (sampled or greedy)."""

    @torch.no_grad()
    def act(obs):
        logits = actor(torch.as_tensor(obs, device=device))
        return (logits.argmax(1) if greedy else Categorical(logits=logits).sample()).cpu().numpy()

    return act


def gae(rewards, values, dones, next_value, gamma: float, lam: float):
    """Advantages and returns; dones[t] = 1 when step t ended a game (no bootstrapping across it)."""
    advantages = torch.zeros_like(rewards)
    values = torch.cat([values, next_value[None]])
    last = 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * (1 - dones[t]) * values[t + 1] - values[t]  # δ_t = r_t + γV_t+1 - V_t
        last = delta + gamma * lam * (1 - dones[t]) * last  # A_t = δ_t + γλ A_t+1
        advantages[t] = last
    return advantages, advantages + values[:-1]


def clipped_surrogate(new_logp, old_logp, advantages, clip: float) -> torch.Tensor:
    """L = -E[min(ρA, clip(ρ, 1-ε, 1+ε)A)] with the probability ratio ρ = π(a|s) / π_old(a|s)."""
    ratio = (new_logp - old_logp).exp()
    return -torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages).mean()


def ppo_update(model, optimizer, batch, args: Args, ent_coef: float, vf_coef=0.5, max_grad_norm=0.5) -> dict:
    """Epochs of minibatch steps on clipped surrogate + value loss - entropy bonus; the last losses."""
    obs, actions, old_logp, advantages, returns = batch  # flat tensors
    for _ in range(args.update_epochs):
        for idx in torch.randperm(len(obs)).tensor_split(args.n_minibatches):  # as many on every rank
            probs = Categorical(logits=model.actor(obs[idx]))
            value = model.critic(obs[idx])[:, 0]
            adv = (advantages[idx] - advantages[idx].mean()) / (advantages[idx].std() + 1e-8)  # per minibatch
            pg_loss = clipped_surrogate(probs.log_prob(actions[idx]), old_logp[idx], adv, args.clip_coef)
            v_loss = 0.5 * (value - returns[idx]).pow(2).mean()  # ½ (V(s) - (A + V_old(s)))²
            entropy = probs.entropy().mean()
            optimizer.zero_grad()
            (pg_loss + vf_coef * v_loss - ent_coef * entropy).backward()
            if dist.is_initialized():  # the mean of all ranks' gradients: one all_reduce of them flattened
                grads = [parameter.grad for parameter in model.parameters()]
                flat = nn.utils.parameters_to_vector(grads)  # (any list of tensors, into one vector and back)
                collective(dist.all_reduce, flat)
                nn.utils.vector_to_parameters(flat / dist.get_world_size(), grads)  # all ranks: the same step
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
    return {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(), "entropy": entropy.item()}  # last minibatch


def gather_step(reward, done, stop: StopRequest, n_games: int, device):
    """Every rank's rewards and game ends of one step, in game order: every rank then updates the same league
    from every game. A stop signal that any rank received stops every rank at this step."""
    sizes = [len(games) for games in np.array_split(np.arange(n_games), dist.get_world_size())]
    local = torch.zeros(3, max(sizes), device=device)  # rows: rewards, game ends, signal (padded alike)
    local[:2, : len(reward)] = torch.as_tensor(np.stack([reward, done]))
    local[2, 0] = stop.received
    ranks = [torch.zeros_like(local) for _ in sizes]
    collective(dist.all_gather, ranks, local)
    stop.join(int(max(step[2, 0] for step in ranks)))
    shared = torch.cat([step[:2, :size] for step, size in zip(ranks, sizes, strict=True)], dim=1).cpu().numpy()
    return shared[0], shared[1].astype(bool)


class League:
    """The opponents (bots, then snapshots of the learner), each running game's opponent, Elo, curriculum, panel."""

    def __init__(self, args: Args, device, resume_state: dict):
        self.args = args
        self.device = device
        self.rng = np.random.default_rng(args.seed)
        trained = {**duel.BOTS, **duel.family("train_", args.family_bots, 1000 + args.seed)}  # functions or parameters
        self.names = [*trained, *duel.VALIDATION]
        bots = [*trained.values(), *duel.VALIDATION.values()]
        self.policies = [bot if callable(bot) else duel.scripted(**bot) for bot in bots]
        self.n_bots = len(trained)  # the bots played in training, then the validation bots, then the snapshots
        self.first_snapshot = len(self.names)
        self.panel = list(range(self.n_bots, self.first_snapshot))  # the judges: validation bots, beat_* snapshots
        self.window = deque(resume_state.get("window", []), maxlen=args.curriculum_window)  # wins vs the current bot
        self.level = resume_state.get("level", 0)  # the curriculum's bot; len(duel.BOTS): self-play
        self.snapshots = {}
        self.elo = {name: 1000.0 for name in [*trained, "learner"]} | resume_state.get("elo", {})
        for name, actor_state in resume_state.get("snapshots", {}).items():
            self.add_snapshot(name, actor_state)
        self.opponent_of_game = np.array([self.draw_opponent() for _ in range(args.n_games)])  # into self.policies
        self.score_difference = np.zeros(args.n_games)  # of the running games
        self.game_length = np.zeros(args.n_games, int)
        self.recent_differences = deque(maxlen=100)  # of the last finished games

    def add_snapshot(self, name: str, actor_state: dict) -> None:
        actor = mlp(duel.N_ACTIONS).to(self.device)
        actor.load_state_dict(actor_state)
        self.snapshots[name] = actor_state
        self.names.append(name)
        self.policies.append(as_policy(actor, self.device))
        self.elo.setdefault(name, self.elo["learner"])  # a new snapshot starts at the learner's rating
        if name.startswith("beat_"):
            self.panel.append(len(self.names) - 1)

    def track_games(self, reward, done, step: int, actor, metrics) -> None:
        """Add a step's points to the running games; rate, log and count each finished one, redraw its opponent."""
        self.score_difference += reward
        self.game_length += 1
        for game in np.flatnonzero(done):
            opponent = self.opponent_of_game[game]
            score_difference = self.score_difference[game]
            self.rate(self.names[opponent], score_difference)
            won = int(score_difference > 0)
            row = {"opponent": self.names[opponent], "win": won, "elo": self.elo["learner"], "level": self.level}
            if opponent == len(duel.BOTS) - 1:
                row["win_vs_strongest"] = won
            metrics.episode(step, score_difference, self.game_length[game], **row)
            self.recent_differences.append(score_difference)
            self.advance_curriculum(opponent, bool(won), step, actor)
            self.opponent_of_game[game] = self.draw_opponent()
        self.score_difference[done] = 0
        self.game_length[done] = 0

    def rate(self, opponent_name: str, score_difference: float) -> None:
        """Elo update of the learner and its opponent after one game."""
        expected = 1 / (1 + 10 ** ((self.elo[opponent_name] - self.elo["learner"]) / 400))  # E = 1/(1+10^(ΔR/400))
        delta = float(16 * ((np.sign(score_difference) + 1) / 2 - expected))  # R += K (S - E), S = 1, ½, 0; K = 16
        self.elo["learner"] += delta
        self.elo[opponent_name] -= delta

    def advance_curriculum(self, opponent: int, won: bool, step: int, actor) -> None:
        """Count a game against the curriculum's bot; once the learner wins --curriculum-threshold of the last
        --curriculum-window, a snapshot beat_<bot> joins the league and the next bot's turn comes."""
        if opponent != self.level or self.level >= len(duel.BOTS):
            return
        self.window.append(won)
        if len(self.window) == self.window.maxlen and np.mean(self.window) >= self.args.curriculum_threshold:
            name = self.names[opponent]
            print(f"step {step}: won {np.mean(self.window):.0%} of {len(self.window)} games vs {name}")
            self.add_snapshot(f"beat_{name}", copy.deepcopy(actor.state_dict()))
            self.level += 1
            self.window.clear()

    def draw_opponent(self) -> int:
        """The curriculum's bot; after it a recent snapshot (weights 1, 2, .. up to the newest) or a bot (the
        stronger, by Elo, the more often) in --bot-fraction of the games."""
        if self.level < len(duel.BOTS):
            return self.level
        pool = np.arange(max(self.first_snapshot, len(self.names) - self.args.pool_size), len(self.names))
        if len(pool) > 0 and self.rng.random() >= self.args.bot_fraction:
            weights = np.arange(1, len(pool) + 1)  # 1, 2, .., newest
            return int(self.rng.choice(pool, p=weights / weights.sum()))
        elo = np.array([self.elo[name] for name in self.names[: self.n_bots]])
        lose = 1 / (1 + 10 ** ((self.elo["learner"] - elo) / 400))  # 1 - E
        return int(self.rng.choice(self.n_bots, p=(lose**2 + 0.01) / (lose**2 + 0.01).sum()))

    def resume_state(self) -> dict:
        return {"level": self.level, "window": list(self.window), "elo": self.elo, "snapshots": self.snapshots}

    def panel_score(self, actor, seed: int) -> float:
        """The mean score of greedy games against each judge of the panel: win 1, draw ½, loss 0."""
        judge_of_game = np.repeat(self.panel, self.args.panel_games)
        score_differences = duel.play(as_policy(actor, self.device, greedy=True), self.policies, judge_of_game, seed)
        return float(np.mean((np.sign(score_differences) + 1) / 2))


@torch.no_grad()
def evaluate(model, args: Args, episodes: int, seed: int, device, video_path: str | None = None) -> list[dict]:
    """Greedy games, `episodes` against each named bot (strongest first: the first game is recorded if asked)
    and against each held-out bot, which played no part in training or in choosing the model."""
    held_out = {name: duel.scripted(**bot) for name, bot in duel.HELD_OUT.items()}
    opponents = {**dict(reversed(duel.BOTS.items())), **held_out}
    opponent_of_game = np.repeat(np.arange(len(opponents)), episodes)
    video = VideoWriter(video_path, fps=60) if video_path else None
    policy = as_policy(model.actor, device, greedy=True)
    score_differences = duel.play(policy, list(opponents.values()), opponent_of_game, seed, video)
    if video:
        video.close()
    return [
        {"return": float(difference), "opponent": name}
        for difference, name in zip(score_differences, np.repeat(list(opponents), episodes), strict=True)
    ]


def print_results(episodes: list[dict]) -> None:
    """Win, draw and loss rates and the mean score difference against each opponent; the worst held-out bot."""
    names = dict.fromkeys(episode["opponent"] for episode in episodes)  # in the order played
    games = {name: np.array([e["return"] for e in episodes if e["opponent"] == name]) for name in names}
    print("| opponent | win | draw | loss | mean score diff |\n|---|---|---|---|---|")
    for name, differences in games.items():
        rates = [f"{np.mean(outcome):.0%}" for outcome in (differences > 0, differences == 0, differences < 0)]
        print(f"| {name} | {' | '.join(rates)} | {differences.mean():+.2f} |")
    win_rates = {name: np.mean(differences > 0) for name, differences in games.items()}
    worst = min(duel.HELD_OUT, key=win_rates.get)
    parameters = {name: round(value, 2) for name, value in duel.HELD_OUT[worst].items()}
    print(f"worst held-out bot: {worst} {parameters}, won {win_rates[worst]:.0%}", flush=True)


if __name__ == "__main__":
    args = parse_args(Args)
    script = os.path.splitext(os.path.basename(__file__))[0]
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun (docs/ppo_selfplay.md#torchrun)
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if rank > 0 and args.eval_checkpoint:  # rank 0 evaluates alone
        raise SystemExit(0)
    seed_everything(args.seed + rank)
    torch.set_num_threads(1)  # small MLPs: one thread for the learner, one per worker
    torch.distributions.Distribution.set_default_validate_args(False)  # argument checks cost time
    device = torch.device(f"cuda:{local_rank}" if args.cuda and torch.cuda.is_available() else "cpu")
    if world_size > 1 and not args.eval_checkpoint:  # a rank that stops answering: an error after the timeout
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=5))
        atexit.register(dist.destroy_process_group)  # on any exit: gloo's threads outliving Python abort it
    if rank > 0:
        sys.stdout = open(os.devnull, "w")  # rank 0 prints and writes for all
    checkpoint = args.eval_checkpoint or args.resume
    state = load_checkpoint(checkpoint, script, device) if checkpoint else {}
    batch_size = args.n_games * args.n_steps
    saved_batch_size = state["args"]["n_games"] * state["args"]["n_steps"] if args.resume else batch_size
    if args.resume and (state["resume_state"] is None or saved_batch_size != batch_size):  # None: a shipped model
        raise SystemExit(f"error: {args.resume}: --resume needs a checkpoint.pt with this --n-games x --n-steps")
    run_dir = make_run_dir(args.runs_dir, "PongDuel", script, args.seed) if rank == 0 else ""  # rank 0 writes
    video_path = os.path.join(run_dir, "videos", "eval.mp4")
    print(f"run directory: {run_dir} | device: {device} | processes: {world_size}", flush=True)

    model = ActorCritic().to(device)
    if dist.is_initialized():  # rank 0's initial weights on every rank
        for tensor in model.state_dict().values():
            collective(dist.broadcast, tensor, 0)

    if args.eval_checkpoint:
        load_weights(model, state["kept_model"], checkpoint, state, args)
        episodes = evaluate(model, args, max(args.eval_episodes, 1), evaluation_seed(args.seed), device, video_path)
        write_evaluation(run_dir, episodes, state["kept_step"])
        print_results(episodes)
        raise SystemExit(0)

    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, eps=1e-5)
    resume_state = state.get("resume_state", {})
    if args.resume:
        load_weights(model, state["model"], checkpoint, state, args)
        optimizer.load_state_dict(state["optimizer"])
        print(f"resumed from {args.resume} at step {state['global_step']}, curriculum level {resume_state['level']}")
    update = resume_state.get("update", 0)  # whole updates done
    global_step = state.get("global_step", 0)
    kept_model = state.get("kept_model")  # the best on the panel
    kept_step = state.get("kept_step", 0)
    kept_score = state.get("kept_score", float("nan"))  # NaN while the panel has judged no model

    league = League(args, device, resume_state)
    n_updates = -(-args.total_steps // batch_size)  # whole rollouts
    metric_fields = ("opponent", "win", "win_vs_strongest", "elo", "level")
    metric_fields += ("pg_loss", "v_loss", "entropy", "panel_score")
    metrics = MetricsWriter(run_dir, metric_fields, n_updates * batch_size, global_step, state.get("time_s", 0.0))
    games = np.array_split(np.arange(args.n_games), world_size)[rank]  # this rank's share of the games
    obs_buf = torch.zeros((args.n_steps, len(games), duel.OBS_DIM), device=device)
    act_buf, logp_buf, val_buf, rew_buf, done_buf = torch.zeros(5, args.n_steps, len(games), device=device)
    panel_score = float("nan")  # the latest
    stop = StopRequest(shared=world_size > 1)  # the handlers first: a Ctrl-C while the workers start only sets the flag
    collector = duel.ShardedEnv(duel.PongDuel, len(games), args.n_workers, args.seed + rank)
    print("training: Ctrl-C or SIGTERM stops it and saves a checkpoint to resume from", flush=True)
    try:
        obs0, obs1 = collector.step()
        while global_step < args.total_steps and not stop:
            remaining = 1 - update / n_updates  # learning rate and entropy bonus are annealed linearly to 0
            optimizer.param_groups[0]["lr"] = args.learning_rate * remaining
            with torch.no_grad():
                for t in range(args.n_steps):
                    obs_buf[t] = torch.as_tensor(obs0, device=device)
                    probs = Categorical(logits=model.actor(obs_buf[t]))
                    val_buf[t] = model.critic(obs_buf[t])[:, 0]
                    act_buf[t] = probs.sample()
                    logp_buf[t] = probs.log_prob(act_buf[t])
                    actions1 = duel.opponent_actions(league.policies, league.opponent_of_game[games], obs1)
                    reward, done, obs0, obs1 = collector.step(act_buf[t].long().cpu().numpy(), actions1)
                    rew_buf[t] = torch.as_tensor(reward)
                    done_buf[t] = torch.as_tensor(done)
                    if world_size > 1:  # the league sees every game (docs/ppo_selfplay.md#torchrun)
                        reward, done = gather_step(reward, done, stop, args.n_games, device)
                    step = global_step + (t + 1) * args.n_games
                    league.track_games(reward, done, step, model.actor, metrics)
                    if stop:
                        break
                next_value = model.critic(torch.as_tensor(obs0, device=device))[:, 0]
            if stop:  # Ctrl-C/SIGTERM: the rollout is dropped; the checkpoint holds the last whole update
                break
            advantages, returns = gae(rew_buf, val_buf, done_buf, next_value, args.gamma, args.gae_lambda)
            batch = [buf.flatten(0, 1) for buf in (obs_buf, act_buf, logp_buf, advantages, returns)]
            losses = ppo_update(model, optimizer, batch, args, args.ent_coef * remaining)
            if league.level >= len(duel.BOTS) and (update + 1) % args.snapshot_interval == 0:
                league.add_snapshot(f"snap_{update + 1}", copy.deepcopy(model.actor.state_dict()))
                # Not validation_seed: the panel's bots draw from the global numpy RNG that training shares,
                # so other panel games would change what the learner plays next. Rank 0 saves its kept model.
                panel_score = league.panel_score(model.actor, args.seed + update)
                if math.isnan(kept_score) or panel_score > kept_score:
                    kept_model = copy.deepcopy(model.state_dict())
                    kept_step = step
                    kept_score = panel_score
                    print(f"step {step}: new best model, panel score {panel_score:.3f}", flush=True)
            update += 1
            global_step = update * batch_size
            if global_step >= args.total_steps or global_step % args.log_interval < batch_size:  # one passed
                row = {"level": league.level, "elo": league.elo["learner"], "panel_score": panel_score, **losses}
                metrics.log(global_step, **row)
                metrics.print_progress(global_step, league.recent_differences)
    finally:
        collector.close()
    metrics.close()
    stop.join(stop.received)  # a signal after the last step's exchange: the ranks need not agree any more

    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    if math.isnan(kept_score):  # the panel has judged no model yet: the latest is kept
        kept_model = model.state_dict()
        kept_step = global_step
    if rank == 0 and (args.save_model or stop):
        save_checkpoint(
            checkpoint_path,
            {
                "script": script,
                "args": asdict(args),
                "global_step": global_step,
                "time_s": metrics.elapsed(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "kept_model": kept_model,
                "kept_step": kept_step,
                "kept_score": kept_score,
                "resume_state": {"update": update, **league.resume_state()},
            },
        )
    if stop:
        stop.exit(global_step, checkpoint_path)
    stop.training_done()
    ranking = sorted(league.elo.items(), key=lambda item: -item[1])
    print("Elo ratings (the top 10, the named bots and the learner):")
    for position, (name, rating) in enumerate(ranking):
        if position < 10 or name in [*duel.BOTS, "learner"]:
            print(f"{position + 1:4d} {name:>24} {rating:6.0f}")
    if args.eval_episodes > 0 and rank == 0:  # the others print to nowhere and are done
        model.load_state_dict(kept_model)
        video = video_path if args.capture_video else None
        episodes = evaluate(model, args, args.eval_episodes, evaluation_seed(args.seed), device, video)
        write_evaluation(run_dir, episodes, kept_step)
        print_results(episodes)
