"""zsrl.plots on tiny synthetic data: every function writes a readable picture or video."""

import csv
import math

import numpy as np
import pytest
import torch
from fakes import FakeModel
from matplotlib.image import imread

from zsrl import plots
from zsrl.evaluation import Rollout, rollout

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAZE_TASKS = ["reach_top_left", "reach_top_right", "reach_bottom_left", "reach_bottom_right"]


def assert_png(path, min_side=100):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min(image.shape[:2]) >= min_side
    assert image.std() > 0.01  # not a blank canvas
    assert not list(path.parent.glob(f".{path.name}.*"))  # no temporary file left behind


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def fake_results(agent="fb", tasks=("walk", "run", "stand"), episodes=5, seeds=2, offset=0.0):
    rng = np.random.default_rng(len(agent))
    out = {"agent": agent, "domain": "walker", "seeds": list(range(seeds)), "tasks": {},
           "goals": {}}
    for k, task in enumerate(tasks):
        returns = (offset + 100 * (k + 1) + 20 * rng.normal(size=episodes * seeds)).tolist()
        out["tasks"][task] = {
            "mean_return": float(np.mean(returns)),
            "returns": returns,
            "per_seed_mean": [float(np.mean(returns[i::seeds])) for i in range(seeds)],
        }
    return out


