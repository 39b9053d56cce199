"""Double DQN (van Hasselt et al., 2016) on n-step returns, on Super Mario Bros 1-1 from pixels.

Frames are max-pooled over a 4-frame skip, grayscaled, area-resized to 84x84 and stacked by 4; the
replay buffer keeps each frame once; the network learns in a thread while the emulator plays. An
episode ends at the first life lost, the flag or the in-game clock (see common/mario.py).

    python mario_ddqn.py                             # train, then evaluate greedily; or --help
    python mario_ddqn.py --eval-checkpoint runs/<run>/weights.pt        # or a checkpoint.pt
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
import torch.nn.functional as F

from common.checkpoint import load_checkpoint, save_checkpoint
from common.mario import MarioEnv
from common.metrics import MetricsWriter, write_evaluation
from common.stopping import StopRequest
from common.utils import Progress, make_run_dir, parse_args, pick_device, seed_everything
from common.video import VideoWriter


@dataclass
class Args:
    stage: tuple[Literal[1, 2, 3, 4, 5, 6, 7, 8], Literal[1, 2, 3, 4]] = (1, 1)
    """world (1-8) and stage (1-4) to play: --stage 1 1 is 1-1"""
    actions: Literal["right", "right_only", "simple", "complex"] = "right_only"
    """joypad action set; right_only learned 1-1 fastest (x_pos 1500 at 408k steps, right: 565k)"""
    total_steps: int = 500_000
    """total agent steps (each is `frame_skip` NES frames) to train for"""
    seed: int = 1
    """seed of the network, the exploration and the replay sampling (the NES is deterministic)"""
    cuda: bool = True
    """use CUDA when it is available"""
    runs_dir: str = "runs"
    """where the run directory <env>__<script>__<seed>__<timestamp> is created"""
    capture_video: bool = False
    """record the first greedy evaluation episode to <run>/videos/eval.mp4"""
    save_model: bool = False
    """save <run>/checkpoint.pt and weights.pt every --checkpoint-interval steps and at the end"""
    checkpoint_interval: int = 50_000
    """agent steps between checkpoints with --save-model (Ctrl-C or SIGTERM always saves one)"""
    eval_episodes: int = 10
    """greedy evaluation episodes (also for --eval-checkpoint): from power-on, then after 0-30 no-ops"""
    eval_checkpoint: str | None = None
    """skip training: play this checkpoint.pt or weights.pt greedily, print the results, record a video"""
    resume: str | None = None
    """continue training from this checkpoint.pt (networks, optimizer, step count, random streams)"""
    log_interval: int = 5_000
    """agent steps between progress lines and `log` rows in metrics.csv"""

    frame_skip: int = 4
    """NES frames per agent step (the action repeats; the last two frames are max-pooled)"""
    learning_rate: float = 2.5e-4
    """Adam learning rate"""
    buffer_size: int = 100_000
    """replay capacity in frames (84x84 uint8, 7 KB each: 0.7 GB at 100k)"""
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

    def __post_init__(self):  # messages short enough for tyro's one-line box
        for name in (
            "total_steps",
            "buffer_size",
            "batch_size",
            "target_update_interval",
            "n_step",
            "frame_skip",
            "train_frequency",
            "log_interval",
            "eval_patience",
            "checkpoint_interval",
            "exploration_steps",
            "learning_rate",
            "max_grad_norm",
            "reward_scale",
        ):
            if not getattr(self, name) > 0:  # `not >` also rejects nan
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if min(self.eval_episodes, self.learning_starts, self.train_noops) < 0:
            raise ValueError("--eval-episodes, --learning-starts and --train-noops must be >= 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.end_epsilon <= 1):
            raise ValueError("--gamma and --end-epsilon must be in [0, 1]")
        if self.batch_size > self.buffer_size or self.buffer_size < 8:
            raise ValueError("--buffer-size must be >= 8 and >= --batch-size")


def area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) area-average resize weights (no OpenCV): output i averages the input span
    [i, i + 1) * n_in / n_out, a pixel cut by a border counting by its inside fraction."""
    edges, pixels = np.arange(n_out + 1) * n_in / n_out, np.arange(n_in)
    overlap = np.clip(np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels), 0, None)
    return torch.as_tensor(overlap / overlap.sum(axis=1, keepdims=True), dtype=torch.float32)


