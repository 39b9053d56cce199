"""Synchronous n-step advantage actor-critic (A2C, Mnih et al., 2016) on LunarLander-v3.

Every update collects `n_steps` steps from each of `num_envs` environments, computes n-step
returns G_t bootstrapped from the critic's V(s_{t+n}), and takes one gradient step on
    -log π(a_t|s_t) (G_t - V(s_t))  +  c_v (G_t - V(s_t))²/2  -  c_e H(π(·|s_t)),
with log π recomputed from the current policy. A large entropy bonus keeps the policy from
collapsing; its greedy action is what lands. Observations are normalized, rewards scaled by a
constant, the learning rate brakes after a large policy step (KL); the best model on validation
episodes is kept and scored on fresh ones. docs/lunarlander_nstep_ac.md has the measurements.

    python lunarlander_nstep_ac.py                  # train, then evaluate greedily
    python lunarlander_nstep_ac.py --eval-checkpoint runs/<run>/checkpoint.pt
    python lunarlander_nstep_ac.py --help
"""

import copy
import os
from collections import deque
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical

from common.checkpoint import load_checkpoint, save_checkpoint
from common.metrics import MetricsWriter, write_evaluation
from common.stopping import StopRequest
from common.utils import Progress, check_env_id, make_run_dir, parse_args, pick_device, seed_everything
from common.video import VideoWriter


@dataclass
class Args:
    env_id: str = "LunarLander-v3"
    """gymnasium environment id (discrete actions, vector observations)"""
    total_steps: int = 1_000_000
    """total environment steps to train for (summed over all environments)"""
    seed: int = 1
    """seed of the environments, the network and the action sampling"""
    cuda: bool = True
    """use CUDA when it is available"""
    runs_dir: str = "runs"
    """where the run directory <env>__<script>__<seed>__<timestamp> is created"""
    capture_video: bool = False
    """record the first greedy evaluation episode to <run>/videos/eval.mp4"""
    save_model: bool = False
    """save <run>/checkpoint.pt at the end of training (a Ctrl-C or SIGTERM stop always saves it)"""
    eval_episodes: int = 100
    """fresh episodes (seeds used nowhere else) scoring the kept model, greedy and sampled"""
    eval_checkpoint: str | None = None
    """skip training: load this checkpoint's kept model, evaluate it, record a video"""
    resume: str | None = None
    """continue training from this checkpoint (networks, optimizer, step count, kept model)"""
    log_interval: int = 10_000
    """env steps between progress lines and `log` rows in metrics.csv"""
    select_interval: int = 50_000
    """env steps between validation rounds that choose the kept model"""
    select_episodes: int = 20
    """greedy episodes per validation round, always the same seeds (none used in the final eval)"""

    num_envs: int = 16
    """environments stepped in lockstep (a gymnasium SyncVectorEnv)"""
    n_steps: int = 16
    """steps per environment between updates: the longest return horizon before bootstrapping"""
    learning_rate: float = 7e-4
    """Adam learning rate at the start; it decays linearly to 0 at --total-steps"""
    gamma: float = 0.995
    """discount factor (a landing takes a few hundred steps: 0.99 sees too little of it)"""
    ent_coef: float = 0.02
    """weight c_e of the entropy bonus: at 0.001 the policy sharpens, then its return collapses (docs)"""
    vf_coef: float = 0.5
    """weight c_v of the critic's squared-error loss"""
    max_grad_norm: float = 0.5
    """gradient clipping by global norm"""
    hidden_size: int = 64
    """units in each of the two hidden layers of the actor and of the critic"""
    reward_scale: float = 0.01
    """rewards are multiplied by this constant (critic targets of order 1)"""
    target_kl: float = 3e-5
    """KL brake: the learning rate shrinks 1.5x after an update with KL > 2x this, regrows below ½x"""

    def __post_init__(self):
        check_env_id(self.env_id)
        for name in (
            "total_steps",
            "log_interval",
            "num_envs",
            "n_steps",
            "hidden_size",
            "select_interval",
            "select_episodes",
            "learning_rate",
            "vf_coef",
            "max_grad_norm",
            "reward_scale",
        ):
            if not getattr(self, name) > 0:  # `not >` also rejects nan
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not (min(self.eval_episodes, self.ent_coef, self.target_kl) >= 0 and 0 <= self.gamma <= 1):
            raise ValueError("--eval-episodes, --ent-coef, --target-kl must be >= 0, 0 <= --gamma <= 1")


