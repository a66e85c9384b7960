"""Goal sets shipped with the domains, their distance, the success rule and dense goal tasks."""

import json

import numpy as np
import pytest
from conftest import save_maze_dataset

from zsrl.cli import main
from zsrl.data import Transitions
from zsrl.envs import make_domain
from zsrl.envs.goals import GOALS_DIR, MIN_SCALE, GoalSet, choose_goals
from zsrl.errors import UserError
from zsrl.evaluation import evaluate_run
from zsrl.training import start_run

SHIPPED = {"walker": 24, "cheetah": 17, "quadruped": 78}


def test_choose_goals_draws_one_row_per_slice_and_the_dataset_std():
    obs = np.arange(40, dtype=np.float64).reshape(20, 2)
    obs[:, 1] = 3.0  # a constant coordinate: σ is floored, not 0
    goals = choose_goals(obs, physics=obs * 10, count=4, source={"collector": "x"})
    rows = goals.source["rows"]
    assert [r // 5 for r in rows] == [0, 1, 2, 3] and goals.source["collector"] == "x"
    assert choose_goals(obs, count=4).source["rows"] == rows  # reproducible
    assert list(goals.observations) == ["goal_1", "goal_2", "goal_3", "goal_4"]
    np.testing.assert_array_equal(goals.observations["goal_2"], obs[rows[1]].astype(np.float32))
    np.testing.assert_array_equal(goals.physics["goal_4"], obs[rows[3]] * 10)
    assert goals.scale[0] == pytest.approx(obs[:, 0].std()) and goals.scale[1] == MIN_SCALE
    with pytest.raises(UserError, match="cannot choose 5 goals from 3 states"):
        choose_goals(obs[:3])


def test_distance_is_the_standardised_rms_over_the_goal_dims():
    goals = GoalSet({"g": np.zeros(3, np.float32)}, scale=np.array([1.0, 2.0, 4.0]))
    s = np.array([[3.0, 4.0, 8.0], [0.0, 0.0, 0.0]])
    # ((3/1)² + (4/2)² + (8/4)²) / 3 = 17/3
    np.testing.assert_allclose(goals.distance(s, goals.observations["g"], None), [np.sqrt(17 / 3), 0.0])
    np.testing.assert_allclose(goals.distance(s, goals.observations["g"], (1, 2)), [2.0, 0.0])


def test_goal_files_round_trip_and_bad_files_are_refused(tmp_path):
    goals = choose_goals(np.random.default_rng(0).normal(size=(50, 3)), count=2)
    path = tmp_path / "g.json"
    path.write_text(json.dumps(goals.to_dict("walker")))
    back = GoalSet.load(path, "walker")
    np.testing.assert_array_equal(back.scale, goals.scale)
    np.testing.assert_array_equal(back.observations["goal_2"], goals.observations["goal_2"])
    with pytest.raises(UserError, match="holds goals of domain 'walker', not 'cheetah'"):
        GoalSet.load(path, "cheetah")
    with pytest.raises(UserError, match="does not exist"):
        GoalSet.load(tmp_path / "none.json", "walker")
    path.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        GoalSet.load(path, "walker")
    raw = goals.to_dict("walker")
    raw["goals"]["goal_1"]["observation"] = [0.0, float("nan"), 0.0]
    path.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="inconsistent.*bad goals goal_1"):
        GoalSet.load(path, "walker")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_goals_are_states_the_domain_reaches(name):
    """Each shipped goal is the observation of its stored MuJoCo state (on the coordinates the
    distance reads), its own distance is 0,
    and its dense task's reward at the goal is 0 and negative elsewhere."""
    domain = make_domain(name)
    assert len(domain.goals) == 5 and all(g.shape == (SHIPPED[name],) for g in domain.goals.values())
    env = domain.make_env(seed=0)
    env.reset()
    physics = env.physics
    for goal, obs in domain.goals.items():
        with physics.reset_context():
            physics.set_state(domain.goal_set.physics[goal])
        from zsrl.envs.dmc import flatten_observation

        dims = list(domain.goal_dims or range(obs.shape[0]))  # acceleration-stage readings aside
        np.testing.assert_allclose(flatten_observation(env.task.get_observation(physics))[dims], obs[dims], atol=1e-5)
        assert domain.goal_distance(obs, obs) == 0
    env.close()
    first, second = list(domain.goals.values())[:2]
    batch = Transitions(np.stack([first, first]), np.zeros((2, env.action_space.shape[0]), np.float32),
                        np.stack([first, second]))
    rewards = domain.reward("dense_goal_1", batch)
    assert rewards[0] == 0 and rewards[1] < 0
    assert rewards[1] == pytest.approx(-domain.goal_distance(second, first), rel=1e-6)
    assert "dense_goal_1" in domain.all_tasks and "dense_goal_1" not in domain.tasks
    assert domain.goals_file.parent == GOALS_DIR


def test_success_rule_final_state_or_dwell(monkeypatch):
    maze = make_domain("point_mass_maze")  # final-state rule, threshold 0.03
    dist = np.array([[0.01, 0.5], [0.5, 0.5], [0.02, 0.01]])  # (T=3, E=2)
    alive = np.array([[True, True], [True, True], [True, False]])
    # episode 0 ends within the goal; episode 1 ended at t=1, outside it (its t=2 is dead)
    np.testing.assert_array_equal(maze.goal_success(dist, alive), [True, False])
    walker = make_domain("walker")  # dwell rule: at least 200 steps within 1.10
    far, near = np.full((1000, 1), 2.0), np.full((1000, 1), 0.5)
    near[200:] = 2.0
    assert walker.goal_dwell_steps == 200
    assert walker.goal_success(near, np.ones((1000, 1), bool))[0]
    near[199] = 2.0  # 199 steps within
    assert not walker.goal_success(near, np.ones((1000, 1), bool))[0]
    assert not walker.goal_success(far, np.ones((1000, 1), bool))[0]


def test_make_goals_command_writes_a_loadable_file(tmp_path, capsys):
    data = save_maze_dataset(tmp_path / "ds")
    out = tmp_path / "maze_goals.json"
    assert main(["data", "goals", str(data), "--count", "3", "--out", str(out)]) == 0
    goals = GoalSet.load(out, "point_mass_maze")
    assert len(goals.observations) == 3 and goals.source["transitions"] > 0
    assert "wrote 3 goals" in capsys.readouterr().out


def test_dense_goal_task_trains_an_oracle_and_reports_goal_success(tmp_path):
    """A supervised agent can train on `dense_<goal>`; its evaluation scores the rollouts
    by return and by goal success, and an unknown dense task is refused up front."""
    data = save_maze_dataset(tmp_path / "ds")
    tiny = ["train.steps=10", "train.batch_size=32", "train.log_every=5", "train.progress=false",
            "agent.hidden_dim=32"]
    with pytest.raises(UserError, match="has no task 'dense_nowhere'"):
        start_run("td3/point_mass_maze_cpu", data, tmp_path / "bad", ["task=dense_nowhere", *tiny])
    assert not (tmp_path / "bad").exists()
    run = start_run("td3/point_mass_maze_cpu", data, tmp_path / "run", ["task=dense_reach_top_left", *tiny])
    ev = evaluate_run(run, episodes=2)
    result = ev.tasks["dense_reach_top_left"]
    assert result.mean_return < 0  # minus a distance at every step
    assert result.goal is not None and 0 <= result.goal.success <= 1
    assert result.goal.min_distance <= result.goal.final_distance
    assert result.goal.threshold == pytest.approx(0.03)
    assert ev.aggregate is None  # returns of dense goal tasks (minus distances) are not averaged with rewards
