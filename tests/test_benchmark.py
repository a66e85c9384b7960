"""scripts/benchmark.py: a rerun of the same command reuses finished jobs and resumes
interrupted runs instead of training them again."""

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
TINY = ["agent.z_dim=8", "agent.hidden_dim=32", "agent.embedding_dim=16", "agent.backward_hidden_dim=32",
        "train.batch_size=32", "train.log_every=5", "train.checkpoint_every=10", "train.device=cpu",
        "train.compile=false"]  # the maze preset compiles its update; a few-step run need not


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("zsrl_benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _forbid(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} called")
    return fail


def test_rerun_reuses_finished_jobs_resumes_interrupted_runs_and_restarts_changed_ones(
        bench, maze_data, tmp_path, monkeypatch):
    run = tmp_path / "fb_s0"
    job = bench.Job("fb/point_mass_maze_cpu", str(maze_data), str(run), 0, [*TINY, "train.steps=20"],
                    episodes=1, reward_samples=200, goals=False, progress=False)
    first = bench.run_job(dataclasses.replace(job))
    assert set(first.results["tasks"]) >= {"reach_top_left", "reach_bottom_right"}
    assert first.results["train_seconds"] > 0 and (run / bench.RESULT_FILE).is_file()

    real = {name: getattr(bench, name) for name in ("start_run", "resume_run", "evaluate_run")}
    for name in real:  # a finished job: nothing is trained or evaluated again
        monkeypatch.setattr(bench, name, _forbid(name))
    assert bench.run_job(dataclasses.replace(job)).results == first.results

    # interrupted after its last checkpoint: resumed from it (not restarted), then evaluated
    shutil.rmtree(run / "model")
    (run / bench.RESULT_FILE).unlink()
    resumed = []
    monkeypatch.setattr(bench, "resume_run", lambda d: resumed.append(d) or real["resume_run"](d))
    monkeypatch.setattr(bench, "evaluate_run", real["evaluate_run"])
    again = bench.run_job(dataclasses.replace(job))
    assert resumed == [run] and again.results["tasks"] == first.results["tasks"]

    # another budget is another job: its run is replaced
    started = []
    monkeypatch.setattr(bench, "start_run", lambda *a, **k: started.append(a[2]) or real["start_run"](*a, **k))
    bench.run_job(dataclasses.replace(job, overrides=[*TINY, "train.steps=30"]))
    assert started == [run] and resumed == [run]
    assert (run / "metrics.csv").read_text().splitlines()[-1].startswith("30,")


def test_a_run_from_before_a_field_was_added_is_the_same_run(bench, tmp_path):
    job = bench.Job("fb/point_mass_maze_cpu", str(tmp_path / "data"), str(tmp_path / "run"), 0, TINY,
                    episodes=1, reward_samples=None, goals=False, progress=False)
    run = Path(job.run_dir)
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"dataset": str((tmp_path / "data").resolve())}))
    stored = bench._resolved_config(job)
    del stored["agent"]["clip_grad_norm"]  # as written by a version without the field (it trained as the default)
    (run / "config.json").write_text(json.dumps(stored))
    assert bench._same_run(job, run)
    stored["agent"]["z_dim"] = 9  # another value is another run
    (run / "config.json").write_text(json.dumps(stored))
    assert not bench._same_run(job, run)
    (run / "config.json").write_text(json.dumps({"agent": {"name": "fb", "no_such_field": 1}}))
    assert not bench._same_run(job, run)


def test_training_seconds_add_up_resumed_segments(bench):
    rows = [{"time": t} for t in ("1.0", "2.5", "0.5", "1.5", "3.0")]
    assert bench._training_seconds(rows) == pytest.approx(5.5)


def test_earlier_domains_are_kept_and_a_broken_report_is_replaced(bench, tmp_path):
    path = tmp_path / "benchmark.json"
    assert bench._earlier_domains(path) == {}
    walker = {"protocol": {"seeds": [0, 1, 2]}, "agents": {}}
    path.write_text(json.dumps({"domains": {"walker": walker, "old_format": {"agents": {}}}}))
    assert bench._earlier_domains(path) == {"walker": walker}
    path.write_text("{truncated")
    assert bench._earlier_domains(path) == {}


def test_two_invocations_into_one_out_keep_each_others_domains(bench, tmp_path):
    path = tmp_path / "benchmark.json"
    walker, cheetah = ({"protocol": {"seeds": [s]}, "agents": {}} for s in (0, 1))
    bench.write_report(path, {"walker": walker})
    bench.write_report(path, {"cheetah": cheetah})  # another invocation, started before walker's write
    walker_again = {"protocol": {"seeds": [0, 1]}, "agents": {}}
    report = bench.write_report(path, {"walker": walker_again})
    assert json.loads(path.read_text()) == report
    assert report["domains"] == {"walker": walker_again, "cheetah": cheetah}


def test_invocations_writing_the_report_at_once_take_turns(bench, tmp_path):
    """Another invocation is between its read of benchmark.json and its write (it holds the
    file's writer lock): this one waits for it, then keeps its domains."""
    path, ready = tmp_path / "benchmark.json", tmp_path / "ready"
    other = subprocess.Popen([sys.executable, "-c", f"""
import json, pathlib, time
from zsrl.storage import atomic_write_json, writer_lock
with writer_lock({str(path)!r}, "report"):
    pathlib.Path({str(ready)!r}).touch()
    time.sleep(1.0)
    atomic_write_json(pathlib.Path({str(path)!r}), {{"domains": {{"cheetah": {{"protocol": {{}}}}}}}})
"""])
    try:
        while not ready.exists():
            assert other.poll() is None, "the other invocation died"
            time.sleep(0.01)
        report = bench.write_report(path, {"walker": {"protocol": {}}})
    finally:
        assert other.wait(timeout=30) == 0
    assert set(report["domains"]) == {"walker", "cheetah"} == set(json.loads(path.read_text())["domains"])


