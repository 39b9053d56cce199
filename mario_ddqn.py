"""Double DQN (van Hasselt et al., 2016) on n-step returns, on Super Mario Bros 1-1 from pixels, with a replay
buffer that keeps each frame once and learning in a thread while the emulator plays. See docs/mario_ddqn.md.

    python mario_ddqn.py                                             # train, then evaluate greedily
    python mario_ddqn.py --resume runs/<run>/checkpoint.pt           # continue a stopped run
    python mario_ddqn.py --eval-checkpoint pretrained/mario_ddqn_1-1.pt --capture-video
"""

import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from common.checkpoint import load_checkpoint, load_weights, save_checkpoint
from common.mario import MarioEnv
from common.metrics import MetricsWriter, write_evaluation
from common.run import check_args, evaluation_seed, make_run_dir, parse_args, seed_everything
from common.stopping import StopRequest
from common.video import VideoWriter


@dataclass
class Args:
    total_steps: int = 500_000
    """agent steps (each is --frame-skip NES frames) to train for"""
    seed: int = 1
    """seed of the network, the exploration and the replay sampling (the NES is deterministic)"""
    cuda: bool = True
    """use CUDA when it is available"""
    runs_dir: str = "runs"
    """where the run directory <env>__<script>__<seed>__<timestamp> is created"""
    capture_video: bool = False
    """record the first episode of the final evaluation to <run>/videos/eval.mp4"""
    save_model: bool = False
    """save <run>/checkpoint.pt every --checkpoint-interval steps and at the end (a stop always saves it)"""
    eval_episodes: int = 10
    """greedy episodes of the final evaluation (and of --eval-checkpoint): power-on, then 0-30 no-op frames"""
    eval_checkpoint: str | None = None
    """skip training: play this checkpoint's kept model greedily, record a video, write eval.json"""
    resume: str | None = None
    """continue training from this checkpoint.pt (the replay buffer refills first)"""
    log_interval: int = 5_000
    """agent steps between progress lines and `log` rows in metrics.csv"""

    stage: tuple[Literal[1, 2, 3, 4, 5, 6, 7, 8], Literal[1, 2, 3, 4]] = (1, 1)
    """world (1-8) and stage (1-4) to play: --stage 1 1 is 1-1"""
    actions: Literal["right", "right_only", "simple", "complex"] = "right_only"
    """joypad action set (see docs/mario_ddqn.md#action-sets)"""
    checkpoint_interval: int = 50_000
    """agent steps between checkpoints with --save-model"""
    frame_skip: int = 4
    """NES frames per agent step (the action repeats; the last two frames are max-pooled)"""
    learning_rate: float = 2.5e-4
    """Adam learning rate"""
    buffer_size: int = 100_000
    """replay capacity in frames (84x84 uint8, 7 KB each: 0.7 GB at 100k; at least 8 and --batch-size)"""
    batch_size: int = 32
    """transitions per gradient step"""
    gamma: float = 0.99
    """discount factor per agent step"""
    n_step: int = 3
    """steps of reward summed before bootstrapping (fewer where the episode ends first)"""
    reward_scale: float = 1 / 15
    """rewards are multiplied by this (upstream clips each frame's reward to [-15, 15])"""
    target_update_interval: int = 2_000
    """agent steps between copies of the online network into the target network"""
    end_epsilon: float = 0.02
    """exploration probability at the end of the decay (it starts at 1: random play)"""
    exploration_steps: int = 50_000
    """agent steps after --learning-starts over which epsilon decays linearly (--resume continues it)"""
    learning_starts: int = 10_000
    """transitions collected before the first gradient step, also after --resume (<= 90% of --total-steps)"""
    train_frequency: int = 4
    """agent steps per gradient step"""
    max_grad_norm: float = 10.0
    """gradient clipping by global norm"""
    train_noops: int = 0
    """training episodes start after 0 to this many no-op NES frames (drawn per episode); 0: power-on"""
    eval_patience: int = 200
    """greedy episodes end after this many agent steps without a new best x_pos (stuck at a pipe)"""

    def __post_init__(self):
        ranges = dict.fromkeys(("learning_starts", "train_noops"), (0, float("inf")))
        ranges["buffer_size"] = (max(self.batch_size, 8), float("inf"))
        check_args(self, ranges | dict.fromkeys(("gamma", "end_epsilon"), (0, 1)))