class SkipMaxGray(gym.ObservationWrapper):
    """Repeat the action `skip` frames, summing rewards; see the max of the last two (sprites flicker)."""

    def __init__(self, env, skip: int, size: int = 84):
        super().__init__(env)
        height, width, _ = env.observation_space.shape
        self.rows, self.cols, self.skip = area_matrix(height, size), area_matrix(width, size), skip
        self.observation_space = gym.spaces.Box(0, 255, (size, size), np.uint8)

    def observation(self, frame: np.ndarray) -> np.ndarray:  # reset() applies it too
        # torch rather than numpy: numpy's threaded BLAS ran these small products 3x slower here
        gray = torch.from_numpy(frame).float() @ torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma
        return (self.rows @ gray @ self.cols.T).round().to(torch.uint8).numpy()

    def step(self, action):
        total, frames = 0.0, []
        for _ in range(self.skip):
            frame, reward, terminated, truncated, info = self.env.step(action)
            total, frames = total + reward, frames[-1:] + [frame]  # the last two frames
            if terminated or truncated:
                break
        return self.observation(np.max(frames, axis=0)), total, terminated, truncated, info


class FrameReplayBuffer:
    """Circular replay of single frames; stacks of `stack` frames are rebuilt at sampling time.

    Slot i holds a frame and, once the agent acts on the state ending there (`valid[i]`), the action,
    reward and termination; the next state ends at i + 1. Frames before an episode's first read as it."""

    def __init__(self, capacity: int, frame_shape, seed: int, stack: int = 4):
        self.frames = np.zeros((capacity, *frame_shape), dtype=np.uint8)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards, self.terminated = np.zeros(capacity, np.float32), np.zeros(capacity, np.float32)
        self.first, self.valid = np.zeros(capacity, dtype=bool), np.zeros(capacity, dtype=bool)
        self.capacity, self.stack, self.cursor, self.rng = capacity, stack, -1, np.random.default_rng(seed)

    def start_episode(self, frame) -> None:
        self._write(frame, first=True)

    def add(self, action, reward, terminated, next_frame) -> None:
        """The transition from the state ending at the newest frame; `next_frame` is appended."""
        i = self.cursor
        self.actions[i], self.rewards[i], self.terminated[i], self.valid[i] = action, reward, terminated, True
        self._write(next_frame, first=False)

    def _write(self, frame, first: bool) -> None:
        self.cursor = (self.cursor + 1) % self.capacity
        self.frames[self.cursor], self.first[self.cursor] = frame, first
        # this slot's transition is gone, and the next `stack - 1` slots' histories lost a frame
        self.valid[(self.cursor + np.arange(self.stack)) % self.capacity] = False

    def stacked(self, last: np.ndarray) -> np.ndarray:
        """Frame indices (batch, stack) of the states ending at slots `last`."""
        idx = (last[:, None] + np.arange(1 - self.stack, 1)) % self.capacity
        for k in range(self.stack - 2, -1, -1):  # newest to oldest: never cross an episode start
            idx[:, k] = np.where(self.first[idx[:, k + 1]], idx[:, k + 1], idx[:, k])
        return idx

    def sample(self, batch_size: int, device, n_step: int, gamma: float) -> tuple[torch.Tensor, ...]:
        """(s_t, a_t, R, s_t+m, terminated, γ^m), R = Σ_{k<m} γ^k r_t+k: m = n_step, or fewer if the
        episode ends first (termination, or a truncation's last frame, never acted on) or data does."""
        i = self.rng.choice(np.flatnonzero(self.valid), size=batch_size)
        last, steps, returns = i.copy(), np.ones(batch_size, dtype=np.int64), self.rewards[i].copy()
        for k in range(1, n_step):
            following = (last + 1) % self.capacity
            extend = (steps == k) & (self.terminated[last] == 0) & self.valid[following]
            returns += np.where(extend, gamma**k * self.rewards[following], 0.0)
            last, steps = np.where(extend, following, last), steps + extend
        obs, next_obs = self.frames[self.stacked(i)], self.frames[self.stacked((last + 1) % self.capacity)]
        arrays = (obs, self.actions[i], returns, next_obs, self.terminated[last], (gamma**steps).astype(np.float32))
        return tuple(torch.as_tensor(a, device=device) for a in arrays)