# ---- learning curves -------------------------------------------------------------------
def test_learning_curves_with_eval(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_csv(run / "metrics.csv", [
        {"step": s, "time": s / 100, "updates_per_s": 100 + s % 7, "loss/fb": 1 / s,
         "loss/actor": -s / 10, "diag/B_norm": math.sqrt(s)}
        for s in range(10, 210, 10)
    ])
    write_csv(run / "eval.csv", [
        {"step": s, "return/walk": s / 2, "return/run": s / 5} for s in (50, 100, 150, 200)
    ])
    out = plots.learning_curves(run, tmp_path / "figs" / "curves.png")
    assert out == tmp_path / "figs" / "curves.png"
    assert_png(out)


def test_learning_curves_without_eval(tmp_path):
    write_csv(tmp_path / "metrics.csv", [{"step": 1, "time": 0.1, "loss/fb": 2.0, "blank": ""}])
    assert_png(plots.learning_curves(tmp_path, tmp_path / "curves.png"))


def test_learning_curves_missing_or_empty_metrics(tmp_path):
    with pytest.raises(ValueError, match="metrics.csv does not exist"):
        plots.learning_curves(tmp_path, tmp_path / "curves.png")
    (tmp_path / "metrics.csv").write_text("")
    with pytest.raises(ValueError, match="no rows"):
        plots.learning_curves(tmp_path, tmp_path / "curves.png")
    (tmp_path / "metrics.csv").write_text("step,time,loss/fb\n")
    with pytest.raises(ValueError, match="no rows"):
        plots.learning_curves(tmp_path, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


# ---- task bars --------------------------------------------------------------------------
def test_task_bars_single_agent_with_oracle(tmp_path):
    oracle = {"walk": 900.0, "run": 400.0}  # no oracle for "stand": a gap
    assert_png(plots.task_bars(fake_results(), tmp_path / "bars.png", oracle=oracle))


def test_task_bars_several_agents(tmp_path):
    results = {"fb": fake_results("fb"),
               "fre": fake_results("fre", tasks=("walk", "run"), offset=50)}
    assert_png(plots.task_bars(results, tmp_path / "bars.png", oracle={"walk": 950.0}))


def test_task_bars_ci_contains_the_mean():
    returns = [1.0, 2.0, 3.0, 4.0, 10.0]
    lo, hi = plots._ci95(returns)
    assert lo <= np.mean(returns) <= hi and lo < hi
    assert plots._ci95([5.0]) is None


def test_task_bars_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="not a zsrl eval results dict"):
        plots.task_bars({"fb": {"tasks": 3}}, tmp_path / "bars.png")
    with pytest.raises(ValueError, match="no task returns"):
        plots.task_bars({"tasks": {}, "goals": {"g": {"success": 1.0}}}, tmp_path / "bars.png")


# ---- maze trajectories -------------------------------------------------------------------
@pytest.fixture(scope="module")
def maze():
    from zsrl.envs import make_domain

    return make_domain("point_mass_maze")


def fake_rollout(rng, steps=40, episodes=3):
    xy = np.cumsum(rng.normal(scale=0.01, size=(steps, episodes, 2)), axis=0) + [-0.2, 0.2]
    obs = np.concatenate([xy, np.zeros((steps, episodes, 2))], axis=-1).astype(np.float32)
    alive = np.ones((steps, episodes), dtype=bool)
    alive[steps // 2:, 0] = False  # the first episode ended half way
    return Rollout(observation=obs, action=np.zeros((steps, episodes, 2), np.float32),
                   next_observation=np.roll(obs, -1, axis=0), alive=alive, seed=0)


def test_maze_trajectories(tmp_path, maze):
    rng = np.random.default_rng(0)
    trajectories = {name: fake_rollout(rng) for name in MAZE_TASKS[:3]}
    trajectories["my_module:my_reward"] = fake_rollout(rng, episodes=1)  # no known goal
    assert_png(plots.maze_trajectories(maze, trajectories, tmp_path / "maze.png"))


def test_maze_paths_use_only_alive_steps():
    traj = fake_rollout(np.random.default_rng(1), steps=10, episodes=2)
    first, second = plots._paths(traj)
    assert len(first) == 5 + 1 and len(second) == 10 + 1  # alive steps + final position
    np.testing.assert_allclose(first[-1], traj.next_observation[4, 0, :2])


# ---- benchmark bars ----------------------------------------------------------------------
def test_benchmark_bars(tmp_path):
    table = {
        "walker": {"fb": {"walk": 700.0, "run": 300.0}, "fre": {"walk": 650.0, "run": None}},
        "point_mass_maze": {"fb": {t: 200.0 + 50 * i for i, t in enumerate(MAZE_TASKS)}},
    }
    assert_png(plots.benchmark_bars(table, tmp_path / "bench.png"))


# ---- video -------------------------------------------------------------------------------
def mp4_frames(path):
    import imageio.v2 as imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return [np.asarray(frame) for frame in reader]
    finally:
        reader.close()


def record(maze, path, **kwargs):
    episode = rollout(FakeModel(zero=True), maze, torch.zeros(3), episodes=1, seed=0, max_steps=10)
    try:
        return plots.policy_video(maze, episode, path, **kwargs)
    except RuntimeError as exc:
        if "MUJOCO_GL" in str(exc):
            pytest.skip(f"rendering unavailable here: {exc}")
        raise


def test_policy_video_mp4(tmp_path, maze):
    path = record(maze, tmp_path / "episode.mp4", frame_stride=2, size=(96, 128),
                  task="reach_bottom_right")
    assert path.is_file() and path.stat().st_size > 0
    frames = mp4_frames(path)
    assert len(frames) == 1 + 10 // 2  # the reset frame + every 2nd step
    assert frames[0].shape == (96, 128, 3) and frames[0].std() > 1  # a picture, not a blank


def test_policy_video_gif(tmp_path, maze):
    from PIL import Image

    path = record(maze, tmp_path / "episode.gif", frame_stride=3, fps=10, size=(96, 128))
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as gif:
        assert gif.size == (128, 96)
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    # reset + steps 3, 6, 9 + the last step 10 = 5 frames of 100 ms; the zero policy leaves
    # the ball still, and Pillow merges identical frames into one with the summed duration.
    assert sum(durations) == 5 * 100


class _BrokenEnv:
    def reset(self, seed=None):
        return np.zeros(4, np.float32), {}

    def render(self):
        raise RuntimeError("No OpenGL rendering backend is available.")

    def close(self):
        pass


class _BrokenDomain:
    episode_length = 10

    def make_render_env(self, seed=None, task=None, size=None):
        return _BrokenEnv()


def test_policy_video_explains_render_failure(tmp_path):
    still = Rollout(observation=np.zeros((10, 1, 4), np.float32), action=np.zeros((10, 1, 2), np.float32),
                    next_observation=np.zeros((10, 1, 4), np.float32), alive=np.ones((10, 1), bool), seed=0)
    with pytest.raises(RuntimeError, match="MUJOCO_GL=egl.*libegl1|libegl1.*osmesa"):
        plots.policy_video(_BrokenDomain(), still, tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()