def area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) area-average resize weights: output i averages the input span [i, i + 1) * n_in / n_out."""
    edges = np.arange(n_out + 1) * n_in / n_out
    pixels = np.arange(n_in)
    overlap = np.clip(np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels), 0, None)
    return torch.as_tensor(overlap / overlap.sum(axis=1, keepdims=True), dtype=torch.float32)


class SkipMaxGray(gym.ObservationWrapper):
    """Repeat the action `skip` frames, summing rewards; see the max of the last two (sprites flicker)."""

    def __init__(self, env, skip: int, size: int = 84):
        super().__init__(env)
        height, width, _ = env.observation_space.shape
        self.rows = area_matrix(height, size)
        self.cols = area_matrix(width, size)
        self.skip = skip
        self.observation_space = gym.spaces.Box(0, 255, (size, size), np.uint8)

    def observation(self, frame: np.ndarray) -> np.ndarray:  # reset() applies it too
        # torch rather than numpy for these small products: see docs/mario_ddqn.md#preprocessing
        gray = torch.from_numpy(frame).float() @ torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma
        return (self.rows @ gray @ self.cols.T).round().to(torch.uint8).numpy()

    def step(self, action):
        total_reward = 0.0
        last_frames = []
        for _ in range(self.skip):
            frame, reward, terminated, truncated, info = self.env.step(action)
            total_reward += reward
            last_frames = last_frames[-1:] + [frame]
            if terminated or truncated:
                break
        return self.observation(np.max(last_frames, axis=0)), total_reward, terminated, truncated, info


class FrameReplayBuffer:
    """Circular replay of single frames; stacks of `stack` frames are rebuilt at sampling time.

    Slot i holds a frame and, once the agent acts on the state ending there (`valid[i]`), the action,
    reward and termination; the next state ends at i + 1. Frames before an episode's first read as it."""

    def __init__(self, capacity: int, frame_shape, seed: int, stack: int = 4):
        self.frames = np.zeros((capacity, *frame_shape), dtype=np.uint8)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.first = np.zeros(capacity, dtype=bool)
        self.valid = np.zeros(capacity, dtype=bool)
        self.capacity = capacity
        self.stack = stack
        self.cursor = -1  # the slot of the newest frame
        self.rng = np.random.default_rng(seed)

    def start_episode(self, frame) -> None:
        self._write(frame, first=True)

    def add(self, action, reward, terminated, next_frame) -> None:
        """The transition from the state ending at the newest frame; `next_frame` is appended."""
        self.actions[self.cursor] = action
        self.rewards[self.cursor] = reward
        self.terminated[self.cursor] = terminated
        self.valid[self.cursor] = True
        self._write(next_frame, first=False)

    def _write(self, frame, first: bool) -> None:
        self.cursor = (self.cursor + 1) % self.capacity
        self.frames[self.cursor] = frame
        self.first[self.cursor] = first
        # this slot's transition is gone, and the next `stack - 1` slots' histories lost a frame
        self.valid[(self.cursor + np.arange(self.stack)) % self.capacity] = False

    def stack_indices(self, last: np.ndarray) -> np.ndarray:
        """Frame indices (batch, stack) of the states ending at slots `last`."""
        indices = (last[:, None] + np.arange(1 - self.stack, 1)) % self.capacity
        for k in range(self.stack - 2, -1, -1):  # newest to oldest: never cross an episode start
            indices[:, k] = np.where(self.first[indices[:, k + 1]], indices[:, k + 1], indices[:, k])
        return indices

    def sample(self, batch_size: int, device, n_step: int, gamma: float) -> tuple[torch.Tensor, ...]:
        """(s_t, a_t, R, s_t+m, terminated, γ^m): m = n_step, or fewer if the episode ends first
        (termination, or a truncation's last frame, never acted on) or the data does."""
        start = self.rng.choice(np.flatnonzero(self.valid), size=batch_size)
        last = start.copy()  # the slot of the m-th step's transition
        steps = np.ones(batch_size, dtype=np.int64)  # m
        returns = self.rewards[start].copy()
        for k in range(1, n_step):
            following = (last + 1) % self.capacity
            extend = (steps == k) & (self.terminated[last] == 0) & self.valid[following]
            returns += np.where(extend, gamma**k * self.rewards[following], 0.0)  # R = Σ_k<m γ^k r_t+k
            last = np.where(extend, following, last)
            steps += extend
        obs = self.frames[self.stack_indices(start)]
        next_obs = self.frames[self.stack_indices((last + 1) % self.capacity)]
        discounts = (gamma**steps).astype(np.float32)
        arrays = (obs, self.actions[start], returns, next_obs, self.terminated[last], discounts)
        return tuple(torch.as_tensor(array, device=device) for array in arrays)


