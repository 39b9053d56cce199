"""ppo_selfplay.py and common/pong_duel.py: the Pong duel (mirroring, scoring, determinism), the PPO pieces,
a short learning run, and stops by signal that save the whole run and leave no worker behind; one stopped
run feeds the resume and --eval-checkpoint tests."""

import csv
import json
import os
import re
import signal

import numpy as np
import pytest
import torch

import common.pong_duel as duel
import ppo_selfplay as m
from common.checkpoint import KEYS
from conftest import REPO, run_dirs, stop_with_signal


def random_state(env: duel.PongDuel, rng) -> None:
    """A mid-rally state: the ball well inside the table so that no one scores on the next step."""
    n = env.n_games
    env.ball[:] = np.stack(
        [rng.uniform(0.2, 0.8, n), rng.uniform(0.1, 0.9, n), rng.uniform(-0.03, 0.03, n), rng.uniform(-0.03, 0.03, n)],
        1,
    )
    env.paddles[:] = rng.uniform(duel.PADDLE_HALF, 1 - duel.PADDLE_HALF, (n, 2))
    env.t[:] = rng.integers(0, 100, n)


def mirrored(env: duel.PongDuel) -> duel.PongDuel:
    """The same games with the players swapped: x -> 1 - x, vx -> -vx, paddles exchanged."""
    other = duel.PongDuel(env.n_games, seed=0)
    other.ball[:] = env.ball * [-1, 1, -1, 1] + [1, 0, 0, 0]
    other.paddles[:], other.score[:], other.t[:] = env.paddles[:, ::-1], env.score[:, ::-1], env.t
    return other


def test_swapping_players_mirrors_observations_and_dynamics():
    rng = np.random.default_rng(0)
    env = duel.PongDuel(64, seed=1)
    random_state(env, rng)
    swapped = mirrored(env)
    for _ in range(5):  # a few steps: the ball stays inside the table, so no serve draws randomness
        obs0, obs1 = env.observe()
        sw0, sw1 = swapped.observe()
        np.testing.assert_allclose(sw0, obs1, atol=1e-6)
        np.testing.assert_allclose(sw1, obs0, atol=1e-6)
        a0, a1 = rng.integers(0, 3, env.n_games), rng.integers(0, 3, env.n_games)
        reward, *_ = env.step(a0, a1)
        sw_reward, *_ = swapped.step(a1, a0)
        np.testing.assert_allclose(sw_reward, -reward)
    # Every scripted bot answers the mirrored view the same way (deterministic bots only).
    for name in ("fast_tracker", "predictor"):
        np.testing.assert_array_equal(duel.BOTS[name](env.observe()[1]), duel.BOTS[name](swapped.observe()[0]))


def test_arrival_and_reach_features():
    """A paddle placed where the observation says the ball will meet the goal line returns every ball,
    after the number of steps the `reach` feature gives."""
    env, n = duel.PongDuel(256, seed=2), 256
    random_state(env, np.random.default_rng(1))
    env.ball[:, 2] = np.where(env.ball[:, 2] < 0, -1, 1) * np.maximum(np.abs(env.ball[:, 2]), 0.01)
    obs0, obs1 = env.observe()
    np.testing.assert_array_equal(obs0[:, 7:], obs1[:, 7:])  # the same for both players
    arrival, steps = (obs0[:, 7] + 1) / 2, obs0[:, 8] / (2 * duel.PADDLE_SPEED)
    heading = (env.ball[:, 2] > 0).astype(int)  # the player whose goal line the ball heads for
    env.paddles[np.arange(n), heading] = np.clip(arrival, duel.PADDLE_HALF, 1 - duel.PADDLE_HALF)
    returned_at, height, vy = np.zeros(n), np.zeros(n), np.zeros(n)
    for t in range(1, 100):
        vx, vy[returned_at == 0] = env.ball[:, 2].copy(), env.ball[returned_at == 0, 3]
        reward, *_ = env.step(np.ones(n, int), np.ones(n, int))
        assert not reward[returned_at == 0].any()  # no miss before the first return
        first = (np.sign(env.ball[:, 2]) != np.sign(vx)) & (returned_at == 0)
        returned_at[first], height[first] = t, env.ball[first, 1]
    assert (returned_at > 0).all()
    assert np.all(np.abs(returned_at - steps) <= 1)
    assert np.all(np.abs(height - arrival) <= np.abs(vy) + 1e-6)  # it crosses between two steps