def make_envs(env_id: str, num_envs: int, reward_scale: float):
    # SAME_STEP autoreset: a finished episode's env resets inside step(), the returned obs is the
    # new episode's first one and info["final_obs"] is the real last state, which a truncated
    # episode bootstraps from. (The default NEXT_STEP mode would insert a reset step instead.)
    envs = gym.make_vec(
        env_id,
        num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)  # raw returns, before scaling
    # LunarLander's ±100 rewards would give the critic targets in the hundreds, which it fits far
    # too slowly. A constant scale keeps the targets' meaning fixed (a running std drifts 2x).
    return gym.wrappers.vector.TransformReward(envs, lambda r: r * reward_scale)


def layer(n_in: int, n_out: int, gain: float) -> nn.Linear:
    """Orthogonal weights, zero bias: a small gain on the policy head starts it near uniform."""
    linear = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs, so the critic's large errors do not disturb the policy.

    The observation statistics are buffers: they travel in the state dict with the weights, and
    only `update_obs_stats` changes them (training does; evaluation never does)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_var", torch.ones(obs_dim))
        self.register_buffer("obs_count", torch.tensor(1e-4))
        self.actor = nn.Sequential(
            layer(obs_dim, hidden, 2**0.5),
            nn.Tanh(),
            layer(hidden, hidden, 2**0.5),
            nn.Tanh(),
            layer(hidden, n_actions, 0.01),
        )
        self.critic = nn.Sequential(
            layer(obs_dim, hidden, 2**0.5), nn.Tanh(), layer(hidden, hidden, 2**0.5), nn.Tanh(), layer(hidden, 1, 1.0)
        )

    def update_obs_stats(self, obs: torch.Tensor) -> None:
        """Merge a batch into the running mean and variance (Chan et al.'s parallel update)."""
        n, total = obs.shape[0], self.obs_count + obs.shape[0]
        delta = obs.mean(0) - self.obs_mean
        self.obs_var.copy_(
            (self.obs_var * self.obs_count + obs.var(0, unbiased=False) * n + delta**2 * self.obs_count * n / total)
            / total
        )
        self.obs_mean.add_(delta * n / total)
        self.obs_count.copy_(total)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.obs_mean) / (self.obs_var + 1e-8).sqrt()).clamp(-10.0, 10.0)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.normalize(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.normalize(obs)).squeeze(-1)


def nstep_returns(rewards, terminated, truncated, final_values, next_values, gamma: float):
    """n-step returns of a rollout; every argument but `next_values` has shape (n_steps, num_envs).

    Backwards from G_n = V(s_n) (`next_values`, the state after the rollout):
        G_t = r_t + γ G_{t+1}                    while the episode goes on,
        G_t = r_t + γ V(final state)             if it was truncated at t (`final_values`),
        G_t = r_t                                if it terminated at t.
    A truncated episode did not end in the MDP, so its last state's value still counts.
    """
    returns = torch.zeros_like(rewards)
    g = next_values
    for t in reversed(range(rewards.shape[0])):
        g = torch.where(truncated[t], final_values[t], g)  # a new episode begins after a done
        g = rewards[t] + gamma * (1.0 - terminated[t]) * g
        returns[t] = g
    return returns


