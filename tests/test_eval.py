"""`zsrl eval`: built-in tasks, user reward functions, goals, oracle, report files and errors."""

import json

import numpy as np
import pytest
from conftest import make_arrays

from zsrl.cli import main
from zsrl.data import from_numpy
from zsrl.stats import aggregate, iqm
from zsrl.train import start_run

TINY = ["agent.z_dim=8", "agent.hidden_dim=32", "agent.embedding_dim=16", "agent.backward_hidden_dim=32",
        "train.batch_size=32", "train.steps=10", "train.log_every=5", "train.progress=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    arrays = make_arrays(n=256, episode_len=64)
    arrays["observation"] *= 0.1
    arrays["next_observation"] *= 0.1
    data = from_numpy(arrays, {"domain": "point_mass_maze", "collector": "test"}).save(tmp / "ds")
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
    from zsrl.evaluate import pct_of_oracle

    assert pct_of_oracle(50.0, 200.0) == pytest.approx(25.0)
    assert pct_of_oracle(50.0, 1e-30) is None  # an oracle that failed too gives no ratio
