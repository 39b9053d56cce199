"""A3C (Mnih et al., 2016) on ALE Pong: worker processes update one shared network without locks.

    python pong_a3c.py --n-workers 4                       # train, then evaluate greedily
    python pong_a3c.py --resume runs/<run>/checkpoint.pt   # or --eval-checkpoint PATH; --help

The global actor-critic and Adam's state live in shared memory. Each worker process (spawn) owns
its envs and a local network: copy the global weights, play --n-steps steps (episodes go on across
rollouts), compute the gradient, hand it to the global parameters, step the shared optimizer with
no lock (Hogwild!). An evaluator process films a greedy episode every --eval-interval steps. The
main process logs what the children report through a queue and checkpoints; Ctrl-C/SIGTERM stop
all within seconds (checkpoint, exit 130/143); a dead child is reported (exit 1).

Env: ale-py's AtariVectorEnv preprocesses in C++: 4 frames per action (max of the last two), grayscale,
84x84, 4 stacked, up to 30 no-op starts, FIRE on reset, 108k frames at most; no sticky actions by default
(the A3C paper's Pong; `--sticky-actions 0.25` gives ALE v5's). Rewards are clipped for learning only.
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

from common.checkpoint import load_checkpoint, save_checkpoint
from common.metrics import MetricsWriter, write_evaluation
from common.stopping import StopRequest, children_ignore_signals
from common.utils import Progress, check_env_id, make_run_dir, parse_args, seed_everything
from common.video import VideoWriter


@dataclass
class Args:
    env_id: str = "ALE/Pong-v5"
    """ALE game, ALE/<Game>-v5 or a ROM name (pong); preprocessing as in the module docstring"""
    total_steps: int = 10_000_000
    """environment steps (4 frames each) summed over all workers"""
    seed: int = 1
    """seed of the network initialisation; worker i seeds its env and sampling with seed + i"""
    cuda: bool = True
    """accepted for a uniform command line: Hogwild workers share CPU memory, so A3C runs on CPU"""
    runs_dir: str = "runs"
    """where the run directory <env>__<script>__<seed>__<timestamp> is created"""
    capture_video: bool = False
    """record the first final evaluation episode to <run>/videos/eval.mp4"""
    save_model: bool = True
    """write <run>/checkpoint.pt every --log-interval steps, at the end and on Ctrl-C/SIGTERM"""
    eval_episodes: int = 10
    """greedy evaluation episodes after training (or with --eval-checkpoint)"""
    eval_checkpoint: str | None = None
    """skip training: load this checkpoint, play greedily, print the returns, record a video"""
    resume: str | None = None
    """continue training from this checkpoint (network, optimizer, step count; new episodes)"""
    log_interval: int = 50_000
    """global env steps between progress lines, `log` rows in metrics.csv and checkpoints"""
    n_workers: int = os.cpu_count() or 1
    """worker processes, each with its own environments (default: the number of CPU cores)"""
    n_steps: int = 20
    """rollout length: env steps per worker between two updates of the global network"""
    envs_per_worker: int = 4
    """envs stepped in lockstep by each worker (1: the A3C paper; more amortise the forward pass)"""
    learning_rate: float = 5e-4
    """Adam learning rate of the shared optimizer (measured with 4 envs per worker, 80-step batches)"""
    gamma: float = 0.99
    """discount factor"""
    ent_coef: float = 0.01
    """weight of the entropy bonus"""
    vf_coef: float = 0.5
    """weight of the value loss"""
    max_grad_norm: float = 0.5
    """gradient clipping by global norm, per worker update"""
    sticky_actions: float = 0.0
    """probability that the emulator repeats the previous action (0: the A3C paper; ALE v5: 0.25)"""
    eval_interval: int = 500_000
    """global env steps between greedy evaluations with a video during training (0: none)"""
    eval_max_steps: int = 10_000
    """an evaluation episode is cut after this many env steps (a full game takes ~1-4k)"""

    def __post_init__(self):
        games = roms.get_all_rom_ids()  # ALE/<Game>-v5 ids: gymnasium knows them once ale_py is imported
        if self.env_id not in games and rom_name(check_env_id(self.env_id)) not in games:
            raise ValueError(f"--env-id {self.env_id}: not an ALE game")
        envs, inf = max(self.envs_per_worker, 1), float("inf")
        for name, low, high in (
            ("total_steps", 1, inf),
            ("log_interval", 1, inf),
            ("eval_max_steps", 1, inf),
            ("eval_episodes", 0, inf),
            ("eval_interval", 0, inf),
            ("gamma", 0, 1),
            ("learning_rate", 1e-7, 1),
            ("max_grad_norm", 1e-7, inf),
            ("ent_coef", 0, 1e3),
            ("vf_coef", 0, 1e3),
            ("sticky_actions", 0, 0.99),
            # a worker is a process with torch loaded: more than 4 per core only contend
            ("n_workers", 1, 4 * (os.cpu_count() or 1)),
            # a rollout keeps n_steps x envs_per_worker observations of 28 kB
            ("envs_per_worker", 1, 4096),
            ("n_steps", 1, 4096 // envs),
            # env i of worker w is seeded with (seed + w) * envs_per_worker + i: int32
            ("seed", 0, 2**31 // envs - self.n_workers - 1),
        ):
            if not low <= (value := getattr(self, name)) <= high:  # NaN fails too
                raise ValueError(f"--{name.replace('_', '-')} must be in [{low}, {high}], got {value}")
        if missing := [p for p in (self.eval_checkpoint, self.resume) if p and not os.path.isfile(p)]:
            raise ValueError(f"checkpoint not found: {missing[0]}")


def rom_name(env_id: str) -> str:
    """ "ALE/MsPacman-v5" -> "ms_pacman", the ROM name ale-py's vector env expects."""
    name = env_id.split("/")[-1].split("-")[0]
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def make_env(args: Args, num_envs: int = 1, colour: bool = False) -> AtariVectorEnv:
    # SAME_STEP autoreset: an episode's last step returns the next one's first obs, no reset step
    screen = dict(grayscale=False, img_height=210, img_width=160, stack_num=1) if colour else {}  # RGB
    return AtariVectorEnv(
        rom_name(args.env_id),
        num_envs=num_envs,
        num_threads=1,
        repeat_action_probability=args.sticky_actions,
        reward_clipping=False,
        autoreset_mode="SameStep",
        **screen,
    )


