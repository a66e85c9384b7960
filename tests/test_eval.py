"""`zsrl eval`: built-in tasks, user reward functions, goals, oracle, report files and errors."""

import json

import numpy as np
import pytest
from conftest import save_maze_dataset

from zsrl.cli import main
from zsrl.stats import aggregate, iqm
from zsrl.training import start_run

TINY = ["agent.z_dim=8", "agent.hidden_dim=32", "agent.embedding_dim=16", "agent.backward_hidden_dim=32",
        "train.batch_size=32", "train.steps=10", "train.log_every=5", "train.progress=false",
        "train.compile=false"]  # the maze preset compiles its update; a few-step run need not


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    data = save_maze_dataset(tmp / "ds")
    return start_run("fb/point_mass_maze_cpu", data, tmp / "run", TINY)


def test_eval_writes_report_with_user_task_and_goal(run, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_rewards.py").write_text(
        "import numpy as np\n"
        "def left(obs, action, next_obs):\n"
        "    return (next_obs[:, 0] < -0.2).astype(np.float32)\n"
    )
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report"
    assert main(["eval", str(run), "--tasks", "reach_top_left", "--task", "my_rewards:left",
                 "--goals", "reach_top_right", "--episodes", "2", "--reward-samples", "100",
                 "--out", str(out), "--json", str(tmp_path / "r.json")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"reach_top_left", "my_rewards:left"}
    assert len(results["tasks"]["my_rewards:left"]["returns"]) == 2
    assert 0 <= results["goals"]["reach_top_right"]["success"] <= 1
    assert results["versions"]["torch"] and results["config"]["agent"]["name"] == "fb"
    for name in ("report.md", "returns.png", "learning_curves.png", "trajectories.png"):
        assert (out / name).is_file(), name
    assert "| my_rewards:left |" in capsys.readouterr().out


def test_eval_errors_are_clear(run, capsys):
    assert main(["eval", str(run), "--tasks", "jump"]) == 2
    assert "has no task 'jump'; its tasks are: reach_top_left" in " ".join(capsys.readouterr().err.split())
    assert main(["eval", str(run), "--task", "nowhere_module:f"]) == 2
    assert "cannot import module 'nowhere_module'" in capsys.readouterr().err


def test_nan_rewards_from_a_user_function_are_refused(run, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad_rewards.py").write_text("import numpy as np\ndef nan(o, a, n):\n    return np.full(len(o), np.nan)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(run), "--task", "bad_rewards:nan", "--episodes", "1", "--reward-samples", "50"]) == 2
    assert "NaN or inf rewards" in capsys.readouterr().err


def test_iqm_and_bootstrap():
    assert iqm(np.arange(8.0)) == pytest.approx(3.5)  # mean of 2..5
    agg = aggregate(np.array([[1.0, 2.0, 3.0, 100.0], [1.5, 2.5, 3.5, 90.0]]))
    assert agg["iqm"] < agg["mean"]
    assert agg["mean_ci"][0] <= agg["mean"] <= agg["mean_ci"][1]


def test_pct_of_oracle_needs_a_real_denominator():
    from zsrl.evaluation import pct_of_oracle

    assert pct_of_oracle(50.0, 200.0) == pytest.approx(25.0)
    assert pct_of_oracle(50.0, 1e-30) is None  # an oracle that failed too gives no ratio


def eval_args(run, out, *extra):
    return ["eval", str(run), "--episodes", "1", "--reward-samples", "50", "--out", str(out), *extra]


def test_goals_come_with_the_tasks_and_the_report_shows_both(run, tmp_path, capsys):
    assert main(eval_args(run, tmp_path / "e", "--goals", "reach_top_left")) == 0
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert set(results["tasks"]) == {"reach_top_left", "reach_top_right", "reach_bottom_left", "reach_bottom_right"}
    assert set(results["goals"]) == {"reach_top_left"}
    report = (tmp_path / "e" / "report.md").read_text()
    assert "| task | mean return |" in report and "| goal | success |" in report