class QNetwork(nn.Module):
    """The first DQN paper's network (Mnih et al., 2013), not Nature's: see docs/mario_ddqn.md#the-network."""

    def __init__(self, n_actions: int, stack: int = 4):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(stack, 16, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 9 * 9, 256),
            nn.ReLU(),
            nn.Linear(256, n_actions),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.network(obs.float() / 255.0)


def double_dqn_target(q_network, target_network, returns, next_obs, terminated, discounts) -> torch.Tensor:
    """y = R + γ^m (1 - terminated) Q_target(s', argmax_a' Q(s', a')), s' = s_t+m: the online network
    picks a', the target network scores it, which curbs the max's overestimate."""
    with torch.no_grad():
        next_actions = q_network(next_obs).argmax(dim=1, keepdim=True)
        next_q = target_network(next_obs).gather(1, next_actions).squeeze(1)
    return returns + discounts * (1.0 - terminated) * next_q


def gradient_step(q_network, target_network, optimizer, batch, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    obs, actions, returns, next_obs, terminated, discounts = batch
    target = double_dqn_target(q_network, target_network, returns, next_obs, terminated, discounts)
    q = q_network(obs).gather(1, actions.unsqueeze(1)).squeeze(1)  # Q(s, a)
    loss = nn.functional.smooth_l1_loss(q, target)  # Huber loss of the TD error y - Q(s, a)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(q_network.parameters(), args.max_grad_norm)
    optimizer.step()
    return loss.detach(), q.detach().mean()


def greedy_action(q_network, stack: np.ndarray, device) -> int:
    with torch.no_grad():
        return int(q_network(torch.as_tensor(stack[None], device=device)).argmax())


def evaluate(q_network, args: Args, episodes: int, seed: int, device, video_path: str | None = None) -> list[dict]:
    """Greedy episodes, the first from power-on (the NES is deterministic: one fixed path), the others after 0-30
    no-op frames drawn from `seed`; the first is recorded if asked. --eval-patience also ends an episode."""
    env = SkipMaxGray(MarioEnv(*args.stage, args.actions, "rgb_array" if video_path else None), args.frame_skip)
    video = VideoWriter(video_path, fps=60 // args.frame_skip) if video_path else None
    noop_rng = np.random.default_rng(seed)
    results = []
    for episode in range(episodes):
        noops = int(noop_rng.integers(31)) if episode > 0 else 0  # NES frames before the first agent step
        frame, _ = env.reset(options={"noops": noops})
        stack = np.stack([frame] * 4)
        result = {"return": 0.0, "length": 0, "noops": noops}
        best_x_pos = 0
        steps_since_best = 0
        terminated = truncated = False
        while not (terminated or truncated) and steps_since_best < args.eval_patience:
            if video and episode == 0:
                video.add(env.render())
            frame, reward, terminated, truncated, info = env.step(greedy_action(q_network, stack, device))
            stack = np.concatenate([stack[1:], frame[None]])
            result["return"] += reward
            result["length"] += 1
            steps_since_best = 0 if info["x_pos"] > best_x_pos else steps_since_best + 1
            best_x_pos = max(best_x_pos, info["x_pos"])
        results.append(result | {"x_pos": info["x_pos"], "flag_get": info["flag_get"]})
    if video:
        video.close()
    env.close()
    return results


def flags_summary(episodes: list[dict]) -> str:
    flags = sum(episode["flag_get"] for episode in episodes)
    x_pos = [episode["x_pos"] for episode in episodes]
    return f"flags {flags}/{len(episodes)}, x_pos {x_pos} (no-op frames {[episode['noops'] for episode in episodes]})"


if __name__ == "__main__":
    args = parse_args(Args)
    script = os.path.splitext(os.path.basename(__file__))[0]
    seed_everything(args.seed)
    torch.set_num_threads(1)  # the emulator and the learner thread take a core each
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    checkpoint = args.eval_checkpoint or args.resume
    state = load_checkpoint(checkpoint, script, device) if checkpoint else {}
    if state and state["args"]["actions"] != args.actions:  # checked before the run directory exists
        raise SystemExit(f"error: {checkpoint} was trained with --actions {state['args']['actions']}")
    if args.resume and not (state["resume_state"] and state["global_step"] < args.total_steps):
        raise SystemExit(f"error: --resume needs a <run>/checkpoint.pt from before step {args.total_steps}")
    run_dir = make_run_dir(args.runs_dir, "SuperMarioBros-{}-{}".format(*args.stage), script, args.seed)
    video_path = os.path.join(run_dir, "videos", "eval.mp4")
    print(f"run directory: {run_dir} | device: {device}", flush=True)

    env = SkipMaxGray(MarioEnv(*args.stage, args.actions), args.frame_skip)
    env = gym.wrappers.RecordEpisodeStatistics(env, buffer_length=20)  # return_queue: the last 20 returns
    n_actions = int(env.action_space.n)
    q_network = QNetwork(n_actions).to(device)

    if args.eval_checkpoint:
        load_weights(q_network, state["kept_model"], checkpoint, state, args)
        episodes = evaluate(q_network, args, max(args.eval_episodes, 1), evaluation_seed(args.seed), device, video_path)
        write_evaluation(run_dir, episodes, state["kept_step"])
        print(flags_summary(episodes), flush=True)
        raise SystemExit(0)

    target_network = QNetwork(n_actions).to(device)
    acting_q_network = QNetwork(n_actions).to(device)  # see the learner thread below
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    buffer = FrameReplayBuffer(args.buffer_size, env.observation_space.shape, args.seed)
    explore_rng = np.random.default_rng(args.seed)
    if args.resume:
        load_weights(q_network, state["model"], checkpoint, state, args)
        optimizer.load_state_dict(state["optimizer"])  # its learning rate too
        explore_rng.bit_generator.state = state["resume_state"]["rng"]["explore"]
        buffer.rng.bit_generator.state = state["resume_state"]["rng"]["replay"]
        print(f"resumed from {args.resume} at step {state['global_step']}; the replay buffer refills first")
    target_network.load_state_dict(state["resume_state"]["target_model"] if args.resume else q_network.state_dict())
    acting_q_network.load_state_dict(q_network.state_dict())
    global_step = state.get("global_step", 0)
    # this run's first learning_starts steps fill the buffer (a resumed one refills it); short runs still learn
    first_update_step = global_step + max(min(args.learning_starts, args.total_steps * 9 // 10), args.batch_size)

    metric_fields = ("x_pos", "flag_get", "loss", "q_mean", "epsilon")
    metrics = MetricsWriter(run_dir, metric_fields, args.total_steps, global_step, state.get("time_s", 0.0))
    stop = StopRequest()
    recent_x_pos = deque(maxlen=20)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    # An update runs in the learner thread during the next train_frequency steps, played by acting_q_network, the
    # online network one update behind (see docs/mario_ddqn.md#the-learner-thread); threads switch every 0.2 ms, not 5.
    learner = ThreadPoolExecutor(max_workers=1)
    sys.setswitchinterval(2e-4)
    loss = q_mean = torch.tensor(float("nan"))
    pending_update = Future()
    pending_update.set_result((loss, q_mean))  # (loss, mean Q) of the latest update: none yet
    done = True
    stopping = False
    while global_step < args.total_steps and not stopping:
        if done:  # a new episode, after 0 to train_noops no-op frames (integers(1) draws nothing)
            frame, _ = env.reset(options={"noops": int(explore_rng.integers(args.train_noops + 1))})
            stack = np.stack([frame] * 4)  # the first state
            buffer.start_episode(frame)
        decayed = min(max(global_step - args.learning_starts, 0) / args.exploration_steps, 1.0)
        epsilon = 1.0 + (args.end_epsilon - 1.0) * decayed  # 1 to end_epsilon, over the whole run: a resume keeps it
        if explore_rng.random() < epsilon:
            action = int(explore_rng.integers(n_actions))
        else:
            action = greedy_action(acting_q_network, stack, device)
        if global_step >= first_update_step and global_step % args.train_frequency == 0:
            loss, q_mean = pending_update.result()  # the previous update has finished: the acting copy catches up
            acting_q_network.load_state_dict(q_network.state_dict())
            batch = buffer.sample(args.batch_size, device, args.n_step, args.gamma)
            pending_update = learner.submit(gradient_step, q_network, target_network, optimizer, batch, args)
        frame, reward, terminated, truncated, info = env.step(action)
        global_step += 1
        if global_step % args.target_update_interval == 0:
            pending_update.result()  # never copy the network halfway through an update
            target_network.load_state_dict(q_network.state_dict())
        # On truncation (the in-game clock) `frame` is the real last state: the target bootstraps.
        buffer.add(action, reward * args.reward_scale, terminated, frame)
        stack = np.concatenate([stack[1:], frame[None]])  # drop the oldest frame, append the newest
        done = terminated or truncated
        if done:
            stats = info["episode"]  # the return and length, from RecordEpisodeStatistics
            recent_x_pos.append(info["x_pos"])
            metrics.episode(global_step, stats["r"], stats["l"], x_pos=info["x_pos"], flag_get=int(info["flag_get"]))
        if global_step % args.log_interval == 0:
            metrics.log(global_step, loss=loss.item(), q_mean=q_mean.item(), epsilon=epsilon)
            metrics.print_progress(global_step, env.return_queue, f"x_pos {np.mean(recent_x_pos or [0]):4.0f}")
        stopping = bool(stop)  # read once per step: a signal after this line is seen at the next one
        at_interval = global_step % args.checkpoint_interval == 0 or global_step == args.total_steps
        if stopping or (args.save_model and at_interval):
            pending_update.result()  # the networks and the optimizer are between two updates
            model = q_network.state_dict()  # also the kept model: no model is selected
            rng_states = {"explore": explore_rng.bit_generator.state, "replay": buffer.rng.bit_generator.state}
            save_checkpoint(
                checkpoint_path,
                {
                    "script": script,
                    "args": asdict(args),
                    "global_step": global_step,
                    "time_s": metrics.elapsed(),
                    "model": model,
                    "optimizer": optimizer.state_dict(),
                    "kept_model": model,
                    "kept_step": global_step,
                    "kept_score": float("nan"),
                    "resume_state": {"target_model": target_network.state_dict(), "rng": rng_states},
                },
            )
    learner.shutdown()  # waits for the last update
    env.close()
    metrics.close()
    if stopping:
        stop.exit(global_step, checkpoint_path)
    stop.training_done()
    if args.eval_episodes > 0:
        video = video_path if args.capture_video else None
        episodes = evaluate(q_network, args, args.eval_episodes, evaluation_seed(args.seed), device, video)
        write_evaluation(run_dir, episodes, global_step)
        print(flags_summary(episodes), flush=True)
