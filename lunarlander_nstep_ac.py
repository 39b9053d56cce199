"""Synchronous n-step advantage actor-critic (A2C, Mnih et al., 2016) on LunarLander-v3.

Every update collects `n_steps` steps from each of `num_envs` environments, computes n-step
returns G_t bootstrapped from the critic's V(s_{t+n}), and takes one gradient step on
    -log π(a_t|s_t) (G_t - V(s_t))  +  c_v (G_t - V(s_t))²/2  -  c_e H(π(·|s_t)),
with log π recomputed from the current policy (so the actor really receives a gradient).
Rewards are divided by a running std of the discounted return and advantages G_t - V(s_t) are
normalized per batch; both were measured to help here (observation normalization hurt).

    python lunarlander_nstep_ac.py                  # train, then evaluate greedily
    python lunarlander_nstep_ac.py --eval-checkpoint runs/<run>/checkpoint.pt
    python lunarlander_nstep_ac.py --help
"""
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
from common.utils import Progress, make_run_dir, parse_args, pick_device, seed_everything
from common.video import VideoWriter


@dataclass
class Args:
    env_id: str = "LunarLander-v3"
    """gymnasium environment id (discrete actions, vector observations)"""
    total_steps: int = 500_000
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
    """save <run>/checkpoint.pt at the end of training"""
    eval_episodes: int = 10
    """greedy evaluation episodes after training (or with --eval-checkpoint)"""
    eval_checkpoint: str | None = None
    """skip training: load this checkpoint, play greedily, print the returns, record a video"""
    resume: str | None = None
    """continue training from this checkpoint (networks, optimizer and step count)"""
    log_interval: int = 10_000
    """env steps between progress lines and `log` rows in metrics.csv"""

    num_envs: int = 16
    """environments stepped in lockstep (a gymnasium SyncVectorEnv)"""
    n_steps: int = 8
    """steps per environment between updates: the longest return horizon before bootstrapping"""
    learning_rate: float = 7e-4
    """Adam learning rate at the start; it decays linearly to 0 at --total-steps"""
    gamma: float = 0.995
    """discount factor (a landing takes a few hundred steps: 0.99 sees too little of it)"""
    ent_coef: float = 0.001
    """weight c_e of the entropy bonus (keeps the policy exploring)"""
    vf_coef: float = 0.5
    """weight c_v of the critic's squared-error loss"""
    max_grad_norm: float = 0.5
    """gradient clipping by global norm"""
    hidden_size: int = 64
    """units in each of the two hidden layers of the actor and of the critic"""

    def __post_init__(self):
        for name in ("total_steps", "log_interval", "num_envs", "n_steps", "hidden_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.eval_episodes < 0 or self.learning_rate <= 0 or not 0 <= self.gamma <= 1:
            raise ValueError("--eval-episodes must be >= 0, --learning-rate > 0, 0 <= --gamma <= 1")
        if self.ent_coef < 0 or self.vf_coef <= 0 or self.max_grad_norm <= 0:
            raise ValueError("--ent-coef must be >= 0, --vf-coef > 0, --max-grad-norm > 0")
        for path in (self.eval_checkpoint, self.resume):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"checkpoint not found: {path}")


def make_envs(env_id: str, num_envs: int, gamma: float):
    # SAME_STEP autoreset: a finished episode's env resets inside step(), the returned obs is the
    # new episode's first one and info["final_obs"] is the real last state, which a truncated
    # episode bootstraps from. (The default NEXT_STEP mode would insert a reset step instead.)
    envs = gym.make_vec(env_id, num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)  # raw returns, before scaling
    # Rewards divided by a running std of the discounted return: LunarLander's ±100 rewards
    # otherwise give the critic targets in the hundreds, which it fits far too slowly.
    return gym.wrappers.vector.NormalizeReward(envs, gamma=gamma)