def test_return_feature_is_where_the_return_will_arrive():
    """With both paddles still, the `return` read before a hit is the arrival point the observation gives
    right after it, on the other goal line, for every angle the paddle can give."""
    env, n = duel.PongDuel(256, seed=3), 256
    rng = np.random.default_rng(2)
    random_state(env, rng)
    env.ball[:, 2] = np.where(env.ball[:, 2] < 0, -1, 1) * np.maximum(np.abs(env.ball[:, 2]), 0.01)
    obs0, _ = env.observe()
    heading = (env.ball[:, 2] > 0).astype(int)
    hit_at = (obs0[:, 7] + 1) / 2 + rng.uniform(-0.1, 0.1, n)  # any point of the paddle, so any angle
    env.paddles[np.arange(n), heading] = np.clip(hit_at, duel.PADDLE_HALF, 1 - duel.PADDLE_HALF)
    predicted, arrived, missed = env.observe()[0][:, 9], np.full(n, np.nan), np.zeros(n, dtype=bool)
    for _ in range(100):
        vx = env.ball[:, 2].copy()
        reward, *_, obs0, _ = env.step(np.ones(n, int), np.ones(n, int))
        missed |= (reward != 0) & np.isnan(arrived)  # past the paddle's edge: a point, not a return
        first = (np.sign(env.ball[:, 2]) != np.sign(vx)) & np.isnan(arrived) & ~missed
        arrived[first] = obs0[first, 7]
    returned = ~np.isnan(arrived)
    assert returned.sum() > 200
    np.testing.assert_allclose(arrived[returned], predicted[returned], atol=1e-5)


def test_scoring_hits_and_game_end():
    env = duel.PongDuel(3, seed=0, score_limit=2)
    # Game 0: player 0 misses. Game 1: player 0 hits off-centre. Game 2: player 1 misses its last point.
    env.ball[:] = [[0.005, 0.5, -0.02, 0.0], [0.005, 0.5, -0.02, 0.0], [0.995, 0.5, 0.02, 0.0]]
    env.paddles[:] = [[0.85, 0.5], [0.45, 0.5], [0.5, 0.2]]
    env.score[2] = [1, 0]
    reward, done, obs0, _ = env.step(np.ones(3, int), np.ones(3, int))
    np.testing.assert_array_equal(reward, [-1, 0, 1])
    np.testing.assert_array_equal(done, [False, False, True])
    np.testing.assert_array_equal(env.score, [[0, 1], [0, 0], [0, 0]])  # game 2 restarted
    assert env.ball[0, 0] == 0.5 and env.ball[2, 0] == 0.5  # served from the centre
    vx, vy = env.ball[1, 2:]
    assert vx > 0 and vy > 0  # returned, angled down: the ball hit below the paddle centre
    assert np.hypot(vx, vy) == pytest.approx(0.02 * duel.SPEEDUP)  # and faster
    short = duel.PongDuel(2, seed=0, max_steps=3)
    for _ in range(2):
        assert not short.step(np.ones(2, int), np.ones(2, int))[1].any()
    assert short.step(np.ones(2, int), np.ones(2, int))[1].all()  # the step cap: a draw


def test_same_seed_same_games():
    def trajectory(seed):
        env, rng, out = duel.PongDuel(16, seed), np.random.default_rng(0), []
        for _ in range(3000):
            reward, done, *_ = env.step(rng.integers(0, 3, 16), duel.BOTS["fast_tracker"](env.observe()[1]))
            out.append(np.concatenate([env.observe()[0].ravel(), reward, done]))
        return np.array(out)

    first = trajectory(5)
    assert np.abs(first[:, -32:-16]).sum() > 0  # points were scored, so serves drew random numbers
    np.testing.assert_array_equal(first, trajectory(5))
    assert not np.array_equal(first, trajectory(6))


