"""DQN (Mnih et al., 2015) on CartPole-v1, with n-step returns and the Double-DQN target (van Hasselt
et al., 2016): experience replay, a target network, a Huber TD loss; the best network on validation
episodes is kept and scored on fresh ones. See docs/cartpole_dqn.md.

    python cartpole_dqn.py                                           # train, then evaluate greedily
    python cartpole_dqn.py --resume runs/<run>/checkpoint.pt         # continue a stopped run
    python cartpole_dqn.py --eval-checkpoint runs/<run>/checkpoint.pt --capture-video
"""

import copy
import os
from collections import deque
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

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
    total_steps: int = 30_000
    """environment steps to train for"""
    seed: int = 1
    """seed of the environment, the network, the exploration and the replay sampling"""
    cuda: bool = True
    """use CUDA when it is available"""
    runs_dir: str = "runs"
    """where the run directory <env>__<script>__<seed>__<timestamp> is created"""
    capture_video: bool = False
    """record the first episode of the final evaluation to <run>/videos/eval.mp4"""
    save_model: bool = False
    """save <run>/checkpoint.pt at the end of training (a stop by Ctrl-C or SIGTERM always saves it)"""
    eval_episodes: int = 10
    """greedy episodes of the final evaluation (and of --eval-checkpoint), on seeds used nowhere else"""
    eval_checkpoint: str | None = None
    """skip training: play this checkpoint's kept model greedily, record a video, write eval.json"""
    resume: str | None = None
    """continue training from this checkpoint.pt"""
    log_interval: int = 1_000
    """environment steps between progress lines and `log` rows in metrics.csv"""

    env_id: str = "CartPole-v1"
    """gymnasium environment id (discrete actions, vector observations)"""
    select_interval: int = 2_000
    """environment steps between the validation rounds that choose the kept model"""
    select_episodes: int = 5
    """greedy episodes per validation round, always on the same seeds"""
    learning_rate: float = 2e-3
    """Adam learning rate"""
    buffer_size: int = 10_000
    """replay buffer capacity in transitions, the newest kept (see docs/cartpole_dqn.md#replay-buffer)"""
    batch_size: int = 512
    """transitions per gradient step"""
    gamma: float = 0.99
    """discount factor"""
    n_step: int = 3
    """steps of reward summed before bootstrapping (fewer where the episode ends first)"""
    target_update_interval: int = 100
    """environment steps between copies of the online network into the target network"""
    start_epsilon: float = 1.0
    """exploration probability at the start"""
    end_epsilon: float = 0.01
    """exploration probability after --exploration-steps"""
    exploration_steps: int = 5_000
    """environment steps over which epsilon decays linearly"""
    learning_starts: int = 1_000
    """transitions collected before the first gradient step"""
    train_frequency: int = 4
    """environment steps per gradient step"""
    max_grad_norm: float = 10.0
    """gradient clipping by global norm"""
    hidden_size: int = 128
    """units in each of the two hidden layers"""

    def __post_init__(self):
        ranges = {"buffer_size": (self.batch_size, 10**8), "learning_starts": (0, INF)}
        check_args(self, ranges | dict.fromkeys(("gamma", "start_epsilon", "end_epsilon"), (0, 1)))
        if gym.envs.registry.get(self.env_id) is None:
            raise ValueError(f"--env-id {self.env_id}: not a gymnasium environment")


def make_env(env_id: str) -> gym.Env:
    return gym.wrappers.RecordEpisodeStatistics(gym.make(env_id))


class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden_size: int):
        super().__init__()
        # in-place ReLUs compute the same values without an allocation (docs/cartpole_dqn.md#speed)
        self.network = nn.Sequential(
            nn.Linear(obs_dim, hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, n_actions),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.network(obs)


class ReplayBuffer:
    """Preallocated circular buffer of n-step transitions (s, a, R, s', terminated, γ^m); the
    oldest are overwritten once it is full."""

    def __init__(self, capacity: int, obs_shape, seed: int):
        self.obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.returns = np.zeros(capacity, dtype=np.float32)
        # Only termination is stored: a truncated transition must still bootstrap from next_obs.
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)  # γ^m: m steps until s'
        self.capacity = capacity
        self.position = 0
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, action, nstep_return, next_obs, terminated, discount) -> None:
        i = self.position
        self.obs[i] = obs
        self.actions[i] = action
        self.returns[i] = nstep_return
        self.next_obs[i] = next_obs
        self.terminated[i] = terminated
        self.discounts[i] = discount
        self.position = (self.position + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, device) -> tuple[torch.Tensor, ...]:
        idx = self.rng.integers(0, self.size, size=batch_size)
        arrays = (self.obs, self.actions, self.returns, self.next_obs, self.terminated, self.discounts)
        return tuple(torch.as_tensor(array[idx], device=device) for array in arrays)


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """Linear interpolation from `start` to `end` over `duration` steps, then constant."""
    return start + (end - start) * min(step / duration, 1.0)


def nstep_transitions(window: deque, next_obs, terminated: bool, done: bool, n_step: int, gamma: float):
    """Pop the finished n-step transitions (s_t, a_t, R, s_t+m, terminated, γ^m) out of `window`,
    the episode's latest (s, a, r) steps: the oldest once it holds n_step steps (m = n_step), all of
    them once the episode has ended (m shrinks to 1 towards its end)."""
    while window and (done or len(window) == n_step):
        nstep_return = sum(gamma**k * reward for k, (_, _, reward) in enumerate(window))  # R = Σ_k<m γ^k r_t+k
        obs, action, _ = window.popleft()
        yield obs, action, nstep_return, next_obs, terminated, gamma ** (len(window) + 1)