def actor_critic_loss(model, obs, actions, returns, args: Args):
    """(loss, logits, values, the logged terms) for flat batches of obs, actions and returns."""
    logits, values = model.logits(obs), model.value(obs)  # log π recomputed, with a gradient
    dist = Categorical(logits=logits)
    advantages = returns - values.detach()  # A_t = G_t - V(s_t), a constant for the actor
    policy_loss = -(dist.log_prob(actions) * advantages).mean()  # -E[log π(a_t|s_t) A_t]
    value_loss = 0.5 * (returns - values).pow(2).mean()  # ½ E[(G_t - V(s_t))²]
    entropy = dist.entropy().mean()
    loss = policy_loss + args.vf_coef * value_loss - args.ent_coef * entropy
    return (
        loss,
        logits.detach(),
        values.detach(),
        {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()},
    )


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(G - V) / Var(G): 1 for a perfect critic, 0 for one predicting only the mean."""
    return (1.0 - (returns - values).var() / returns.var().clamp_min(1e-8)).item()


def kl_divergence(old_logits: torch.Tensor, new_logits: torch.Tensor) -> float:
    """Mean KL(π_old || π_new) = E_s[Σ_a π_old(a|s) (log π_old(a|s) - log π_new(a|s))]."""
    old_logp, new_logp = old_logits.log_softmax(-1), new_logits.log_softmax(-1)
    return (old_logp.exp() * (old_logp - new_logp)).sum(-1).mean().item()


def update(model, optimizer, obs, actions, returns, args: Args) -> dict:
    """One gradient step; returns the losses, the critic's explained variance and the step's KL."""
    loss, old_logits, values, logged = actor_critic_loss(model, obs, actions, returns, args)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    with torch.no_grad():
        new_logits = model.logits(obs)
    return {
        **logged,
        "explained_variance": explained_variance(values, returns),
        "kl": kl_divergence(old_logits, new_logits),
        "grad_norm": grad_norm.item(),
    }


@torch.no_grad()
def evaluate(model, env_id: str, episodes: int, seed: int, device, greedy: bool = True, video_path=None) -> list[float]:
    """Returns of `episodes` episodes played side by side, one per env (env i seeded `seed + i`),
    greedily or sampling from π; the first is recorded when `video_path` is set."""
    envs = gym.make_vec(env_id, episodes, vectorization_mode="sync", render_mode="rgb_array" if video_path else None)
    video = VideoWriter(video_path or "", fps=envs.metadata.get("render_fps", 30))  # no add(): no file
    obs, _ = envs.reset(seed=seed)
    returns, running = np.zeros(episodes), np.ones(episodes, dtype=bool)
    while running.any():
        if video_path and running[0]:
            video.add(envs.envs[0].render())
        logits = model.logits(torch.as_tensor(obs, dtype=torch.float32, device=device))
        action = logits.argmax(-1) if greedy else Categorical(logits=logits).sample()
        obs, reward, terminated, truncated, _ = envs.step(action.cpu().numpy())
        returns += reward * running  # an env that finished has reset: its rewards no longer count
        running &= ~(terminated | truncated)
    video.close()
    envs.close()
    return returns.tolist()


def final_evaluation(model, args: Args, device, run_dir: str, kept_step: int, video_path=None):
    """The kept model on fresh seeds (never used in training or selection), greedy and sampled."""
    seed = 2_000_000 + 1_000 * args.seed
    greedy = evaluate(model, args.env_id, args.eval_episodes, seed, device, True, video_path)
    sampled = evaluate(model, args.env_id, args.eval_episodes, seed, device, False)
    mean = write_evaluation(
        run_dir, greedy, sampled_mean_return=float(np.mean(sampled)), sampled_returns=sampled, kept_step=kept_step
    )
    print(
        f"kept model (step {kept_step}) over {len(greedy)} fresh episodes: greedy mean return "
        f"{mean:.2f} (worst {min(greedy):.1f}), sampled {np.mean(sampled):.2f}",
        flush=True,
    )


if __name__ == "__main__":
    args = parse_args(Args)
    script = os.path.splitext(os.path.basename(__file__))[0]
    seed_everything(args.seed)
    torch.set_num_threads(1)  # 64-unit MLPs on batches of 256 gain nothing from a second thread
    device = pick_device(args.cuda)
    checkpoint = args.eval_checkpoint or args.resume  # loaded first: a bad file leaves no run dir
    state = load_checkpoint(checkpoint, script, device) if checkpoint else {}
    run_dir = make_run_dir(args.runs_dir, args.env_id, script, args.seed)
    print(f"run directory: {run_dir} | device: {device}", flush=True)

    envs = make_envs(args.env_id, args.num_envs, args.reward_scale)
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        raise SystemExit(f"error: {args.env_id} does not have a discrete action space")
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    model = ActorCritic(obs_dim, int(envs.single_action_space.n), args.hidden_size).to(device)

    if args.eval_checkpoint:
        model.load_state_dict(state["kept_model"])
        final_evaluation(model, args, device, run_dir, state["kept_step"], os.path.join(run_dir, "videos", "eval.mp4"))
        raise SystemExit(0)

    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    if args.resume:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"resumed from {args.resume} at step {state['global_step']}; episodes restart", flush=True)
    global_step, start_time = state.get("global_step", 0), state.get("time_s", 0.0)
    kept = state.get("kept_model", copy.deepcopy(model.state_dict()))  # the best on validation
    kept_step, kept_return = state.get("kept_step", 0), state.get("kept_return", -np.inf)

    T, N = args.n_steps, args.num_envs
    b_obs = torch.zeros((T, N, obs_dim), device=device)
    b_actions = torch.zeros((T, N), dtype=torch.long, device=device)
    b_rewards, b_terminated, b_final_values = (torch.zeros((T, N), device=device) for _ in range(3))
    b_truncated = torch.zeros((T, N), dtype=torch.bool, device=device)
    diagnostics = ("policy_loss", "value_loss", "entropy", "explained_variance", "kl", "grad_norm")
    metrics = MetricsWriter(
        run_dir, (*diagnostics, "learning_rate", "reward_scale", "time_limit_share", "val_return"), start_time
    )
    progress = Progress(args.total_steps, global_step)
    recent_returns, recent_updates, recent_time_limits = deque(maxlen=100), [], []
    next_log = (global_step // args.log_interval + 1) * args.log_interval
    next_select = (global_step // args.select_interval + 1) * args.select_interval
    obs = torch.as_tensor(envs.reset(seed=args.seed)[0], dtype=torch.float32, device=device)
    stop, kl_brake = StopRequest(), state.get("kl_brake", 1.0)  # kl_brake: share of the rate in use
    while global_step < args.total_steps and not stop:  # Ctrl-C/SIGTERM: finish the update, save
        # Linear decay to 0: late, small steps settle the policy for the greedy evaluation.
        lr = args.learning_rate * max(1.0 - global_step / args.total_steps, 0.0) * kl_brake
        optimizer.param_groups[0]["lr"] = lr
        with torch.no_grad():
            for t in range(T):
                action = Categorical(logits=model.logits(obs)).sample()
                next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
                b_obs[t], b_actions[t] = obs, action
                b_rewards[t] = torch.as_tensor(reward, device=device)
                b_terminated[t] = torch.as_tensor(terminated, device=device)
                b_truncated[t] = torch.as_tensor(truncated & ~terminated, device=device)
                if b_truncated[t].any():  # hit the time limit: bootstrap from the true last state
                    final_obs = np.stack(info["final_obs"][truncated & ~terminated])
                    b_final_values[t, b_truncated[t]] = model.value(
                        torch.as_tensor(final_obs, dtype=torch.float32, device=device)
                    )
                obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
                global_step += N
                for i in np.nonzero(info.get("_episode", np.zeros(N, bool)))[0]:
                    recent_returns.append(float(info["episode"]["r"][i]))
                    recent_time_limits.append(bool(truncated[i] and not terminated[i]))
                    metrics.episode(global_step, recent_returns[-1], int(info["episode"]["l"][i]))
            returns = nstep_returns(b_rewards, b_terminated, b_truncated, b_final_values, model.value(obs), args.gamma)
        flat_obs = b_obs.reshape(T * N, obs_dim)
        recent_updates.append(update(model, optimizer, flat_obs, b_actions.reshape(-1), returns.reshape(-1), args))
        if args.target_kl > 0:  # the KL brake: a step that moved π too far slows the next ones
            if recent_updates[-1]["kl"] > 2 * args.target_kl:
                kl_brake /= 1.5
            elif recent_updates[-1]["kl"] < args.target_kl / 2:
                kl_brake = min(kl_brake * 1.5, 1.0)
        model.update_obs_stats(flat_obs)  # after the update, which used the rollout's statistics
        if global_step >= next_select or global_step >= args.total_steps:
            next_select += args.select_interval
            val_return = float(
                np.mean(evaluate(model, args.env_id, args.select_episodes, 1_000_000 + 1_000 * args.seed, device))
            )
            if val_return > kept_return:
                kept, kept_step, kept_return = copy.deepcopy(model.state_dict()), global_step, val_return
            metrics.log(global_step, progress.steps_per_second(global_step), val_return=val_return)
            print(
                f"validation at step {global_step}: greedy mean {val_return:.1f} "
                f"(kept: step {kept_step}, {kept_return:.1f})",
                flush=True,
            )
        if global_step >= next_log:
            next_log += args.log_interval
            metrics.log(
                global_step,
                progress.steps_per_second(global_step),
                learning_rate=lr,
                reward_scale=args.reward_scale,
                time_limit_share=np.mean(recent_time_limits or [0]),
                **{k: float(np.mean([u[k] for u in recent_updates])) for k in diagnostics},
            )
            recent_updates, recent_time_limits = [], []
            progress.print(global_step, recent_returns)
    envs.close()
    metrics.close()

    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    if args.save_model or stop:
        save_checkpoint(
            checkpoint_path,
            {
                "script": script,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "global_step": global_step,
                "time_s": metrics.elapsed(),
                "args": asdict(args),
                "kept_model": kept,
                "kept_step": kept_step,
                "kept_return": float(kept_return),
                "kl_brake": kl_brake,
            },
        )
    if stop:
        stop.exit(global_step, checkpoint_path)
    if args.eval_episodes > 0:
        model.load_state_dict(kept)
        video_path = os.path.join(run_dir, "videos", "eval.mp4") if args.capture_video else None
        final_evaluation(model, args, device, run_dir, kept_step, video_path)