def layer(n_in: int, n_out: int, gain: float) -> nn.Linear:
    """Orthogonal weights, zero bias: a small gain on the policy head starts it near uniform."""
    linear = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs, so the critic's large errors do not disturb the policy."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.actor = nn.Sequential(layer(obs_dim, hidden, 2**0.5), nn.Tanh(),
                                   layer(hidden, hidden, 2**0.5), nn.Tanh(),
                                   layer(hidden, n_actions, 0.01))
        self.critic = nn.Sequential(layer(obs_dim, hidden, 2**0.5), nn.Tanh(),
                                    layer(hidden, hidden, 2**0.5), nn.Tanh(),
                                    layer(hidden, 1, 1.0))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action logits, V(s))."""
        return self.actor(obs), self.critic(obs).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)


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


def actor_critic_loss(model, obs, actions, returns, ent_coef: float, vf_coef: float):
    """(loss, policy loss, value loss, entropy) for flat batches of obs, actions and returns."""
    logits, values = model(obs)  # log π recomputed here, with a gradient, not stored from rollout
    dist = Categorical(logits=logits)
    advantages = returns - values.detach()  # A_t = G_t - V(s_t), a constant for the actor
    # Normalized per batch: the policy's step size then no longer follows the reward scale.
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_loss = -(dist.log_prob(actions) * advantages).mean()  # -E[log π(a_t|s_t) A_t]
    value_loss = 0.5 * (returns - values).pow(2).mean()  # ½ E[(G_t - V(s_t))²]
    entropy = dist.entropy().mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
    return loss, policy_loss.detach(), value_loss.detach(), entropy.detach()


def update(model, optimizer, obs, actions, returns, args: Args) -> dict:
    """One gradient step of the actor-critic loss; returns the logged losses."""
    loss, policy_loss, value_loss, entropy = actor_critic_loss(model, obs, actions, returns,
                                                               args.ent_coef, args.vf_coef)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
            "entropy": entropy.item()}


def greedy_action(model, obs, device) -> int:
    with torch.no_grad():
        return int(model.actor(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax())


def evaluate(model, env_id: str, episodes: int, seed: int, device, video_path=None) -> list[float]:
    """Greedy returns of `episodes` episodes; the first one is recorded when `video_path` is set."""
    env = gym.make(env_id, render_mode="rgb_array" if video_path else None)
    video = VideoWriter(video_path, fps=env.metadata.get("render_fps", 30)) if video_path else None
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        done, episode_return = False, 0.0
        while not done:
            if video and episode == 0:
                video.add(env.render())
            obs, reward, terminated, truncated, _ = env.step(greedy_action(model, obs, device))
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
    if video:
        video.close()
    env.close()
    return returns


def report_evaluation(returns: list[float], run_dir: str) -> None:
    mean = write_evaluation(run_dir, returns)
    print(f"greedy evaluation over {len(returns)} episodes: mean return {mean:.2f}, "
          f"returns {[round(r, 1) for r in returns]}", flush=True)


if __name__ == "__main__":
    args = parse_args(Args)
    script = os.path.splitext(os.path.basename(__file__))[0]
    seed_everything(args.seed)
    torch.set_num_threads(1)  # 64-unit MLPs on batches of 128 run fastest on one thread
    device = pick_device(args.cuda)
    run_dir = make_run_dir(args.runs_dir, args.env_id, script, args.seed)
    print(f"run directory: {run_dir} | device: {device}", flush=True)

    envs = make_envs(args.env_id, args.num_envs, args.gamma)
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        raise SystemExit(f"error: {args.env_id} does not have a discrete action space")
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    model = ActorCritic(obs_dim, int(envs.single_action_space.n), args.hidden_size).to(device)

    if args.eval_checkpoint:
        model.load_state_dict(load_checkpoint(args.eval_checkpoint, script, device)["model"])
        episodes = max(args.eval_episodes, 1)
        report_evaluation(evaluate(model, args.env_id, episodes, args.seed, device,
                                   os.path.join(run_dir, "videos", "eval.mp4")), run_dir)
        raise SystemExit(0)

    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    global_step, start_time = 0, 0.0
    if args.resume:
        state = load_checkpoint(args.resume, script, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        global_step, start_time = state["global_step"], state["time_s"]
        for key in ("mean", "var", "count"):  # continue with the reward scale it had reached
            setattr(envs.return_rms, key, np.float64(state["reward_rms"][key]))
        print(f"resumed from {args.resume} at step {global_step}; episodes restart", flush=True)

    T, N = args.n_steps, args.num_envs
    b_obs = torch.zeros((T, N, obs_dim), device=device)
    b_actions = torch.zeros((T, N), dtype=torch.long, device=device)
    b_rewards, b_terminated, b_final_values = (torch.zeros((T, N), device=device) for _ in range(3))
    b_truncated = torch.zeros((T, N), dtype=torch.bool, device=device)
    metrics = MetricsWriter(run_dir, ("policy_loss", "value_loss", "entropy", "learning_rate"),
                            start_time)
    progress = Progress(args.total_steps, global_step)
    recent_returns = deque(maxlen=100)
    next_log = (global_step // args.log_interval + 1) * args.log_interval
    obs = torch.as_tensor(envs.reset(seed=args.seed)[0], dtype=torch.float32, device=device)
    while global_step < args.total_steps:
        # Linear decay to 0: late, small steps settle the policy for the greedy evaluation.
        lr = args.learning_rate * max(1.0 - global_step / args.total_steps, 0.0)
        optimizer.param_groups[0]["lr"] = lr
        for t in range(T):
            with torch.no_grad():
                action = Categorical(logits=model.actor(obs)).sample()
            next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
            b_obs[t], b_actions[t] = obs, action
            b_rewards[t] = torch.as_tensor(reward, device=device)
            b_terminated[t] = torch.as_tensor(terminated, device=device)
            b_truncated[t] = torch.as_tensor(truncated & ~terminated, device=device)
            if b_truncated[t].any():  # hit the time limit: bootstrap from the true last state
                final_obs = np.stack(info["final_obs"][truncated & ~terminated])
                with torch.no_grad():
                    b_final_values[t, b_truncated[t]] = model.value(
                        torch.as_tensor(final_obs, dtype=torch.float32, device=device))
            obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
            global_step += N
            for i in np.nonzero(info.get("_episode", np.zeros(N, bool)))[0]:
                recent_returns.append(float(info["episode"]["r"][i]))
                metrics.episode(global_step, recent_returns[-1], int(info["episode"]["l"][i]))

        with torch.no_grad():
            returns = nstep_returns(b_rewards, b_terminated, b_truncated, b_final_values,
                                    model.value(obs), args.gamma)
        losses = update(model, optimizer, b_obs.reshape(T * N, obs_dim), b_actions.reshape(-1),
                        returns.reshape(-1), args)
        if global_step >= next_log:
            next_log += args.log_interval
            metrics.log(global_step, progress.steps_per_second(global_step), learning_rate=lr,
                        **losses)
            progress.print(global_step, recent_returns)
    envs.close()
    metrics.close()

    if args.save_model:
        save_checkpoint(os.path.join(run_dir, "checkpoint.pt"), {
            "script": script, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "global_step": global_step, "time_s": metrics.elapsed(), "args": asdict(args),
            "reward_rms": {k: float(getattr(envs.return_rms, k)) for k in ("mean", "var", "count")},
        })
    if args.eval_episodes > 0:
        video_path = os.path.join(run_dir, "videos", "eval.mp4") if args.capture_video else None
        report_evaluation(evaluate(model, args.env_id, args.eval_episodes, args.seed, device,
                                   video_path), run_dir)