def test_family_split_is_disjoint_in_every_style_parameter():
    """Held-out bots draw each style parameter from bins 1 and 3 of its range, training and validation
    bots from bins 0 and 2; skill parameters stay in their shared range. The draws are fixed by seed."""

    def bins(bots):
        return {
            name: {k: int(4 * (p[k] - lo) / (hi - lo)) for k, (lo, hi) in duel.STYLE.items()}
            for name, p in bots.items()
        }

    trained = duel.family("train_", 50, seed=7)
    for group, allowed in ((trained, {0, 2}), (duel.VALIDATION, {0, 2}), (duel.HELD_OUT, {1, 3, 4})):
        assert all(set(b.values()) <= allowed for b in bins(group).values()), group
        assert all(0 <= p[k] <= hi for p in group.values() for k, hi in duel.SKILL.items())
    assert len({tuple(p.values()) for p in duel.HELD_OUT.values()}) == len(duel.HELD_OUT) == 12
    assert duel.family("train_", 50, seed=7) == trained != duel.family("train_", 50, seed=8)


def test_scripted_bot_parameters():
    """Ball coming at the bot from mid-table: it goes for the arrival point (+ aim) only when the ball is
    nearer than `react`; else it moves to shadow x ball height; `lazy` = 1 never moves."""
    env = duel.PongDuel(1, seed=0)
    env.ball[:] = [[0.5, 0.5, 0.02, 0.0]]  # towards player 1, arriving at y = 0.5
    env.paddles[:] = [[0.5, 0.2]]  # player 1's paddle well above the arrival point
    obs = env.observe()[1]
    down, up, stay = [2], [0], [1]
    assert duel.scripted(aim=0.0)(obs).tolist() == down  # goes for the arrival point
    assert duel.scripted(aim=0.0, react=0.4, shadow=0.0)(obs).tolist() == down  # waits at the centre (0.5)
    env.paddles[:] = [[0.5, 0.8]]  # below the arrival point: waiting at the centre means moving up
    obs = env.observe()[1]
    assert duel.scripted(aim=0.0, react=0.4, shadow=0.0)(obs).tolist() == up
    assert duel.scripted(aim=0.0, react=0.4, shadow=1.0)(obs).tolist() == up  # follows the ball (y 0.5)
    assert duel.scripted(aim=0.0, lazy=1.0)(obs).tolist() == stay
    env.paddles[:] = [[0.3, 0.5]]
    obs = env.observe()[1]
    assert duel.scripted(aim=0.0)(obs).tolist() == stay  # at the arrival point already
    assert duel.scripted(aim=1.0)(obs).tolist() != stay  # meets the ball off-centre, away from the opponent


def test_sharded_games_match_their_shards_stepped_here():
    """Two worker processes step games 0-3 and 4-6, seeded seed * 1000 + shard, in game order."""
    sharded = duel.ShardedEnv(duel.PongDuel, 7, n_workers=2, seed=3)
    shards, rng = [duel.PongDuel(4, 3000), duel.PongDuel(3, 3001)], np.random.default_rng(0)
    try:
        np.testing.assert_array_equal(sharded.step()[0], np.concatenate([s.observe()[0] for s in shards]))
        for _ in range(300):
            a0, a1 = rng.integers(0, 3, 7), rng.integers(0, 3, 7)
            here = [s.step(a0[cut], a1[cut]) for s, cut in zip(shards, (slice(0, 4), slice(4, 7)), strict=True)]
            for got, expected in zip(sharded.step(a0, a1), zip(*here, strict=True), strict=True):
                np.testing.assert_array_equal(got, np.concatenate(expected))
    finally:
        sharded.close()
    assert not any(proc.is_alive() for proc in sharded.procs)


def test_render_frame():
    frame = duel.PongDuel(2, seed=0).render(1)
    assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8 and frame.max() == 255