def test_goal_tables_score_both_rules_where_the_domain_has_a_reference_rule(bench, capsys):
    from zsrl.envs import make_domain

    assert set(bench.goal_rules(make_domain("point_mass_maze"))) == {"goals"}
    rules = bench.goal_rules(make_domain("walker"))
    assert "200 steps" in rules["goals"] and "101 steps" in rules["reference_goals"]
    jobs = [dataclasses.replace(bench.Job("fre/walker_cpu", "d", f"r{s}", s, [], 1, 10, True, False),
                                results={"tasks": {"stand": 1.0}, "goals": {"g": lo}, "reference_goals": {"g": hi},
                                         "reward_samples": 10, "train_seconds": 1.0, "updates_per_s": 1.0})
            for s, (lo, hi) in enumerate([(0.2, 0.6), (0.4, 0.8)])]
    summary = bench.summarise(jobs, ["stand"])
    assert summary["goals"]["g"]["success"] == pytest.approx(0.3)
    assert summary["reference_goals"]["g"]["success"] == pytest.approx(0.7)
    old = dataclasses.replace(jobs[1], results={k: v for k, v in jobs[1].results.items() if k != "reference_goals"})
    assert bench.summarise([jobs[0], old], ["stand"])["reference_goals"] == {}  # a result cached before the rule
    bench.print_table("walker", {"dataset": "d", "tasks": ["stand"], "agents": {"fre": summary}, "goal_rules": rules})
    out = capsys.readouterr().out
    assert "zsrl's rule" in out and "the reference's rule" in out
    assert "| fre | 30 [20, 40] |" in out and "| fre | 70 [60, 80] |" in out


def test_bench_updates_compares_variants_in_interleaved_blocks(capsys):
    """``bench_updates.py --compare``: the preset and each variant timed in turn, ratios to the
    preset block by block (the preset's own ratio is exactly 1)."""
    from scripts.bench_updates import compare, print_comparison

    rows = compare("fb/point_mass_maze_cpu", TINY, ["train.batch_size=16"], steps=2, warmup=1, blocks=3)
    assert [r["variant"] for r in rows] == ["(as configured)", "train.batch_size=16"]
    assert rows[0]["ratio"] == rows[0]["ratio_min"] == rows[0]["ratio_max"] == 1.0
    assert all(r["updates_per_s"] > 0 and r["blocks"] == 3 and not r["compile"] for r in rows)
    assert rows[1]["ratio_min"] <= rows[1]["ratio"] <= rows[1]["ratio_max"]
    print_comparison(rows)
    assert "interleaved blocks" in capsys.readouterr().out


@pytest.mark.slow
def test_the_partial_observability_protocol_trains_on_one_dataset_beside_fb_on_the_true_state(tmp_path):
    """A variant domain: its data collected on the domain itself, each agent trained with
    domain=VARIANT, ``--markov`` adds FB on the true state and '% true FB'."""
    import os
    import subprocess

    tiny = [x for o in [*TINY, "train.steps=10"] for a in ("fb", "fbm") for x in ("--set", f"{a}:{o}")]
    tiny += ["--set", "fbm:agent.memory_dim=8"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--agents", "fb", "fbm", "--markov", "--domains", "point_mass_maze+flickering",
         "--transitions", "2000", "--episodes", "1", "--reward-samples", "200", "--out", str(tmp_path), "--quiet",
         *tiny],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())["domains"]["point_mass_maze+flickering"]
    assert Path(report["dataset"]).name.startswith("point_mass_maze_sticky")  # collected on the domain itself
    assert set(report["agents"]) == {"fb", "fbm", "fb (true state)"}
    truth = sum(v["mean"] for v in report["agents"]["fb (true state)"]["tasks"].values())
    fbm = sum(v["mean"] for v in report["agents"]["fbm"]["tasks"].values())
    assert report["agents"]["fbm"]["pct_of_true_fb"] == pytest.approx(100 * fbm / truth)
    runs = tmp_path / "runs" / "point_mass_maze+flickering"
    assert json.loads((runs / "fbm_s0" / "config.json").read_text())["domain"] == "point_mass_maze+flickering"
    assert json.loads((runs / "fb_true_state_s0" / "config.json").read_text())["domain"] == "point_mass_maze"
    assert "% true FB" in done.stdout


@pytest.mark.slow
def test_jobs_submitted_through_submitit_train_data_parallel_and_fill_the_same_tables(tmp_path):
    """``--submitit local --procs-per-job 2``: every (agent, seed) job is a submitit job of two
    tasks that train one 2-process run; rank 0's results make the usual report."""
    pytest.importorskip("submitit")
    import os
    import subprocess

    tiny = [x for o in TINY + ["train.steps=20"] for x in ("--set", f"fb:{o}")]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--agents", "fb", "--domains", "point_mass_maze", "--seeds", "0,1",
         "--transitions", "2000", "--episodes", "1", "--reward-samples", "200", "--submitit", "local",
         "--procs-per-job", "2", "--out", str(tmp_path), "--quiet", *tiny],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())["domains"]["point_mass_maze"]
    assert report["agents"]["fb"]["seeds"] == [0, 1]
    for seed in (0, 1):
        run = tmp_path / "runs" / "point_mass_maze" / f"fb_s{seed}"
        assert json.loads((run / "run.json").read_text())["world_size"] == 2
        assert (run / "benchmark_result.json").is_file() and (run / "model" / "manifest.json").is_file()