class QNetwork(nn.Module):
    """The first DQN paper's network (Mnih et al., 2013): its updates cost 2.5x less than Nature's."""

    def __init__(self, n_actions: int, stack: int = 4):
        super().__init__()
        self.net = nn.Sequential(
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
        return self.net(obs.float() / 255.0)


def double_dqn_target(q_net, target_net, returns, next_obs, terminated, discount) -> torch.Tensor:
    """y = R + γ^m (1 - terminated) Q_target(s', argmax_a' Q_online(s', a')), s' = s_t+m."""
    with torch.no_grad():
        next_actions = q_net(next_obs).argmax(dim=1, keepdim=True)  # the online net selects
        next_q = target_net(next_obs).gather(1, next_actions).squeeze(1)  # the target net scores
    return returns + discount * (1.0 - terminated) * next_q


def gradient_step(q_net, target_net, optimizer, batch, max_grad_norm) -> tuple[torch.Tensor, torch.Tensor]:
    obs, actions, returns, next_obs, terminated, discount = batch
    target = double_dqn_target(q_net, target_net, returns, next_obs, terminated, discount)
    q = q_net(obs).gather(1, actions.unsqueeze(1)).squeeze(1)  # Q(s, a)
    loss = F.smooth_l1_loss(q, target)  # Huber loss of the TD error y - Q(s, a)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(q_net.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), q.detach().mean()


def greedy_action(q_net, stack: np.ndarray, device) -> int:
    with torch.no_grad():
        return int(q_net(torch.as_tensor(stack[None], device=device)).argmax())


def evaluate(q_net, env, args, episodes: int, device, run_dir: str, stop, record: bool) -> None:
    """Greedy episodes to <run>/eval.json. The NES is deterministic: from power-on (episode 0, recorded
    if asked) greedy play is one path; the others start after 0-30 no-op frames (drawn from --seed)."""
    video = VideoWriter(os.path.join(run_dir, "videos", "eval.mp4"), fps=60 // args.frame_skip)
    starts, results = np.random.default_rng(args.seed), []
    while len(results) < episodes and not stop:  # Ctrl-C or SIGTERM ends the evaluation
        noops = int(starts.integers(31)) if results else 0  # NES frames before the first agent step
        stack = np.stack([env.reset(options={"noops": noops})[0]] * 4)
        done, total, length, best_x, since_best = False, 0.0, 0, 0, 0
        while not (done or stop) and since_best < args.eval_patience:
            if record and not results:
                video.add(env.render())
            frame, reward, terminated, truncated, info = env.step(greedy_action(q_net, stack, device))
            stack, total, length = np.concatenate([stack[1:], frame[None]]), total + reward, length + 1
            since_best, best_x = (0, info["x_pos"]) if info["x_pos"] > best_x else (since_best + 1, best_x)
            done = terminated or truncated
        results.append(
            {"noops": noops, "return": total, "length": length, **{k: info[k] for k in ("x_pos", "flag_get")}}
        )
    video.close()  # nothing to close unless recorded
    x_pos, flags = [r["x_pos"] for r in results], sum(r["flag_get"] for r in results)
    mean = write_evaluation(
        run_dir,
        [r["return"] for r in results],
        flags=flags,
        results=results,
        mean_x_pos=float(np.mean(x_pos)) if x_pos else float("nan"),
    )
    print(
        f"greedy evaluation over {len(results)} episodes (no-op frames {[r['noops'] for r in results]}): "
        f"mean return {mean:.1f}, x_pos {x_pos}, flags {flags}/{len(results)}",
        flush=True,
    )


if __name__ == "__main__":
    args = parse_args(Args)
    script = os.path.splitext(os.path.basename(__file__))[0]
    seed_everything(args.seed)
    torch.set_num_threads(1)
    device = pick_device(args.cuda)
    checkpoint = args.eval_checkpoint or args.resume
    state = load_checkpoint(checkpoint, script, device) if checkpoint else {}
    # checked before the run directory exists: a rejected command leaves nothing behind
    if state.get("args", asdict(args))["actions"] != args.actions:  # one network output per action
        raise SystemExit(f"error: {checkpoint} was trained with --actions {state['args']['actions']}")
    if args.resume and not state.get("global_step", args.total_steps) < args.total_steps:  # weights.pt: none
        raise SystemExit(f"error: --resume needs a <run>/checkpoint.pt from before step {args.total_steps}")
    run_dir = make_run_dir(args.runs_dir, "SuperMarioBros-{}-{}".format(*args.stage), script, args.seed)
    print(f"run directory: {run_dir} | device: {device}", flush=True)

    env = SkipMaxGray(MarioEnv(*args.stage, args.actions, "rgb_array"), args.frame_skip)  # renders on request
    n_actions = int(env.action_space.n)
    q_net, target_net, actor = (QNetwork(n_actions).to(device) for _ in range(3))  # actor: see below
    q_net.load_state_dict(state.get("q_net", q_net.state_dict()))  # a trained network, if given
    stop = StopRequest()  # Ctrl-C or SIGTERM: the step in progress completes, then the run saves and exits
    if args.eval_checkpoint:
        evaluate(q_net, env, args, max(args.eval_episodes, 1), device, run_dir, stop, record=True)
        raise SystemExit(stop.exit_code if stop else 0)

    optimizer = torch.optim.Adam(q_net.parameters(), lr=args.learning_rate)
    buffer = FrameReplayBuffer(args.buffer_size, env.observation_space.shape, args.seed)
    rng = np.random.default_rng(args.seed)  # exploration
    start_step, start_time = state.get("global_step", 0), state.get("time_s", 0.0)
    # short runs (the smoke test) still make a few updates; a resumed run refills the buffer first.
    learning_starts = max(min(args.learning_starts, args.total_steps * 9 // 10), args.batch_size)
    if args.resume:
        optimizer.load_state_dict(state["optimizer"])  # its learning rate too
        rng.bit_generator.state, buffer.rng.bit_generator.state = state["rng"]["explore"], state["rng"]["replay"]
        print(f"resumed at step {start_step}; the replay buffer refills for {learning_starts} steps")
    target_net.load_state_dict(state.get("target_net", q_net.state_dict()))  # a new run: a copy
    actor.load_state_dict(q_net.state_dict())

    # An update runs in a second thread during the next train_frequency steps, which `actor`, the online
    # network one update behind, plays (torch and nes-py's C++ release the GIL; switch it every 0.2 ms, not 5).
    learner, update, loss = ThreadPoolExecutor(max_workers=1), Future(), torch.tensor(float("nan"))
    update.set_result((loss, loss))  # (loss, mean Q) of the latest update: none yet
    sys.setswitchinterval(2e-4)
    metrics = MetricsWriter(run_dir, ("x_pos", "flag_get", "loss", "q_mean", "epsilon"), start_time)
    progress = Progress(args.total_steps, start_step)
    recent_returns, recent_x = deque(maxlen=20), deque(maxlen=20)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    q_mean, global_step, stopping, done = loss, start_step, False, True  # global_step: agent steps taken so far
    while global_step < args.total_steps and not stopping:
        if done:  # a new episode, after 0 to train_noops no-op frames (integers(1) draws nothing)
            frame = env.reset(options={"noops": int(rng.integers(args.train_noops + 1))})[0]
            stack, episode_return, episode_length = np.stack([frame] * 4), 0.0, 0  # the first state
            buffer.start_episode(stack[-1])
        decayed = min(max(global_step - args.learning_starts, 0) / args.exploration_steps, 1.0)
        epsilon = 1.0 + (args.end_epsilon - 1.0) * decayed  # linear from 1 to end_epsilon
        action = int(rng.integers(n_actions)) if rng.random() < epsilon else greedy_action(actor, stack, device)
        if global_step - start_step >= learning_starts and global_step % args.train_frequency == 0:
            loss, q_mean = update.result()  # the previous update has finished: the actor catches up
            actor.load_state_dict(q_net.state_dict())
            batch = buffer.sample(args.batch_size, device, args.n_step, args.gamma)
            update = learner.submit(gradient_step, q_net, target_net, optimizer, batch, args.max_grad_norm)
        frame, reward, terminated, truncated, info = env.step(action)
        global_step += 1
        if global_step % args.target_update_interval == 0:
            update.result()  # never copy the network halfway through an update
            target_net.load_state_dict(q_net.state_dict())
        # On truncation (the in-game clock) `frame` is the real last state: the target bootstraps.
        buffer.add(action, reward * args.reward_scale, terminated, frame)
        stack = np.concatenate([stack[1:], frame[None]])  # drop the oldest frame, append the newest
        episode_return, episode_length = episode_return + reward, episode_length + 1
        done = terminated or truncated
        if done:
            recent_returns.append(episode_return)
            recent_x.append(info["x_pos"])
            metrics.episode(
                global_step, episode_return, episode_length, x_pos=info["x_pos"], flag_get=int(info["flag_get"])
            )
        if global_step % args.log_interval == 0:
            metrics.log(
                global_step,
                progress.steps_per_second(global_step),
                loss=loss.item(),
                q_mean=q_mean.item(),
                epsilon=epsilon,
            )
            progress.print(global_step, recent_returns, f"x_pos {np.mean(recent_x or [0]):4.0f}")
        stopping = bool(stop)  # read once per step: a signal after this line is seen at the next one
        if (
            stopping
            or args.save_model
            and (global_step % args.checkpoint_interval == 0 or global_step == args.total_steps)
        ):
            loss, q_mean = update.result()  # the networks and the optimizer are between updates
            save_checkpoint(
                checkpoint_path,
                {  # all --resume needs but the replay buffer (it refills)
                    "script": script,
                    "q_net": q_net.state_dict(),
                    "target_net": target_net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "global_step": global_step,
                    "time_s": metrics.elapsed(),
                    "rng": {"explore": rng.bit_generator.state, "replay": buffer.rng.bit_generator.state},
                    "args": asdict(args),
                },
            )
            save_checkpoint(
                os.path.join(run_dir, "weights.pt"),  # the network alone, to share
                {"script": script, "q_net": q_net.state_dict(), "args": asdict(args)},
            )
    learner.shutdown()  # waits for the last update
    metrics.close(y="x_pos")
    if stopping:
        stop.exit(global_step, checkpoint_path)
    if args.eval_episodes > 0:
        evaluate(q_net, env, args, args.eval_episodes, device, run_dir, stop, args.capture_video)
    env.close()
    raise SystemExit(stop.exit_code if stop else 0)  # a stop during the evaluation cut it short