def test_clipped_surrogate_hand_computed():
    ratios = torch.tensor([0.5, 1.0, 1.5, 1.5])
    advantages = torch.tensor([1.0, 1.0, 1.0, -1.0])
    old_logp = torch.log(torch.tensor([0.2, 0.4, 0.6, 0.3]))
    # min(ρA, clip(ρ)A) with ε = 0.2: 0.5 (unclipped), 1.0, 1.2 (clipped), -1.5 (unclipped, A < 0)
    loss = m.clipped_surrogate(old_logp + ratios.log(), old_logp, advantages, 0.2)
    assert loss.item() == pytest.approx(-(0.5 + 1.0 + 1.2 - 1.5) / 4)


def test_gae_hand_computed():
    rewards, values = torch.tensor([[1.0], [0.0], [2.0]]), torch.tensor([[0.5], [1.0], [0.0]])
    dones, next_value = torch.tensor([[0.0], [1.0], [0.0]]), torch.tensor([3.0])
    advantages, returns = m.gae(rewards, values, dones, next_value, gamma=0.9, lam=0.5)
    a2 = 2.0 + 0.9 * 3.0 - 0.0
    a1 = 0.0 - 1.0  # step 1 ended a game: no bootstrapping from step 2
    a0 = 1.0 + 0.9 * 1.0 - 0.5 + 0.9 * 0.5 * a1
    np.testing.assert_allclose(advantages[:, 0], [a0, a1, a2], rtol=1e-6)
    np.testing.assert_allclose(returns, advantages + values)


def test_hit_offset_is_shared_by_step_and_observe():
    """A ball at the paddle's end is a hit at offset ±1, a little beyond it a miss."""
    reach = duel.PADDLE_HALF + duel.BALL_RADIUS
    assert duel.hit_offset(0.5 + reach, 0.5) == pytest.approx(1.0)
    assert duel.hit_offset(0.5 - reach / 2, 0.5) == pytest.approx(-0.5)
    assert duel.height_after_walls(np.array([-0.2, 0.3, 1.2, 2.3])).tolist() == pytest.approx([0.2, 0.3, 0.8, 0.3])


def episodes_by_opponent(run_dir: str) -> dict:
    """{opponent: [score differences]} of a run's eval.json."""
    with open(os.path.join(run_dir, "eval.json")) as f:
        result = json.load(f)
    games = {}
    for episode in result["per_episode"]:
        games.setdefault(episode["opponent"], []).append(episode["return"])
    return games


