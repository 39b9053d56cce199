"""Synchronous n-step advantage actor-critic (A2C, the synchronous form of Mnih et al., 2016) on
LunarLander-v3: every update collects `n_steps` steps from each of `num_envs` environments, computes
n-step returns bootstrapped from the critic and takes one gradient step on the actor-critic loss. A large
entropy bonus keeps the policy from collapsing (its greedy action is what lands); observations are
normalized, rewards scaled by a constant, the learning rate brakes after a large policy step (KL); the
best network on validation episodes is kept and scored on fresh ones. See docs/lunarlander_nstep_ac.md.

    python lunarlander_nstep_ac.py                                           # train, then evaluate greedily
    python lunarlander_nstep_ac.py --resume runs/<run>/checkpoint.pt         # continue a stopped run
    python lunarlander_nstep_ac.py --eval-checkpoint runs/<run>/checkpoint.pt --capture-video
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

from common.checkpoint import load_checkpoint, load_weights, save_checkpoint
from common.metrics import MetricsWriter, write_evaluation
from common.run import (
    check_args,
    evaluation_seed,
    make_run_dir,
    parse_args,
    seed_everything,
    validation_seed,
)
from common.stopping import StopRequest
from common.video import VideoWriter

INF = float("inf")


@dataclass
class Args:
    total_steps: int = 1_000_000
    """environment steps to train for, summed over all environments"""
    seed: int = 1
    """seed of the environments, the network and the action sampling"""
    cuda: bool = True
    """use CUDA when it is available"""
    runs_dir: str = "runs"
    """where the run directory <env>__<script>__<seed>__<timestamp> is created"""
    capture_video: bool = False
    """record the first episode of the final evaluation to <run>/videos/eval.mp4"""
    save_model: bool = False
    """save <run>/checkpoint.pt at the end of training (a stop by Ctrl-C or SIGTERM always saves it)"""
    eval_episodes: int = 100
    """greedy episodes of the final evaluation (and of --eval-checkpoint), on seeds used nowhere else"""
    eval_checkpoint: str | None = None
    """skip training: play this checkpoint's kept model greedily, record a video, write eval.json"""
    resume: str | None = None
    """continue training from this checkpoint.pt"""
    log_interval: int = 10_000
    """environment steps between progress lines and `log` rows in metrics.csv"""

    env_id: str = "LunarLander-v3"
    """gymnasium environment id (discrete actions, vector observations)"""
    select_interval: int = 50_000
    """environment steps between the validation rounds that choose the kept model"""
    select_episodes: int = 20
    """greedy episodes per validation round, always on the same seeds"""
    num_envs: int = 16
    """environments stepped in lockstep (a gymnasium SyncVectorEnv)"""
    n_steps: int = 16
    """steps per environment between updates: the longest return horizon before bootstrapping"""
    learning_rate: float = 7e-4
    """Adam learning rate at the start; it decays linearly to 0 at --total-steps"""
    gamma: float = 0.995
    """discount factor: a landing takes a few hundred steps (see docs/lunarlander_nstep_ac.md#gamma)"""
    ent_coef: float = 0.02
    """weight c_H of the entropy bonus: large, so that π stays broad (see docs/lunarlander_nstep_ac.md#entropy-bonus)"""
    vf_coef: float = 0.5
    """weight c_V of the critic's squared-error loss"""
    max_grad_norm: float = 0.5
    """gradient clipping by global norm"""
    hidden_size: int = 64
    """units in each of the two hidden layers of the actor and of the critic"""
    reward_scale: float = 0.01
    """rewards are multiplied by this constant (critic targets of order 1)"""
    target_kl: float = 3e-5
    """KL brake: the learning rate shrinks 1.5x after an update with KL > 2x this, regrows below ½x (0: off)"""

    def __post_init__(self):
        check_args(self, {"gamma": (0, 1), "ent_coef": (0, INF), "target_kl": (0, INF)})
        if gym.envs.registry.get(self.env_id) is None:
            raise ValueError(f"--env-id {self.env_id}: not a gymnasium environment")


