"""A3C (Mnih et al., 2016) on ALE Pong: worker processes, each with its own envs and a copy of the
network, compute n-step advantage actor-critic gradients and apply them to one shared network with
one shared Adam, without locks (Hogwild!, Recht et al., 2011). See docs/pong_a3c.md.

    python pong_a3c.py --n-workers 4                                 # train, then evaluate greedily
    python pong_a3c.py --resume runs/<run>/checkpoint.pt             # continue a stopped run
    python pong_a3c.py --eval-checkpoint runs/<run>/checkpoint.pt --capture-video
"""

import os
import queue as queue_lib
import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from ale_py import roms
from ale_py.vector_env import AtariVectorEnv
from torch.distributions import Categorical

from common.checkpoint import load_checkpoint, load_weights, save_checkpoint
from common.metrics import MetricsWriter, write_evaluation
from common.run import check_args, evaluation_seed, make_run_dir, parse_args, seed_everything
from common.stopping import StopRequest, children_ignore_signals
from common.video import VideoWriter


@dataclass
class Args:
    total_steps: int = 10_000_000
    """environment steps (4 frames each) summed over all workers"""
    seed: int = 1
    """seed of the network initialisation; worker i seeds its envs and sampling with seed + i"""
    cuda: bool = True
    """accepted for a uniform command line: Hogwild workers share CPU memory, so A3C runs on CPU"""
    runs_dir: str = "runs"
    """where the run directory <env>__<script>__<seed>__<timestamp> is created"""
    capture_video: bool = False
    """record the first episode of the final evaluation to <run>/videos/eval.mp4"""
    save_model: bool = True
    """save <run>/checkpoint.pt every --log-interval steps and at the end (Ctrl-C or SIGTERM always do)"""
    eval_episodes: int = 10
    """greedy episodes of the final evaluation (and of --eval-checkpoint), on seeds used nowhere else"""
    eval_checkpoint: str | None = None
    """skip training: play this checkpoint's kept model greedily, record a video, write eval.json"""
    resume: str | None = None
    """continue training from this checkpoint.pt"""
    log_interval: int = 50_000
    """environment steps between progress lines, `log` rows in metrics.csv and checkpoints"""

    env_id: str = "ALE/Pong-v5"
    """ALE game, ALE/<Game>-v5 or a ROM name (pong); preprocessing as in make_env"""
    n_workers: int = os.cpu_count() or 1
    """worker processes, each with its own environments (the default is the number of CPU cores)"""
    n_steps: int = 20
    """rollout length: env steps per worker between two updates of the global network"""
    envs_per_worker: int = 4
    """envs stepped in lockstep by each worker, one forward pass for all (1: the A3C paper; see
    docs/pong_a3c.md#envs-per-worker)"""
    learning_rate: float = 5e-4
    """Adam learning rate of the shared optimizer at step 0 (see docs/pong_a3c.md#learning-rate)"""
    learning_rate_final: float = 5e-4
    """learning rate from --schedule-steps on"""
    gamma: float = 0.99
    """discount factor"""
    ent_coef: float = 0.01
    """weight of the entropy bonus at step 0 (see docs/pong_a3c.md#entropy-schedule)"""
    ent_coef_final: float = 0.01
    """weight of the entropy bonus from --schedule-steps on"""
    schedule_steps: int = 8_000_000
    """environment steps over which the learning rate and the entropy weight move linearly to their final values"""
    vf_coef: float = 0.5
    """weight of the value loss"""
    max_grad_norm: float = 0.5
    """gradient clipping by global norm, per worker update"""
    sticky_actions: float = 0.0
    """probability that the emulator repeats the previous action (0: the A3C paper; ALE v5: 0.25; see
    docs/pong_a3c.md#no-sticky-actions)"""
    eval_max_steps: int = 10_000
    """a greedy evaluation episode is cut after this many environment steps"""

    def __post_init__(self):
        envs = max(self.envs_per_worker, 1)  # a divisor below, before check_args rejects 0
        ranges = dict.fromkeys(("ent_coef", "ent_coef_final", "vf_coef"), (0, 1e3))
        ranges |= {"gamma": (0, 1), "sticky_actions": (0, 0.99), "learning_rate_final": (0, 1)}
        # more than 4 worker processes per core only contend (see docs/pong_a3c.md#one-worker-per-core)
        ranges["n_workers"] = (1, 4 * (os.cpu_count() or 1))
        # a rollout keeps n_steps x envs_per_worker observations of 28 kB
        ranges |= {"envs_per_worker": (1, 4096), "n_steps": (1, 4096 // envs)}
        # int32 ALE seeds: (seed + w) * envs_per_worker + i for worker w's env i, evaluation_seed(seed) + i
        ranges["seed"] = (0, min(2**31 // envs - self.n_workers - 1, 2_000_000))
        check_args(self, ranges)
        if rom_name(self.env_id) not in roms.get_all_rom_ids():
            raise ValueError(f"--env-id {self.env_id}: not an ALE game")


def rom_name(env_id: str) -> str:
    """'ALE/MsPacman-v5' -> 'ms_pacman', the ROM name ale-py's vector env expects."""
    name = env_id.split("/")[-1].split("-")[0]
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def make_env(args: Args, num_envs: int = 1, colour: bool = False) -> AtariVectorEnv:
    """`num_envs` envs, env i seeded with seed + i by `reset(seed=seed)`. ale-py preprocesses in C++: 4 frames per
    action (max of the last two), grayscale 84x84, 4 stacked, up to 30 no-op starts, FIRE on reset, 108k frames at
    most. `colour`: the RGB screen instead, for videos (see docs/pong_a3c.md#colour-video)."""
    screen = dict(grayscale=False, img_height=210, img_width=160, stack_num=1) if colour else {}
    # SameStep autoreset: an episode's last step returns the next one's first obs, no reset step
    return AtariVectorEnv(
        rom_name(args.env_id),
        num_envs=num_envs,
        num_threads=1,
        repeat_action_probability=args.sticky_actions,
        reward_clipping=False,
        autoreset_mode="SameStep",
        **screen,
    )


def layer_init(layer, std=2**0.5, bias_const=0.0):
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


class ActorCritic(nn.Module):
    """The A3C paper's feed-forward network: two convolutions, 256 units, then π logits and V(s)."""

    def __init__(self, n_actions: int):
        super().__init__()
        self.trunk = nn.Sequential(
            layer_init(nn.Conv2d(4, 16, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(16, 32, 4, stride=2)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(32 * 9 * 9, 256)),
            nn.ReLU(),
        )
        self.policy = layer_init(nn.Linear(256, n_actions), std=0.01)  # near-uniform π at first
        self.value = layer_init(nn.Linear(256, 1), std=1.0)

    def forward(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(torch.as_tensor(obs).float() / 255.0)
        return self.policy(hidden), self.value(hidden).squeeze(-1)


class SharedAdam(torch.optim.Adam):
    """Adam with its moments and step counts made up front in shared memory: one state for all."""

    def __init__(self, params, lr: float):
        super().__init__(params, lr=lr, foreach=False)
        for p in self.param_groups[0]["params"]:
            self.state[p] = {"step": torch.zeros(()), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        self.share_memory()

    def share_memory(self) -> None:
        """Move the state to shared memory; again after load_state_dict, which replaces the tensors."""
        for state in self.state.values():
            for tensor in state.values():
                tensor.share_memory_()


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """Linear interpolation from `start` to `end` over `duration` steps, then constant."""
    return start + (end - start) * min(step / duration, 1.0)


def nstep_returns(rewards, terminated, truncated, final_values, last_values, gamma: float):
    """n-step returns of a rollout; arrays of shape (n_steps, n_envs), except last_values (n_envs,).

    Backwards from G_n = V(s_n) (`last_values`, the state after the rollout):
        G_t = r_t + γ G_{t+1}          while the episode goes on,
        G_t = r_t + γ V(final state)   if it was truncated at t (`final_values[t]`),
        G_t = r_t                      if it terminated at t.
    A truncated episode did not end in the MDP, so its last state's value still counts.
    """
    returns = np.zeros_like(rewards)
    future_return = last_values
    for t in reversed(range(len(rewards))):
        future_return = np.where(truncated[t], final_values[t], future_return)  # a new episode began at t + 1
        # the running return stays float64 ((1.0 - terminated) is); each row is rounded as it is stored
        future_return = rewards[t] + gamma * (1.0 - terminated[t]) * future_return
        returns[t] = future_return
    return returns


def actor_critic_loss(logits, values, actions, returns, vf_coef: float, ent_coef: float):
    """The loss of a flat batch of steps, and its terms as floats for the log."""
    dist = Categorical(logits=logits)
    advantages = (returns - values).detach()  # A = G - V(s), a constant for the actor
    policy_loss = -(dist.log_prob(actions) * advantages).mean()
    value_loss = 0.5 * (returns - values).pow(2).mean()
    entropy = dist.entropy().mean()
    # L = -E[log π(a|s) A] + c_V E[½ (G - V(s))²] - c_H E[H(π(·|s))]
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
    return loss, {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}


def worker(rank, args, global_model, optimizer, steps, stop, queue, parent_pid):
    """An A3C learner: rollouts of its own envs, gradients written into the global network."""
    queue.cancel_join_thread()  # exit at once on stop even if the main process stopped reading
    torch.set_num_threads(1)  # one core per process: more threads only contend
    torch.manual_seed(args.seed + rank)
    print(f"worker {rank} pid {os.getpid()}", flush=True)
    envs = make_env(args, args.envs_per_worker)
    model = ActorCritic(int(envs.single_action_space.n))
    obs, _ = envs.reset(seed=(args.seed + rank) * args.envs_per_worker)
    episode_returns = np.zeros(args.envs_per_worker)
    episode_lengths = np.zeros(args.envs_per_worker, dtype=np.int64)
    # os.getppid() changes if the main process was killed: never outlive it.
    while not stop.value and sum(steps) < args.total_steps and os.getppid() == parent_pid:
        model.load_state_dict(global_model.state_dict())
        observations = []
        actions = []
        rewards = np.zeros((args.n_steps, args.envs_per_worker), dtype=np.float32)
        terminated = np.zeros((args.n_steps, args.envs_per_worker), dtype=bool)
        truncated = np.zeros_like(terminated)
        final_values = np.zeros_like(rewards)
        for t in range(args.n_steps):
            with torch.no_grad():  # a ~ π(·|s)
                action = torch.multinomial(model(obs)[0].softmax(-1), 1).squeeze(1)
            observations.append(obs)
            actions.append(action)
            obs, reward, terminated[t], truncated[t], info = envs.step(action.numpy())
            rewards[t] = np.clip(reward, -1.0, 1.0)
            if truncated[t].any():  # a time limit: info["final_obs"] holds the real last state
                final_values[t] = model(info["final_obs"])[1].detach().numpy()
            episode_returns += reward
            episode_lengths += 1
            for i in np.flatnonzero(terminated[t] | truncated[t]):
                queue.put(("episode", sum(steps), episode_returns[i].item(), int(episode_lengths[i])))
                episode_returns[i] = 0.0
                episode_lengths[i] = 0
        logits, values = model(np.concatenate(observations))  # time-major: row t * n_envs + i
        last_values = model(obs)[1].detach().numpy()
        returns = nstep_returns(rewards, terminated, truncated, final_values, last_values, args.gamma)
        global_step = sum(steps)  # where the schedules stand
        ent_coef = linear_schedule(args.ent_coef, args.ent_coef_final, args.schedule_steps, global_step)
        # this process's copy of the optimizer's settings; the step's moments are the shared ones
        lr = linear_schedule(args.learning_rate, args.learning_rate_final, args.schedule_steps, global_step)
        optimizer.param_groups[0]["lr"] = lr
        loss, terms = actor_critic_loss(
            logits, values, torch.cat(actions), torch.from_numpy(returns).flatten(), args.vf_coef, ent_coef
        )
        model.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        for global_param, param in zip(global_model.parameters(), model.parameters(), strict=True):
            global_param.grad = param.grad  # .grad is per process; the step writes shared memory
        optimizer.step()
        steps[rank + 1] += args.n_steps * args.envs_per_worker  # the only writer of this slot
        queue.put(("loss", terms))


@torch.no_grad()
def evaluate(model, args: Args, episodes: int, seed: int, device, video_path: str | None = None) -> list[dict]:
    """Greedy episodes side by side, env i on seed `seed + i`, cut after --eval-max-steps. The first
    is filmed if asked, by a colour env that plays the same game (same seed, same actions)."""
    envs = make_env(args, episodes)
    obs, _ = envs.reset(seed=seed)
    video = VideoWriter(video_path, fps=15) if video_path else None  # 60 frames/s, 4 per step
    if video:
        screen = make_env(args, colour=True)
        frame, _ = screen.reset(seed=seed)
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    step = 0
    while running.any() and step < args.eval_max_steps:
        actions = model(torch.as_tensor(obs, device=device))[0].argmax(-1).cpu().numpy()
        if video and running[0]:
            video.add(frame[0, -1])
            frame = screen.step(actions[:1])[0]
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        returns += rewards * running  # an env that finished has reset: its rewards no longer count
        running &= ~(terminated | truncated)
        step += 1
    if video:
        video.close()
        screen.close()
    envs.close()
    return [{"return": float(episode_return)} for episode_return in returns]


def write_checkpoint(path: str, script: str, args: Args, global_step: int, metrics, model, optimizer) -> None:
    """No model is selected: the kept model is the latest, the same state dict (torch saves it once)."""
    weights = model.state_dict()
    save_checkpoint(
        path,
        {
            "script": script,
            "args": asdict(args),
            "global_step": global_step,
            "time_s": metrics.elapsed(),
            "model": weights,
            "optimizer": optimizer.state_dict(),
            "kept_model": weights,
            "kept_step": global_step,
            "kept_score": float("nan"),
            "resume_state": None,
        },
    )


if __name__ == "__main__":
    args = parse_args(Args)
    script = os.path.splitext(os.path.basename(__file__))[0]
    seed_everything(args.seed)
    torch.set_num_threads(1)  # the cores belong to the workers
    device = torch.device("cpu")  # Hogwild: the processes share the network through CPU memory
    checkpoint = args.eval_checkpoint or args.resume
    state = load_checkpoint(checkpoint, script, device) if checkpoint else {}
    run_dir = make_run_dir(args.runs_dir, args.env_id, script, args.seed)
    video_path = os.path.join(run_dir, "videos", "eval.mp4")
    print(f"run directory: {run_dir} | device: {device} | workers: {args.n_workers}", flush=True)

    model = ActorCritic(int(make_env(args).single_action_space.n))  # the global network, shared by the workers

    if args.eval_checkpoint:
        load_weights(model, state["kept_model"], checkpoint, state, args)
        episodes = evaluate(model, args, max(args.eval_episodes, 1), evaluation_seed(args.seed), device, video_path)
        write_evaluation(run_dir, episodes, state["kept_step"])
        raise SystemExit(0)

    optimizer = SharedAdam(model.parameters(), args.learning_rate)
    if args.resume:
        load_weights(model, state["model"], checkpoint, state, args)
        optimizer.load_state_dict(state["optimizer"])
        optimizer.share_memory()
        print(f"resumed from {args.resume} at step {state['global_step']}")
    model.share_memory()
    global_step = state.get("global_step", 0)

    ctx = mp.get_context("spawn")
    # no locks, so a killed worker blocks none (docs/pong_a3c.md#lock-free-stop): steps before a resume, then per worker
    steps = ctx.Array("q", [global_step] + [0] * args.n_workers, lock=False)
    workers_stop = ctx.Value("b", 0, lock=False)
    queue = ctx.Queue()
    workers = []
    for rank in range(args.n_workers):
        worker_args = (rank, args, model, optimizer, steps, workers_stop, queue, os.getpid())
        workers.append(ctx.Process(target=worker, name=f"worker {rank}", daemon=True, args=worker_args))

    metric_fields = ("policy_loss", "value_loss", "entropy")
    metrics = MetricsWriter(run_dir, metric_fields, args.total_steps, global_step, state.get("time_s", 0.0))
    stop = StopRequest()
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    recent_returns = deque(maxlen=10)
    recent_losses = deque(maxlen=100)
    next_log = args.log_interval
    dead = None
    try:
        with children_ignore_signals():  # a Ctrl-C to the group must not kill a worker importing torch
            for process in workers:
                process.start()
        print("training: Ctrl-C or SIGTERM stops it and saves a checkpoint to resume from", flush=True)
        while not stop and dead is None and any(process.is_alive() for process in workers):  # they end at --total-steps
            try:
                kind, *message = queue.get(timeout=0.5)
            except queue_lib.Empty:
                kind = None
            if kind == "episode":
                recent_returns.append(message[1])
                metrics.episode(*message)
            elif kind == "loss":
                recent_losses.append(message[0])
            global_step = sum(steps)
            if global_step >= next_log and recent_losses:
                next_log = global_step + args.log_interval
                losses = {term: np.mean([logged[term] for logged in recent_losses]) for term in recent_losses[0]}
                metrics.log(global_step, **losses)
                metrics.print_progress(global_step, recent_returns)
                if args.save_model:
                    write_checkpoint(checkpoint_path, script, args, global_step, metrics, model, optimizer)
            dead = next((process for process in workers if process.exitcode not in (None, 0)), None)
    finally:  # on a stop, the end or an error: the workers finish their rollout within 3 s or are killed
        workers_stop.value = 1
        deadline = time.monotonic() + 3.0
        for process in workers:
            if process.pid is not None:  # started
                process.join(max(deadline - time.monotonic(), 0.0))
                process.kill()  # a no-op once it has exited
    global_step = sum(steps)
    metrics.close()

    if args.save_model or stop:
        write_checkpoint(checkpoint_path, script, args, global_step, metrics, model, optimizer)
    if dead is not None:
        died = f"{dead.name} (pid {dead.pid}) died with exit code {dead.exitcode}"
        raise SystemExit(f"error: {died}; stopped at step {global_step}, checkpoint in {run_dir}")
    if stop:
        stop.exit(global_step, checkpoint_path)
    stop.training_done()
    if args.eval_episodes > 0:
        capture = video_path if args.capture_video else None
        episodes = evaluate(model, args, args.eval_episodes, evaluation_seed(args.seed), device, capture)
        write_evaluation(run_dir, episodes, global_step)