def test_learns_to_beat_random_bot(run_script, tmp_path):
    """A short run (about 20 s here) beats the random bot in >= 80% of greedy games."""
    result = run_script(
        "ppo_selfplay.py", "--total-steps", "2000000", "--n-workers", "0", "--seed", "1", "--eval-episodes", "50"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    win_rate = np.mean(np.array(episodes_by_opponent(run_dir)["random"]) > 0)
    print(f"greedy win rate against the random bot: {win_rate:.0%}")
    assert win_rate >= 0.8, result.stdout[-2000:]


FAST = [
    "--n-games",
    "64",
    "--n-steps",
    "32",
    "--curriculum-threshold",
    "0",
    "--curriculum-window",
    "1",
    "--panel-games",
    "2",
    "--log-interval",
    "2048",
]  # 2048 steps an update; a curriculum that any game passes
BATCH = 64 * 32
LONG_RUN = ["--total-steps", "100000000", "--n-workers", "2", "--snapshot-interval", "2", *FAST]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """One run with 2 workers, stopped by SIGTERM once self-play has judged a best model (no --save-model):
    (its run directory, its checkpoint state, its stdout)."""
    tmp_path = tmp_path_factory.mktemp("stopped")
    state, text = stop_with_signal(tmp_path, "ppo_selfplay.py", LONG_RUN, signal.SIGTERM, ready="new best model")
    (run_dir,) = run_dirs(tmp_path)
    return run_dir, state, text


def resume(run_script, tmp_path, checkpoint: str, state, more_updates: int, *args: str):
    """--resume `checkpoint` for `more_updates` updates: (result, run directory, metrics rows)."""
    total = str((state["resume_state"]["update"] + more_updates) * BATCH)
    result = run_script("ppo_selfplay.py", "--resume", checkpoint, "--total-steps", total, *FAST, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    (resumed,) = [d for d in run_dirs(tmp_path) if d != os.path.dirname(checkpoint)]
    with open(os.path.join(resumed, "metrics.csv")) as f:
        return result, resumed, list(csv.DictReader(f))


def test_sigterm_saves_the_whole_run(stopped_run):
    """The checkpoint holds the step count, the curriculum level, the league, the Elo table and the model the
    panel judged best; checkpoint.pt is the one file."""
    run_dir, state, text = stopped_run
    league, n_bots = state["resume_state"], len(duel.BOTS)
    assert tuple(state) == KEYS and state["global_step"] == league["update"] * BATCH
    assert f"stopped by SIGTERM at step {state['global_step']}" in text
    assert league["level"] == n_bots and state["kept_model"] is not None and 0 <= state["kept_score"] <= 1
    assert f"step {state['kept_step']}: new best model" in text
    assert {f"beat_{bot}" for bot in duel.BOTS} < set(league["snapshots"]) <= set(league["elo"])
    assert set(state["model"]) == set(state["kept_model"]) and any(k.startswith("critic.") for k in state["model"])
    assert not [name for name in os.listdir(run_dir) if name.endswith(".pt") and name != "checkpoint.pt"]


def test_resume_goes_on_from_the_stopped_run(stopped_run, run_script, tmp_path):
    """--resume continues the update count, the curriculum, the league, the Elo table and the kept model (the
    saved panel score is the bar to beat); the run then plays snapshots, prints the Elo table and ends with the
    final evaluation against every named and held-out bot."""
    run_dir, state, _ = stopped_run
    update, n_bots = state["resume_state"]["update"], len(duel.BOTS)
    # 63 updates: 2,016 steps of new games, so that games end (at 5 points, or a draw at 2,000 steps).
    more = 63
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    every_8 = ["--snapshot-interval", "8"]  # fewer panel rounds than the stopped run's 2: a cheaper test
    result, resumed, rows = resume(
        run_script, tmp_path, checkpoint, state, more, *every_8, "--save-model", "--eval-episodes", "1"
    )
    assert f"at step {update * BATCH}, curriculum level {n_bots}" in result.stdout
    logged = [int(r["global_step"]) for r in rows if r["kind"] == "log"]
    assert logged == [(update + k) * BATCH for k in range(1, more + 1)]
    first = next(r for r in rows if r["kind"] == "episode")  # one game: the rating moves by K = 16 at most
    assert int(first["level"]) == n_bots and abs(float(first["elo"]) - state["resume_state"]["elo"]["learner"]) <= 16
    assert any(r["opponent"].startswith("snap_") for r in rows)  # games against snapshots were played and logged
    assert "Elo ratings" in result.stdout
    final = torch.load(os.path.join(resumed, "checkpoint.pt"), weights_only=True)
    league = final["resume_state"]
    assert league["update"] == update + more and league["level"] == n_bots
    assert final["kept_score"] >= state["kept_score"] and set(state["resume_state"]["elo"]) <= set(league["elo"])
    for name, weights in state["resume_state"]["snapshots"].items():  # the pool came back as it was saved
        assert all(torch.equal(weights[key], league["snapshots"][name][key]) for key in weights)
    announced = re.findall(r"new best model, panel score ([\d.]+)", result.stdout)
    assert all(float(score) > state["kept_score"] for score in announced)  # the saved best is the bar
    if final["kept_score"] == state["kept_score"]:
        assert final["kept_step"] == state["kept_step"]
        assert all(torch.equal(value, final["kept_model"][key]) for key, value in state["kept_model"].items())
    assert set(episodes_by_opponent(resumed)) == set(duel.BOTS) | set(duel.HELD_OUT)


def test_eval_checkpoint_plays_the_kept_model_and_films(stopped_run, run_script, tmp_path):
    """--eval-checkpoint on a training checkpoint plays its kept model against every named and held-out bot,
    films the first game and names the worst held-out bot; a checkpoint of another rollout size or the shipped
    model cannot be resumed (one line, no run directory)."""
    run_dir, state, _ = stopped_run
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    evaluated = run_script("ppo_selfplay.py", "--eval-checkpoint", checkpoint, "--eval-episodes", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (eval_dir,) = run_dirs(tmp_path)
    assert os.path.getsize(os.path.join(eval_dir, "videos", "eval.mp4")) > 0
    with open(os.path.join(eval_dir, "eval.json")) as f:
        assert json.load(f)["kept_step"] == state["kept_step"]
    games = episodes_by_opponent(eval_dir)
    assert set(games) == set(duel.BOTS) | set(duel.HELD_OUT) and all(len(g) == 2 for g in games.values())
    assert re.search(r"worst held-out bot: held_out_\d+ ", evaluated.stdout), evaluated.stdout[-2000:]
    shipped = os.path.join(REPO, "pretrained", "ppo_selfplay.pt")
    for path, rollout in ((checkpoint, ["--n-steps", "16"]), (shipped, [])):
        refused = run_script("ppo_selfplay.py", "--resume", path, *FAST[:2], *rollout)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert (
            refused.stderr.strip() == f"error: {path}: --resume needs a checkpoint.pt with this --n-games x --n-steps"
        )
    assert run_dirs(tmp_path) == [eval_dir]


def test_ctrl_c_to_the_group_while_workers_start(run_script, tmp_path):
    """A terminal's Ctrl-C reaches the workers too. Sent while they are still importing torch, it used
    to kill them; now they ignore it from birth and the learner stops them: exit 130, a checkpoint whose
    kept model is the latest one (the panel judged none)."""
    state, _ = stop_with_signal(
        tmp_path, "ppo_selfplay.py", LONG_RUN, signal.SIGINT, ready="training: Ctrl-C", to_group=True
    )
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert np.isnan(state["kept_score"]) and state["kept_step"] == state["global_step"]
    assert all(torch.equal(value, state["kept_model"][key]) for key, value in state["model"].items())
    (run_dir,) = run_dirs(tmp_path)
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    _, _, rows = resume(run_script, tmp_path, checkpoint, state, 2, "--eval-episodes", "0")
    assert [int(r["global_step"]) for r in rows if r["kind"] == "log"] == [
        (state["resume_state"]["update"] + 1) * BATCH,
        (state["resume_state"]["update"] + 2) * BATCH,
    ]


def test_shipped_model_loads_weights_only_and_plays(run_script, tmp_path):
    """pretrained/ppo_selfplay.pt (the kept model of the seed-1 default run: its actor, and a fresh critic that
    evaluation never uses) loads with weights_only=True and, through --eval-checkpoint, plays and films games
    against every named and held-out bot."""
    path = os.path.join(REPO, "pretrained", "ppo_selfplay.pt")
    state = torch.load(path, weights_only=True)
    assert tuple(state) == KEYS and state["model"] is None and state["optimizer"] is None
    assert state["resume_state"] is None and set(state["kept_model"]) == set(m.ActorCritic().state_dict())
    result = run_script("ppo_selfplay.py", "--eval-checkpoint", path, "--eval-episodes", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert os.path.getsize(os.path.join(run_dir, "videos", "eval.mp4")) > 0
    games = episodes_by_opponent(run_dir)
    assert set(games) == set(duel.BOTS) | set(duel.HELD_OUT)
    assert min(games["random"]) > 0 and min(games["fast_tracker"]) > 0  # a trained player, not a random one


def test_point_accounting_of_the_selfplay_points_benchmark():
    """benchmarks/selfplay_points.py counts the same points play() scores, and a paddle that never
    moves is at the centre at every return."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "selfplay_points", os.path.join(REPO, "benchmarks", "selfplay_points.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    stay = lambda obs: np.ones(len(obs), dtype=np.int64)  # noqa: E731
    p = bench.points(stay, duel.BOTS["fast_tracker"], 16, seed=3)
    diff = duel.play(stay, [duel.BOTS["fast_tracker"]], np.zeros(16, dtype=int), seed=3)
    assert p["won"] - p["lost"] == diff.sum() and p["lost"] > 0
    assert p["offset_all"] == 0 and p["on_serve"] + p["out_of_reach"] <= p["lost"]