def test_results_say_what_was_scored(run, tmp_path):
    assert main(eval_args(run, tmp_path / "e", "--tasks", "reach_top_left")) == 0
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["scored"] == {"source": "final model", "path": str(run / "model"), "step": 10, "total_steps": 10}
    assert results["notes"] == []
    assert "scored the final model at step 10 of 10" in (tmp_path / "e" / "report.md").read_text()


def test_earlier_results_are_never_replaced_silently(run, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(eval_args(run, out, "--tasks", "reach_top_left")) == 0
    first = (out / "results.json").read_bytes()
    assert main(eval_args(run, out, "--tasks", "reach_top_right")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "already exists (an evaluation of the final model at step 10" in err and "--overwrite" in err
    assert (out / "results.json").read_bytes() == first
    (out / "trajectories.png").unlink()  # a picture the next report will not redraw ...
    (out / "returns.png").rename(out / "keep_me.png")  # ... and a file zsrl did not list
    assert main(eval_args(run, out, "--goals", "reach_top_left", "--tasks", "", "--overwrite")) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["goals"]) == {"reach_top_left"} and "returns.png" not in results["files"]
    assert (out / "keep_me.png").is_file()  # only files the earlier report listed are removed
    assert main(eval_args(run, out, "--json", str(out / "results.json"), "--overwrite")) == 0


def test_an_incomplete_final_model_falls_back_to_the_checkpoint(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "model" / "config.json").unlink()  # killed during the final model write
    assert main(eval_args(copy, tmp_path / "e", "--tasks", "reach_top_left")) == 0
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["scored"]["source"] == "checkpoint" and results["scored"]["step"] == 10
    assert "final model is incomplete or unreadable" in results["notes"][0]
    shutil.rmtree(copy / "model")  # an unfinished run
    assert main(eval_args(copy, tmp_path / "e2", "--tasks", "reach_top_left")) == 0
    results = json.loads((tmp_path / "e2" / "results.json").read_text())
    assert "the run is unfinished" in results["notes"][0]


def test_results_are_strict_json():
    from zsrl.report import finite_or_null

    clean, replaced = finite_or_null({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "x"})
    assert clean == {"a": [1.0, None], "b": {"c": None}, "d": "x"}
    assert replaced == ["a[1]", "b.c"]
    json.dumps(clean, allow_nan=False)


@pytest.mark.parametrize("args, message", [
    (["--episodes", "0"], "--episodes must be at least 1, got 0"),
    (["--seeds", "0,x"], "--seeds takes comma-separated integers such as 0,1,2; got '0,x'"),
    (["--seeds", ","], "--seeds needs at least one integer"),
    (["--reward-samples", "-3"], "--reward-samples must be at least 1, got -3"),
    (["--device", "gpu0"], "device 'gpu0' is not a device torch knows"),
])
def test_bad_eval_options_are_one_paragraph_errors(run, tmp_path, capsys, args, message):
    assert main(["eval", str(run), "--out", str(tmp_path / "e"), *args]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_collect_refuses_zero_envs(tmp_path, capsys):
    assert main(["collect", "--domain", "point_mass_maze", "--num-envs", "0", "--transitions", "10",
                 "--out", str(tmp_path / "d")]) == 2
    assert "--num-envs must be a positive integer, got 0" in capsys.readouterr().err


def test_nan_rewards_on_the_rollouts_are_refused(run, tmp_path, monkeypatch, capsys):
    # finite on the 50 labelled dataset states, NaN on the rollout's 1000 steps
    (tmp_path / "odd_rewards.py").write_text(
        "import numpy as np\n"
        "def odd(o, a, n):\n"
        "    return np.zeros(len(o)) if len(o) == 50 else np.full(len(o), np.nan)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(eval_args(run, tmp_path / "e", "--task", "odd_rewards:odd")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "returned NaN or inf on 1000 of 1000 steps of the evaluation rollouts" in err
    assert not (tmp_path / "e" / "results.json").exists()


def test_pipeline_collects_trains_prompts_and_reports(tmp_path, capsys):
    """`zsrl pipeline` (README command 1) end to end, with a tiny budget: the default sticky
    data (holds of 10–100 steps, a fifth resting, 50,000-step episodes), the CPU preset with
    overrides, every task and goal prompted, a report; a second call reuses the dataset."""
    out = tmp_path / "qs"
    args = ["pipeline", "--out", str(out), "--transitions", "3000", "--episodes", "1", "--no-progress", *TINY]
    assert main(args) == 0
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["collector"] == "sticky10-100-rest0.2" and meta["episode_length"] == 50_000
    results = json.loads((out / "report" / "results.json").read_text())
    assert set(results["tasks"]) == set(results["goals"]) == {
        "reach_top_left", "reach_top_right", "reach_bottom_left", "reach_bottom_right"}
    assert results["config"]["agent"]["normalize_obs"] and (out / "report" / "trajectories.png").exists()
    capsys.readouterr()
    assert main(args) == 0
    assert "reusing the dataset" in capsys.readouterr().out


def test_maze_goal_grid_reports_every_goals_final_distance(tmp_path, capsys):
    from scripts.maze_goal_grid import goal_grid
    from scripts.maze_goal_grid import main as goal_grid_main
    from zsrl.agents.fb import FBConfig, FBModel

    goals = goal_grid()
    assert len(goals) == 24 and len({tuple(g) for _, g in goals}) == 24
    for room, g in goals:  # each goal lies in its own room, clear of the central cross (±0.02 m)
        assert (g[0] > 0) == room.endswith("right") and (g[1] > 0) == room.startswith("top")
        assert min(abs(g[0]), abs(g[1])) >= 0.07 and not g[2:].any()
    cfg = FBConfig(z_dim=8, hidden_dim=32, embedding_dim=16, backward_hidden_dim=32)
    FBModel(4, 2, cfg).save(tmp_path / "run" / "model", extra={"domain": "point_mass_maze"})
    out = tmp_path / "grid.json"
    assert goal_grid_main([str(tmp_path), "--episodes", "1", "--max-steps", "20", "--json", str(out)]) == 0
    assert "≤3cm per room" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["results"]
    distances = row["final_distances"]
    assert {room: len(d) for room, d in distances.items()} == dict.fromkeys(distances, 6) and len(distances) == 4
    every = [d for room in distances.values() for d in room]
    assert row["within_3cm"] == pytest.approx(sum(d <= 0.03 for d in every) / 24)
    assert 0 <= row["within_3cm"] <= row["within_5cm"] <= row["within_8cm"] <= 1
    assert goal_grid_main([str(tmp_path / "nothing"), "--json", str(out)]) == 2
    assert "has no trained model" in capsys.readouterr().err


def test_many_episodes_are_rolled_out_in_chunks_as_one_rollout_would(run, monkeypatch):
    """Episodes beyond ROLLOUT_CHUNK are rolled out chunk by chunk (bounded memory); episode e
    keeps its seed, so the first episodes score as in a shorter evaluation."""
    import zsrl.evaluation
    from zsrl.evaluation import evaluate_run

    short = evaluate_run(run, tasks=["reach_top_left", "dense_reach_top_left"], goals=["reach_top_right"],
                         episodes=3)
    monkeypatch.setattr(zsrl.evaluation, "ROLLOUT_CHUNK", 3)
    long = evaluate_run(run, tasks=["reach_top_left", "dense_reach_top_left"], goals=["reach_top_right"],
                        episodes=7)
    assert long.tasks["reach_top_left"].returns[:3] == short.tasks["reach_top_left"].returns
    assert len(long.tasks["reach_top_left"].returns) == 7
    assert long.rollouts["task:reach_top_left"].alive.shape[1] == 3  # the first chunk, for pictures
    for result in (long.goals["reach_top_right"], long.tasks["dense_reach_top_left"].goal):
        assert 0 <= result.success <= 1 and 0 <= result.time_within <= 1


def test_a_prompt_scores_the_same_whatever_is_evaluated_beside_it(run):
    """Reward labels and rollouts are seeded by the prompt's name and the evaluation seed, not
    by its position in the list; evaluation seeds start from different episodes."""
    from zsrl.evaluation import evaluate_run, prompt_seed

    alone = evaluate_run(run, tasks=["reach_top_left"], goals=["reach_top_right"], episodes=2)
    beside = evaluate_run(run, tasks=["reach_bottom_right", "reach_top_left"], goals=["reach_bottom_left", "reach_top_right"],
                          episodes=2)
    assert alone.tasks["reach_top_left"].returns == beside.tasks["reach_top_left"].returns
    assert alone.goals["reach_top_right"] == beside.goals["reach_top_right"]
    bases = [prompt_seed("task:reach_top_left", s, 1) for s in range(3)]
    assert min(abs(a - b) for a in bases for b in bases if a != b) > 10_000


def test_goal_metrics_score_the_domains_rule_ever_reached_and_steps_within():
    """Three episodes of 4 steps against a goal at 0 (threshold 1, success = 2 steps within):
    within 3, 1 and 0 steps → success 1/3, ever reached 2/3, steps within [3, 1, 0]."""
    from types import SimpleNamespace

    from zsrl.envs.base import Domain
    from zsrl.evaluation import episode_goal_stats, goal_metrics

    domain = SimpleNamespace(goal_threshold=1.0, goal_dwell_steps=2, reference_goal_dwell_steps=None)
    domain.goal_distance = lambda obs, goal: np.abs(obs[..., 0] - goal[0])
    domain.goal_success = lambda dist, alive: Domain.goal_success(domain, dist, alive)
    x = np.array([[0.5, 2.0, 3.0], [0.2, 0.9, 3.0], [0.0, 5.0, 3.0], [4.0, 5.0, 3.0]])  # (T, E)
    traj = SimpleNamespace(alive=np.ones((4, 3), dtype=bool), next_observation=x[..., None])
    metrics = goal_metrics(domain, [episode_goal_stats(domain, traj, np.zeros(1))])
    assert metrics["success"] == pytest.approx(1 / 3)
    assert metrics["reached"] == pytest.approx(2 / 3)
    assert metrics["steps_within"] == [3, 1, 0]
    assert metrics["time_within"] == pytest.approx(4 / 12)
    assert metrics["reference_success"] is None  # the domain names no reference rule
    domain.reference_goal_dwell_steps = 3
    assert goal_metrics(domain, [episode_goal_stats(domain, traj, np.zeros(1))])["reference_success"] == 1 / 3


def test_the_goal_table_shows_the_reference_rule_where_a_domain_has_one():
    """A reference-rule column appears when some goal result has one (a dash where another
    has none); without any, the table has no such column."""
    from types import SimpleNamespace

    from zsrl.evaluation import GoalResult
    from zsrl.report import format_table

    plain = GoalResult(success=0.5, reached=1.0, final_distance=0.2, min_distance=0.1, time_within=0.3, threshold=1.1)
    with_ref = GoalResult(**{**plain.__dict__, "reference_success": 0.9})
    table = format_table(SimpleNamespace(tasks={}, goals={"goal_1": with_ref, "goal_2": plain}))
    assert "| goal | success | reference rule | ever reached |" in table
    assert "| goal_1 (goal prompt) | 50% | 90% | 100% |" in table and "| goal_2 (goal prompt) | 50% | – | 100% |" in table
    assert "reference rule" not in format_table(SimpleNamespace(tasks={}, goals={"goal_2": plain}))