def double_dqn_target(q_network, target_network, returns, next_obs, terminated, discounts) -> torch.Tensor:
    """y = R + γ^m (1 - terminated) Q_target(s', argmax_a' Q(s', a')), s' = s_t+m: the online network
    picks a', the target network scores it, which curbs the max's overestimate."""
    with torch.no_grad():
        next_actions = q_network(next_obs).argmax(dim=1, keepdim=True)
        next_q = target_network(next_obs).gather(1, next_actions).squeeze(1)
    return returns + discounts * (1.0 - terminated) * next_q


@torch.no_grad()
def evaluate(q_network, args: Args, episodes: int, seed: int, device, video_path: str | None = None) -> list[dict]:
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
        actions = q_network(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax(1)
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
    torch.set_num_threads(2)  # see docs/cartpole_dqn.md#speed
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    checkpoint = args.eval_checkpoint or args.resume
    state = load_checkpoint(checkpoint, script, device) if checkpoint else {}
    run_dir = make_run_dir(args.runs_dir, args.env_id, script, args.seed)
    video_path = os.path.join(run_dir, "videos", "eval.mp4")
    print(f"run directory: {run_dir} | device: {device}", flush=True)

    env = make_env(args.env_id)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise SystemExit(f"error: {args.env_id} does not have a discrete action space")
    obs_dim = int(np.prod(env.observation_space.shape))
    n_actions = int(env.action_space.n)
    q_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)

    if args.eval_checkpoint:
        load_weights(q_network, state["kept_model"], checkpoint, state, args)
        episodes = evaluate(q_network, args, max(args.eval_episodes, 1), evaluation_seed(args.seed), device, video_path)
        write_evaluation(run_dir, episodes, state["kept_step"])
        raise SystemExit(0)

    target_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)
    if args.resume:
        load_weights(q_network, state["model"], checkpoint, state, args)
        optimizer.load_state_dict(state["optimizer"])
        print(f"resumed from {args.resume} at step {state['global_step']}; the replay buffer refills first")
    target_network.load_state_dict(q_network.state_dict())
    global_step = state.get("global_step", 0)
    kept_model = state.get("kept_model", copy.deepcopy(q_network.state_dict()))  # the best on validation
    kept_step = state.get("kept_step", 0)
    kept_score = state.get("kept_score", -INF)

    buffer = ReplayBuffer(args.buffer_size, env.observation_space.shape, args.seed)
    metric_fields = ("loss", "q_mean", "epsilon", "val_return")
    metrics = MetricsWriter(run_dir, metric_fields, args.total_steps, global_step, state.get("time_s", 0.0))
    stop = StopRequest()
    recent_returns = deque(maxlen=20)
    window = deque()  # the episode's latest steps, not yet in an n-step transition
    rng = np.random.default_rng(args.seed)
    loss = q_mean = torch.tensor(float("nan"))
    obs, _ = env.reset(seed=args.seed)
    while global_step < args.total_steps and not stop:
        epsilon = linear_schedule(args.start_epsilon, args.end_epsilon, args.exploration_steps, global_step)
        if rng.random() < epsilon:
            action = int(rng.integers(n_actions))
        else:
            with torch.no_grad():
                action = q_network(torch.as_tensor(obs, device=device)).argmax().item()
        next_obs, reward, terminated, truncated, info = env.step(action)
        global_step += 1
        # On truncation next_obs is the real final state, so the stored transitions bootstrap.
        window.append((obs, action, float(reward)))
        done = terminated or truncated
        for transition in nstep_transitions(window, next_obs, terminated, done, args.n_step, args.gamma):
            buffer.add(*transition)
        obs = next_obs
        if done:
            recent_returns.append(float(info["episode"]["r"]))
            metrics.episode(global_step, recent_returns[-1], int(info["episode"]["l"]))
            obs, _ = env.reset()

        if buffer.size >= args.learning_starts and global_step % args.train_frequency == 0:
            b_obs, b_actions, b_returns, b_next_obs, b_terminated, b_discounts = buffer.sample(args.batch_size, device)
            target = double_dqn_target(q_network, target_network, b_returns, b_next_obs, b_terminated, b_discounts)
            q = q_network(b_obs).gather(1, b_actions.unsqueeze(1)).squeeze(1)  # Q(s, a)
            loss = nn.functional.smooth_l1_loss(q, target)  # Huber loss of the TD error y - Q(s, a)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(q_network.parameters(), args.max_grad_norm)
            optimizer.step()
            q_mean = q.detach().mean()
        if global_step % args.target_update_interval == 0:
            target_network.load_state_dict(q_network.state_dict())
        if global_step % args.select_interval == 0 or global_step == args.total_steps:
            validation = evaluate(q_network, args, args.select_episodes, validation_seed(args.seed), device)
            val_return = float(np.mean([episode["return"] for episode in validation]))
            if val_return >= kept_score:  # a tie (500 is the most) goes to the later, better-trained model
                kept_model = copy.deepcopy(q_network.state_dict())
                kept_step = global_step
                kept_score = val_return
            metrics.log(global_step, val_return=val_return)
        if global_step % args.log_interval == 0:
            metrics.log(global_step, loss=loss.item(), q_mean=q_mean.item(), epsilon=epsilon)
            metrics.print_progress(global_step, recent_returns)
    env.close()
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
                "model": q_network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "kept_model": kept_model,
                "kept_step": kept_step,
                "kept_score": kept_score,
                "resume_state": None,
            },
        )
    if stop:
        stop.exit(global_step, checkpoint_path)
    stop.training_done()
    if args.eval_episodes > 0:
        q_network.load_state_dict(kept_model)
        video = video_path if args.capture_video else None
        episodes = evaluate(q_network, args, args.eval_episodes, evaluation_seed(args.seed), device, video)
        write_evaluation(run_dir, episodes, kept_step)