def make_envs(env_id: str, num_envs: int, reward_scale: float) -> gym.vector.VectorEnv:
    # SAME_STEP autoreset: a finished episode's env resets inside step(), the returned obs is the
    # new episode's first one and info["final_obs"] is the real last state, which a truncated
    # episode bootstraps from. (The default NEXT_STEP mode would insert a reset step instead.)
    same_step = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
    envs = gym.make_vec(env_id, num_envs, vectorization_mode="sync", vector_kwargs=same_step)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)  # raw returns, before scaling
    # LunarLander's ±100 rewards would give the critic targets in the hundreds, which it fits far too
    # slowly; a constant scale, unlike a running std, keeps the targets' meaning fixed
    # (see docs/lunarlander_nstep_ac.md#reward-scale).
    return gym.wrappers.vector.TransformReward(envs, lambda reward: reward * reward_scale)


def layer_init(layer, std=2**0.5, bias_const=0.0):
    """Orthogonal weights, constant bias: a small std on the policy head starts it near uniform."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


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
            layer_init(nn.Linear(obs_dim, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, n_actions), std=0.01),
        )
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, 1), std=1.0),
        )

    def update_obs_stats(self, obs: torch.Tensor) -> None:
        """Merge a batch into the running mean and variance (Chan et al.'s parallel update)."""
        batch_size = obs.shape[0]
        total = self.obs_count + batch_size
        delta = obs.mean(0) - self.obs_mean
        # Var = (Var_a n_a + Var_b n_b + δ² n_a n_b / n) / n
        weighted_vars = self.obs_var * self.obs_count + obs.var(0, unbiased=False) * batch_size
        self.obs_var.copy_((weighted_vars + delta**2 * self.obs_count * batch_size / total) / total)
        self.obs_mean.add_(delta * batch_size / total)
        self.obs_count.copy_(total)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.obs_mean) / (self.obs_var + 1e-8).sqrt()).clamp(-10.0, 10.0)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.normalize(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.normalize(obs)).squeeze(-1)


def nstep_returns(rewards, terminated, truncated, final_values, last_values, gamma: float):
    """n-step returns of a rollout; every argument has shape (n_steps, n_envs) but `last_values` (n_envs,).

    Backwards from G_n = V(s_n) (`last_values`, the state after the rollout):
        G_t = r_t + γ G_{t+1}                    while the episode goes on,
        G_t = r_t + γ V(final state)             if it was truncated at t (`final_values[t]`),
        G_t = r_t                                if it terminated at t.
    A truncated episode did not end in the MDP, so its last state's value still counts.
    """
    returns = torch.zeros_like(rewards)
    next_return = last_values
    for t in reversed(range(rewards.shape[0])):
        next_return = torch.where(truncated[t], final_values[t], next_return)  # the next episode's G does not count
        next_return = rewards[t] + gamma * (1.0 - terminated[t]) * next_return
        returns[t] = next_return
    return returns


