"""The shared training loop: run layout, exact resume, checkpoint errors, CLI errors."""

import json

import pytest
import torch

from zsrl.agents.base import Model
from zsrl.checkpoint import load_run_model
from zsrl.cli import main
from zsrl.config import load_run_config
from zsrl.envs import make_domain
from zsrl.errors import CheckpointError
from zsrl.training import resume_run, start_run

TINY = [
    "agent.z_dim=8", "agent.hidden_dim=32", "agent.embedding_dim=16", "agent.backward_hidden_dim=32",
    "train.batch_size=32", "train.log_every=5", "train.checkpoint_every=10", "train.progress=false",
    "train.compile=false",  # the maze preset compiles its update; a few-step run need not
]


def _params(run_dir):
    model = load_run_model(run_dir)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_run_layout(maze_data, tmp_path):
    run = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "run", [*TINY, "train.steps=20"])
    for name in ("config.json", "run.json", "metrics.csv", "model/model.safetensors", "checkpoint/training_state.pt"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["agent"]["z_dim"] == 8 and cfg["train"]["steps"] == 20
    meta = json.loads((run / "run.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"]
    assert meta["cpu_threads"] == torch.get_num_threads()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,time,updates_per_s,loss/fb") and len(rows) == 1 + 4


@pytest.mark.parametrize("compile", ["false", pytest.param("true", marks=pytest.mark.slow)])
def test_resume_reaches_identical_parameters(maze_data, tmp_path, compile):
    """Interrupted and resumed, a run reaches the parameters of an uninterrupted one bit for bit,
    eager or compiled (the maze preset compiles its update: regions on a CPU)."""
    opts = [o for o in TINY if not o.startswith("train.compile=")] + [f"train.compile={compile}"]
    full = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "full", [*opts, "train.steps=30"])
    # a run of 10 steps, trained on to step 30 from its last checkpoint
    part = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "part", [*opts, "train.steps=10"])
    resume_run(part, steps=30)
    assert json.loads((part / "config.json").read_text())["train"]["steps"] == 30
    a, b = _params(full), _params(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics log has each step once
    steps = [line.split(",")[0] for line in (part / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["5", "10", "15", "20", "25", "30"]
    if compile == "true":  # compiled kernels sum floats in another order than eager ones
        eager = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "eager", [*TINY, "train.steps=30"])
        assert any(not torch.equal(a[k], v) for k, v in _params(eager).items())


def test_a_run_with_ema_decay_exports_the_average_and_resumes_exactly(maze_data, tmp_path):
    """With ``agent.ema_decay`` the final model and the checkpoint's model are the parameter
    average (kept in the training state), and an interrupted run resumes to the same average."""
    opts = [*TINY, "agent.ema_decay=0.9"]
    full = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "full", [*opts, "train.steps=20"])
    part = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "part", [*opts, "train.steps=10"])
    resume_run(part, steps=20)
    a, b = _params(full), _params(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(full / "checkpoint/training_state.pt", weights_only=True)["agent"]
    online, average = state["module.model"], state["module.model_average"]
    assert int(average["updates"]) == 20
    assert all(torch.equal(a[k], average[f"module.{k}"]) for k in a)  # exported = the average
    assert any(not torch.equal(a[k], online[k]) for k in a)
    checkpoint_model = Model.load(full / "checkpoint")
    assert all(torch.equal(a[k], v) for k, v in checkpoint_model.state_dict().items())


def test_cli_trains_a_finished_run_on_and_refuses_other_changes(maze_data, tmp_path, capsys):
    """``zsrl train --resume RUN train.steps=N`` continues a finished run to N updates; any
    other override, or an N below the run's step, is refused and leaves the run as it was."""
    run = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "run", [*TINY, "train.steps=10"])
    config = (run / "config.json").read_text()
    for other in ("agent.z_dim=4", "train=5", "train.batch_size=8"):
        assert main(["train", "--resume", str(run), other]) == 2
        assert "other than train.steps=N" in " ".join(capsys.readouterr().err.split())
    assert main(["train", "--resume", str(run), "train.steps=5"]) == 2
    assert "is at step 10: train.steps=5 would take it back" in " ".join(capsys.readouterr().err.split())
    assert (run / "config.json").read_text() == config
    assert main(["train", "--resume", str(run), "train.steps=20"]) == 0
    assert load_run_model(run) is not None and json.loads((run / "model/manifest.json").read_text())["step"] == 20
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["5", "10", "15", "20"]


def test_resume_with_another_cpu_thread_count_warns(maze_data, tmp_path):
    run = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "run", [*TINY, "train.steps=10"])
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "cpu_threads": meta["cpu_threads"] + 1}))
    with pytest.warns(UserWarning, match=f"started with {meta['cpu_threads'] + 1} CPU threads and resumes with"):
        resume_run(run)


def test_truncated_checkpoint_and_wrong_domain(maze_data, tmp_path):
    run = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "run", [*TINY, "train.steps=10"])
    state = run / "checkpoint" / "training_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="training_state.pt is corrupt"):
        resume_run(run)
    with pytest.raises(CheckpointError, match="trained on domain 'point_mass_maze', not 'walker'"):
        load_run_model(run, make_domain("walker"))


def test_cli_errors_are_one_paragraph(maze_data, tmp_path, capsys):
    assert main(["train", "--config", "fb/point_mass_maze_cpu", "--dataset", str(maze_data),
                 "--out", str(tmp_path / "r"), "agent.zdim=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key zdim in agent" in err and "Traceback" not in err
    assert main(["train", "--config", "fb/walker_cpu", "--dataset", str(maze_data), "--out", str(tmp_path / "r")]) == 2
    assert "collected on domain 'point_mass_maze'" in capsys.readouterr().err


def test_cudagraphs_flag_falls_back_on_cpu(maze_data, tmp_path):
    with pytest.warns(UserWarning, match="needs a CUDA device"):
        start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "run", [*TINY, "train.steps=5", "train.cudagraphs=true"])


def test_config_round_trips_through_run_dir(maze_data, tmp_path):
    run = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "run", [*TINY, "train.steps=5"])
    from zsrl.config import run_config_from_dict

    cfg = run_config_from_dict(json.loads((run / "config.json").read_text()))
    assert cfg == load_run_config("fb/point_mass_maze_cpu", [*TINY, "train.steps=5"])


def test_periodic_evaluation_is_logged_and_does_not_change_training(maze_data, tmp_path):
    evals = [*TINY, "train.steps=10", "train.eval_every=5", "train.eval_episodes=1",
             "train.eval_reward_samples=64", "train.eval_tasks=[reach_top_left]"]
    with_eval = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "a", evals)
    without = start_run("fb/point_mass_maze_cpu", maze_data, tmp_path / "b", [*TINY, "train.steps=10"])
    rows = (with_eval / "eval.csv").read_text().splitlines()
    assert rows[0] == "step,return/reach_top_left" and [r.split(",")[0] for r in rows[1:]] == ["5", "10"]
    a, b = _params(with_eval), _params(without)
    assert all(torch.equal(a[k], b[k]) for k in a)