def layer_init(layer: nn.Module, std: float = 2**0.5) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
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

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(torch.as_tensor(obs).float() / 255.0)
        return self.policy(hidden), self.value(hidden).squeeze(-1)


class SharedAdam(torch.optim.Adam):
    """Adam with its moments and step counts made up front in shared memory: one state for all."""

    def __init__(self, params, lr: float):
        super().__init__(params, lr=lr, foreach=False)
        for p in self.param_groups[0]["params"]:
            self.state[p] = {"step": torch.zeros(()), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        self.share_memory()

    def share_memory(self) -> None:  # again after load_state_dict, which replaces the tensors
        for tensor in (tensor for state in self.state.values() for tensor in state.values()):
            tensor.share_memory_()


def nstep_returns(rewards, dones, last_value, gamma: float) -> np.ndarray:
    """R_t = r_t + γ (1 - done_t) R_{t+1} from R_n = V(s_n): n-step returns, cut at episode ends."""
    returns, running = np.zeros_like(rewards), last_value
    for t in reversed(range(len(rewards))):
        returns[t] = running = rewards[t] + gamma * (1.0 - dones[t]) * running
    return returns


def a3c_loss(logits, values, actions, returns, vf_coef: float, ent_coef: float):
    """L = mean[-log π(a|s) A] + c_V mean[½ (R - V(s))²] - c_H mean[H(π(·|s))], A = R - V(s)."""
    dist = torch.distributions.Categorical(logits=logits)
    policy_loss = -(dist.log_prob(actions) * (returns - values).detach()).mean()
    value_loss = 0.5 * (returns - values).pow(2).mean()
    entropy = dist.entropy().mean()
    return policy_loss + vf_coef * value_loss - ent_coef * entropy, (policy_loss, value_loss, entropy)


def start_child(queue, name: str, seed: int) -> None:
    queue.cancel_join_thread()  # exit at once on stop even if the main process stopped reading
    torch.set_num_threads(1)  # one core per process: more threads only contend
    torch.manual_seed(seed)
    print(f"{name} pid {os.getpid()}", flush=True)


def worker(rank, args, global_model, optimizer, steps, stop, queue, parent_pid):
    start_child(queue, f"worker {rank}", args.seed + rank)
    env = make_env(args, args.envs_per_worker)
    model = ActorCritic(int(env.single_action_space.n))
    obs, _ = env.reset(seed=(args.seed + rank) * args.envs_per_worker)
    episode_returns, episode_lengths = np.zeros((2, args.envs_per_worker))
    # os.getppid() changes if the main process was killed: never outlive it.
    while not stop.value and sum(steps) < args.total_steps and os.getppid() == parent_pid:
        model.load_state_dict(global_model.state_dict())
        observations, actions, rewards, dones = [], [], [], []
        for _ in range(args.n_steps):
            with torch.no_grad():  # sample a ~ π(·|s)
                action = torch.multinomial(model(obs)[0].softmax(-1), 1).squeeze(1)
            observations.append(obs)
            obs, reward, terminated, truncated, info = env.step(action.numpy())
            episode_returns, episode_lengths = episode_returns + reward, episode_lengths + 1
            cut = truncated & ~terminated  # time limit, not a real end: bootstrap, r + γ V(s_final)
            bootstrap = args.gamma * model(info["final_obs"])[1].detach().numpy() if cut.any() else 0
            rewards.append(np.clip(reward, -1.0, 1.0) + cut * bootstrap)
            actions.append(action)
            dones.append(terminated | truncated)
            for i in np.flatnonzero(dones[-1]):
                queue.put(("episode", sum(steps), episode_returns[i].item(), int(episode_lengths[i])))
                episode_returns[i], episode_lengths[i] = 0.0, 0
        logits, values = model(np.concatenate(observations))  # time-major: rows t * envs + i
        last_value = model(obs)[1].detach().numpy()
        returns = nstep_returns(np.array(rewards, np.float32), np.array(dones), last_value, args.gamma)
        loss, stats = a3c_loss(
            logits, values, torch.cat(actions), torch.from_numpy(returns).flatten(), args.vf_coef, args.ent_coef
        )
        model.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        for global_param, param in zip(global_model.parameters(), model.parameters()):
            global_param.grad = param.grad  # .grad is per process; the step writes shared memory
        optimizer.step()
        steps[rank + 1] += args.n_steps * args.envs_per_worker  # the only writer of this slot
        queue.put(("loss", *(stat.item() for stat in stats)))


@torch.no_grad()
def evaluate(model, args, episodes: int, seed: int, video_path=None, stop=None) -> list[float]:
    """Greedy returns, each episode cut after --eval-max-steps, all once `stop` is true. The first is
    filmed if `video_path` is set, by a colour env that plays the same game (same seed and actions)."""
    env, screen, returns = make_env(args), make_env(args, colour=True), []
    video = VideoWriter(video_path or "", fps=15)  # 60 frames/s, 4 per step; no add(): no file
    obs, frame = env.reset(seed=seed)[0], screen.reset(seed=seed)[0]
    for episode in range(episodes):
        returns.append(0.0)
        for _ in range(args.eval_max_steps):
            if stop:
                break
            action = model(obs)[0].argmax(-1).numpy()
            if video_path and episode == 0:
                video.add(frame[0, -1])
                frame = screen.step(action)[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            returns[-1] += float(reward[0])
            if terminated[0] or truncated[0]:
                break
        else:
            obs, _ = env.reset()  # cut short: the next episode starts from a fresh game
    video.close()
    return returns


def evaluator(args, n_actions, global_model, steps, stop, queue, parent_pid, run_dir):
    start_child(queue, "evaluator", args.seed)
    model, next_step = ActorCritic(n_actions), sum(steps) + args.eval_interval
    while not stop.value and os.getppid() == parent_pid:
        time.sleep(1.0)
        if sum(steps) >= next_step:
            step, next_step = sum(steps), sum(steps) + args.eval_interval
            model.load_state_dict(global_model.state_dict())  # a snapshot: training goes on
            video_path = os.path.join(run_dir, "videos", f"eval_{step:09d}.mp4")
            queue.put(("eval", step, evaluate(model, args, 1, args.seed, video_path, stop)[0]))


def write_checkpoint(run_dir, script, model, optimizer, step: int, metrics, args) -> None:
    save_checkpoint(
        os.path.join(run_dir, "checkpoint.pt"),
        {
            "script": script,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "global_step": step,
            "time_s": metrics.elapsed(),
            "args": asdict(args),
        },
    )


def report_evaluation(returns: list[float], run_dir: str) -> None:
    mean = write_evaluation(run_dir, returns)
    print(f"greedy evaluation over {len(returns)} episodes: mean return {mean:.2f}, returns {returns}")


if __name__ == "__main__":
    args = parse_args(Args)
    script = os.path.splitext(os.path.basename(__file__))[0]
    state = load_checkpoint(path, script) if (path := args.eval_checkpoint or args.resume) else None
    seed_everything(args.seed)
    torch.set_num_threads(1)
    global_model = ActorCritic(n_actions := int(make_env(args).single_action_space.n))
    if state and (found := state["model"]["policy.weight"].shape[0]) != n_actions:  # another game's
        raise SystemExit(f"error: {path} has {found} actions, --env-id {args.env_id} has {n_actions}")
    if state:
        global_model.load_state_dict(state["model"])
    run_dir = make_run_dir(args.runs_dir, args.env_id, script, args.seed)
    print(f"run directory: {run_dir} | device: cpu | workers: {args.n_workers}", flush=True)
    if args.eval_checkpoint:
        report_evaluation(
            evaluate(
                global_model, args, max(args.eval_episodes, 1), args.seed, os.path.join(run_dir, "videos", "eval.mp4")
            ),
            run_dir,
        )
        raise SystemExit(0)
    optimizer = SharedAdam(global_model.parameters(), args.learning_rate)
    start_step, start_time = (state["global_step"], state["time_s"]) if args.resume else (0, 0.0)
    if args.resume:
        optimizer.load_state_dict(state["optimizer"])
        optimizer.share_memory()
    global_model.share_memory()
    ctx = mp.get_context("spawn")
    # No locks, so a killed child holds none: sum(steps) = steps before a resume + each worker's.
    steps = ctx.Array("q", [start_step] + [0] * args.n_workers, lock=False)
    children_stop, queue = ctx.Value("b", 0, lock=False), ctx.Queue()
    children = [
        ctx.Process(
            target=worker,
            name=f"worker {rank}",
            daemon=True,
            args=(rank, args, global_model, optimizer, steps, children_stop, queue, os.getpid()),
        )
        for rank in range(args.n_workers)
    ]
    if 0 < args.eval_interval < args.total_steps:
        children.append(
            ctx.Process(
                target=evaluator,
                name="evaluator",
                daemon=True,
                args=(args, n_actions, global_model, steps, children_stop, queue, os.getpid(), run_dir),
            )
        )
    metrics = MetricsWriter(run_dir, ("policy_loss", "value_loss", "entropy", "eval_return"), start_time)
    progress, recent_returns = Progress(args.total_steps, start_step), deque(maxlen=10)
    recent_losses, next_log, dead = deque(maxlen=100), args.log_interval, None
    checkpoint_path, stop = os.path.join(run_dir, "checkpoint.pt"), StopRequest()
    try:
        with children_ignore_signals():  # a Ctrl-C to the group must not kill a child importing torch
            for child in children:
                child.start()
        print("training: Ctrl-C or SIGTERM stops it and saves a checkpoint to resume from", flush=True)
        while not stop and dead is None and any(child.is_alive() for child in children[: args.n_workers]):
            try:
                kind, *message = queue.get(timeout=0.5)
            except queue_lib.Empty:
                kind = None
            if kind == "episode":
                recent_returns.append(message[1])
                metrics.episode(*message)
            elif kind == "loss":
                recent_losses.append(message)
            elif kind == "eval":
                print(f"greedy evaluation at step {message[0]}: return {message[1]:.1f}", flush=True)
                metrics.log(message[0], progress.steps_per_second(message[0]), eval_return=message[1])
            if (step := sum(steps)) >= next_log and recent_losses:
                next_log = step + args.log_interval
                losses = dict(zip(("policy_loss", "value_loss", "entropy"), np.mean(recent_losses, 0)))
                metrics.log(step, progress.steps_per_second(step), **losses)
                progress.print(step, recent_returns)
                if args.save_model:
                    write_checkpoint(run_dir, script, global_model, optimizer, step, metrics, args)
            dead = next((child for child in children if child.exitcode not in (None, 0)), None)
    finally:  # on a stop, the end or an error: the children finish their rollout within 3 s or are killed
        children_stop.value, deadline = 1, time.monotonic() + 3.0
        for child in (child for child in children if child.pid is not None):  # started ones only
            child.join(max(deadline - time.monotonic(), 0.0))
            child.kill()  # a no-op once it has exited
        if args.save_model or stop:
            write_checkpoint(run_dir, script, global_model, optimizer, sum(steps), metrics, args)
        metrics.close()
    if dead is not None:
        raise SystemExit(
            f"error: {dead.name} (pid {dead.pid}) died with exit code {dead.exitcode}; "
            f"stopped at step {sum(steps)}, checkpoint in {run_dir}"
        )
    if args.eval_episodes > 0 and not stop:
        returns = evaluate(
            global_model,
            args,
            args.eval_episodes,
            args.seed + 1,
            os.path.join(run_dir, "videos", "eval.mp4") if args.capture_video else None,
            stop,
        )
        if not stop:  # a Ctrl-C/SIGTERM during the final evaluation cuts it short: no report
            report_evaluation(returns, run_dir)
    if stop:
        if not os.path.exists(checkpoint_path):  # stopped in the final evaluation, --no-save-model
            write_checkpoint(run_dir, script, global_model, optimizer, sum(steps), metrics, args)
        stop.exit(sum(steps), checkpoint_path)