def actor_critic_loss(logits, values, actions, returns, vf_coef: float, ent_coef: float):
    """The actor-critic loss of a batch, from the network's logits and values V(s) (with gradients),
    the actions taken and their returns G; (loss, {"policy_loss", "value_loss", "entropy"} as floats)."""
    dist = Categorical(logits=logits)
    advantages = returns - values.detach()  # A = G - V(s), a constant for the actor
    policy_loss = -(dist.log_prob(actions) * advantages).mean()
    value_loss = 0.5 * (returns - values).pow(2).mean()
    entropy = dist.entropy().mean()
    # L = -E[log π(a|s) A] + c_V E[½ (G - V(s))²] - c_H E[H(π(·|s))]
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
    return loss, {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(G - V) / Var(G): 1 for a perfect critic, 0 for one predicting only the mean."""
    return (1.0 - (returns - values).var() / returns.var().clamp_min(1e-8)).item()


def kl_divergence(old_logits: torch.Tensor, new_logits: torch.Tensor) -> float:
    """Mean KL(π_old || π_new) = E_s[Σ_a π_old(a|s) (log π_old(a|s) - log π_new(a|s))]."""
    old_log_probs = old_logits.log_softmax(-1)
    new_log_probs = new_logits.log_softmax(-1)
    return (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum(-1).mean().item()


def update(model, optimizer, obs, actions, returns, args: Args) -> dict:
    """One gradient step; returns the losses, the critic's explained variance and the step's KL."""
    logits = model.logits(obs)  # log π recomputed from the current policy, with a gradient
    values = model.value(obs)
    loss, logged = actor_critic_loss(logits, values, actions, returns, args.vf_coef, args.ent_coef)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    with torch.no_grad():
        new_logits = model.logits(obs)
    return {
        **logged,
        "explained_variance": explained_variance(values.detach(), returns),
        "kl": kl_divergence(logits.detach(), new_logits),
        "grad_norm": grad_norm.item(),
    }


def brake_learning_rate(kl_brake: float, kl: float, target_kl: float) -> float:
    """The KL brake, the share of the learning rate in use: a step that moved π too far (KL > 2 target)
    slows the next ones 1.5x; small steps (KL < target / 2) let it grow back to 1. Off at target 0.
    See docs/lunarlander_nstep_ac.md#kl-brake."""
    if target_kl > 0 and kl > 2 * target_kl:
        return kl_brake / 1.5
    if target_kl > 0 and kl < target_kl / 2:
        return min(kl_brake * 1.5, 1.0)
    return kl_brake


@torch.no_grad()
def evaluate(model, args: Args, episodes: int, seed: int, device, video_path: str | None = None) -> list[dict]:
    """Greedy episodes side by side, environment i on seed `seed + i`; the first recorded if asked."""
    render_mode = "rgb_array" if video_path else None
    envs = gym.make_vec(args.env_id, episodes, vectorization_mode="sync", render_mode=render_mode)
    video = VideoWriter(video_path, fps=envs.metadata.get("render_fps", 30)) if video_path else None
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        if video and running[0]:
            video.add(envs.envs[0].render())
        actions = model.logits(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax(-1)
        obs, rewards, terminated, truncated, _ = envs.step(actions.cpu().numpy())
        returns += rewards * running  # an environment that finished has reset: its rewards no longer count
        running &= ~(terminated | truncated)
    if video:
        video.close()
    envs.close()
    return [{"return": float(episode_return)} for episode_return in returns]


if __name__ == "__main__":
    args = parse_args(Args)
    script = os.path.splitext(os.path.basename(__file__))[0]
    seed_everything(args.seed)
    torch.set_num_threads(1)  # see docs/lunarlander_nstep_ac.md#speed
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    checkpoint = args.eval_checkpoint or args.resume
    state = load_checkpoint(checkpoint, script, device) if checkpoint else {}
    run_dir = make_run_dir(args.runs_dir, args.env_id, script, args.seed)
    video_path = os.path.join(run_dir, "videos", "eval.mp4")
    print(f"run directory: {run_dir} | device: {device}", flush=True)

    envs = make_envs(args.env_id, args.num_envs, args.reward_scale)
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        raise SystemExit(f"error: {args.env_id} does not have a discrete action space")
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_actions = int(envs.single_action_space.n)
    model = ActorCritic(obs_dim, n_actions, args.hidden_size).to(device)

    if args.eval_checkpoint:
        load_weights(model, state["kept_model"], checkpoint, state, args)
        episodes = evaluate(model, args, max(args.eval_episodes, 1), evaluation_seed(args.seed), device, video_path)
        write_evaluation(run_dir, episodes, state["kept_step"])
        raise SystemExit(0)

    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    kl_brake = 1.0  # the share of the scheduled learning rate in use
    if args.resume:
        load_weights(model, state["model"], checkpoint, state, args)
        optimizer.load_state_dict(state["optimizer"])
        kl_brake = state["resume_state"]["kl_brake"]
        print(f"resumed from {args.resume} at step {state['global_step']}; episodes restart", flush=True)
    global_step = state.get("global_step", 0)
    kept_model = state.get("kept_model", copy.deepcopy(model.state_dict()))  # the best on validation
    kept_step = state.get("kept_step", 0)
    kept_score = state.get("kept_score", -INF)

    rollout_shape = (args.n_steps, args.num_envs)
    b_obs = torch.zeros((*rollout_shape, obs_dim), device=device)
    b_actions = torch.zeros(rollout_shape, dtype=torch.long, device=device)
    b_rewards = torch.zeros(rollout_shape, device=device)
    b_terminated = torch.zeros(rollout_shape, device=device)
    b_truncated = torch.zeros(rollout_shape, dtype=torch.bool, device=device)
    b_final_values = torch.zeros(rollout_shape, device=device)
    diagnostics = ("policy_loss", "value_loss", "entropy", "explained_variance", "kl", "grad_norm")
    metric_fields = (*diagnostics, "learning_rate", "reward_scale", "time_limit_share", "val_return")
    metrics = MetricsWriter(run_dir, metric_fields, args.total_steps, global_step, state.get("time_s", 0.0))
    stop = StopRequest()
    recent_returns = deque(maxlen=100)
    recent_updates = []
    recent_time_limits = []  # per finished episode: was it cut by the time limit?
    next_log = (global_step // args.log_interval + 1) * args.log_interval
    next_select = (global_step // args.select_interval + 1) * args.select_interval
    first_obs, _ = envs.reset(seed=args.seed)
    obs = torch.as_tensor(first_obs, dtype=torch.float32, device=device)
    while global_step < args.total_steps and not stop:
        # Linear decay to 0: late, small steps settle the policy for the greedy evaluation.
        learning_rate = args.learning_rate * max(1.0 - global_step / args.total_steps, 0.0) * kl_brake
        optimizer.param_groups[0]["lr"] = learning_rate
        with torch.no_grad():
            for t in range(args.n_steps):
                actions = Categorical(logits=model.logits(obs)).sample()
                next_obs, rewards, terminated, truncated, info = envs.step(actions.cpu().numpy())
                time_limit = truncated & ~terminated
                b_obs[t] = obs
                b_actions[t] = actions
                b_rewards[t] = torch.as_tensor(rewards, device=device)
                b_terminated[t] = torch.as_tensor(terminated, device=device)
                b_truncated[t] = torch.as_tensor(time_limit, device=device)
                if time_limit.any():  # cut by the time limit, not ended: bootstrap from the true last state
                    final_obs = np.stack(info["final_obs"][time_limit])
                    final_obs = torch.as_tensor(final_obs, dtype=torch.float32, device=device)
                    b_final_values[t, b_truncated[t]] = model.value(final_obs)
                obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
                global_step += args.num_envs
                for i in np.nonzero(info.get("_episode", np.zeros(args.num_envs, bool)))[0]:
                    recent_returns.append(float(info["episode"]["r"][i]))
                    recent_time_limits.append(bool(time_limit[i]))
                    metrics.episode(global_step, recent_returns[-1], int(info["episode"]["l"][i]))
            last_values = model.value(obs)
            returns = nstep_returns(b_rewards, b_terminated, b_truncated, b_final_values, last_values, args.gamma)
        flat_obs = b_obs.reshape(-1, obs_dim)
        recent_updates.append(update(model, optimizer, flat_obs, b_actions.reshape(-1), returns.reshape(-1), args))
        kl_brake = brake_learning_rate(kl_brake, recent_updates[-1]["kl"], args.target_kl)
        model.update_obs_stats(flat_obs)  # after the update, which used the rollout's statistics
        if global_step >= next_select or global_step >= args.total_steps:
            next_select += args.select_interval
            validation = evaluate(model, args, args.select_episodes, validation_seed(args.seed), device)
            val_return = float(np.mean([episode["return"] for episode in validation]))
            if val_return > kept_score:
                kept_model = copy.deepcopy(model.state_dict())
                kept_step = global_step
                kept_score = val_return
            metrics.log(global_step, val_return=val_return)
            kept = f"kept: step {kept_step}, {kept_score:.1f}"
            print(f"validation at step {global_step}: greedy mean {val_return:.1f} ({kept})", flush=True)
        if global_step >= next_log:
            next_log += args.log_interval
            metrics.log(
                global_step,
                learning_rate=learning_rate,
                reward_scale=args.reward_scale,
                time_limit_share=np.mean(recent_time_limits or [0]),
                **{name: float(np.mean([logged[name] for logged in recent_updates])) for name in diagnostics},
            )
            recent_updates = []
            recent_time_limits = []
            metrics.print_progress(global_step, recent_returns)
    envs.close()
    metrics.close()

    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    if args.save_model or stop:
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
                "resume_state": {"kl_brake": kl_brake},
            },
        )
    if stop:
        stop.exit(global_step, checkpoint_path)
    stop.training_done()
    if args.eval_episodes > 0:
        model.load_state_dict(kept_model)
        video = video_path if args.capture_video else None
        episodes = evaluate(model, args, args.eval_episodes, evaluation_seed(args.seed), device, video)
        write_evaluation(run_dir, episodes, kept_step)
