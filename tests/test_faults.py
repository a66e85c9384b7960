"""Fault injection: killed processes, damaged files, full disks, bad input, second writers.

Every case asserts an exact resume (the same weights and metric rows as an uninterrupted
run) or a clear one-paragraph error, and that nothing outside the run was touched. Kills are
real: children of a fork server (``faultkit``) die by SIGKILL at named points of the code
(``ZSRL_FAULT_POINT``) or at random moments.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_maze_dataset
from faultkit import ForkServer, metric_rows, snapshot

from zsrl.checkpoint import checkpoint_step, find_checkpoint, load_run_model
from zsrl.cli import main
from zsrl.data import DatasetError, OfflineDataset
from zsrl.errors import CheckpointError, LockedError, StorageError, UserError
from zsrl.training import resume_run, start_run

pytestmark = pytest.mark.slow  # behind `pytest -m slow`, with the learning tests

TINY = ["agent.z_dim=8", "agent.hidden_dim=32", "agent.embedding_dim=16", "agent.backward_hidden_dim=32",
        "train.batch_size=32", "train.log_every=7", "train.checkpoint_every=10", "train.progress=false",
        "train.steps=40", "train.compile=false"]  # the preset compiles; a few-step run need not
PRESET = "fb/point_mass_maze_cpu"


def _dataset(path: Path, obs_dim: int = 4, seed: int = 0) -> Path:
    return save_maze_dataset(path, obs_dim, seed)


def _params(run: Path) -> dict[str, torch.Tensor]:
    return dict(load_run_model(run).state_dict())


def _same_params(a: Path, b: Path) -> bool:
    pa, pb = _params(a), _params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A folder with a dataset, a fork server and an uninterrupted reference run."""
    root = tmp_path_factory.mktemp("lab")
    _dataset(root / "ds")
    server = ForkServer(root)
    t0 = time.perf_counter()
    code, out = server.run(["train", "--config", PRESET, "--dataset", "ds", "--out", "ref", *TINY], root)
    assert code == 0, out
    server.duration = time.perf_counter() - t0
    yield root, server
    server.close()


def _train_argv(run: str) -> list[str]:
    return ["train", "--config", PRESET, "--dataset", "ds", "--out", run, *TINY]


def _assert_exact(root: Path, run: str) -> None:
    assert _same_params(root / "ref", root / run)
    assert metric_rows(root / run) == metric_rows(root / "ref")
    leftovers = [p.name for p in (root / run).iterdir() if p.name.endswith(".partial")]
    assert leftovers == [], leftovers


# ---- kills during training -------------------------------------------------------------
KILL_POINTS = [
    # (fault point, what must hold right after the kill)
    ("metrics:row@1", "before the first checkpoint"),  # step 7: a metric row, no checkpoint yet
    ("metrics:row@4", "rows past the checkpoint"),      # step 28: checkpoint 20, rows 21 and 28 after it
    ("checkpoint:written@2", "complete copy unswapped"),  # step 20 written, not swapped in
    ("swap:checkpoint@2", "between the two renames"),     # checkpoint/ gone, .checkpoint.old is step 10
    ("model:written", "final model unswapped"),
]


@pytest.mark.parametrize(("point", "_why"), KILL_POINTS)
def test_kill_at_named_point_then_resume_is_exact(lab, point, _why):
    root, server = lab
    run = f"kill_{point.replace(':', '_').replace('@', '_')}"
    before = snapshot(root, skip=(root / run, root / "ref"))
    code, out = server.run(_train_argv(run), root, {"ZSRL_FAULT_POINT": point})
    assert code == -signal.SIGKILL, out
    step = checkpoint_step(root / run)
    if point == "metrics:row@1":  # nothing checkpointed yet: the resume starts again from step 0
        assert step is None and metric_rows(root / run)[-1][0] == "7"
    else:
        assert step is not None and find_checkpoint(root / run) is not None  # a reader finds a complete one
    if point == "metrics:row@4":
        assert step == 20 and metric_rows(root / run)[-1][0] == "28"
    if point.startswith("swap"):
        assert not (root / run / "checkpoint").exists() and step == 10
        load_run_model(root / run)  # readers fall back to the complete previous copy
    code, out = server.run(["train", "--resume", run], root)
    assert code == 0, out
    _assert_exact(root, run)
    assert snapshot(root, skip=(root / run, root / "ref")) == before  # nothing else touched


FRE_TINY = ["agent.z_dim=8", "agent.context_size=4", "agent.trajectory_context=2", "agent.decoder_queries=2",
            "agent.emb_dim=8", "agent.mlp_dim=16", "agent.num_layers=1", "agent.hidden_dim=16",
            "agent.hidden_layers=1", "agent.num_random_nets=8", "agent.encoder_steps=15",
            "agent.prompt_bank_size=16", "train.batch_size=16", "train.log_every=7", "train.checkpoint_every=10",
            "train.progress=false", "train.steps=40"]


def test_fre_across_its_phase_switch_resumes_exactly_after_a_kill(lab):
    """FRE switches from its encoder phase to its policy phase at step 15: killed at step 14, it
    resumes from its step-10 checkpoint and must switch at the same step."""
    root, server = lab
    argv = ["train", "--config", "fre/point_mass_maze_cpu", "--dataset", "ds", *FRE_TINY, "--out"]
    code, out = server.run([*argv, "fre_ref"], root)
    assert code == 0, out
    code, out = server.run([*argv, "fre_kill"], root, {"ZSRL_FAULT_POINT": "metrics:row@2"})  # step 14
    assert code == -signal.SIGKILL and checkpoint_step(root / "fre_kill") == 10  # resumes across the switch
    code, out = server.run(["train", "--resume", "fre_kill"], root)
    assert code == 0, out
    assert _same_params(root / "fre_ref", root / "fre_kill")
    assert metric_rows(root / "fre_kill") == metric_rows(root / "fre_ref")


def test_kill_at_random_moments_then_resume_is_exact(lab):
    root, server = lab
    rng = random.Random(12)
    killed = 0
    for i in range(2):
        run = f"random_kill_{i}"
        pid = server.start(_train_argv(run), root)
        time.sleep(rng.uniform(0.05, 0.9) * server.duration)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it finished first: resuming a complete run must be exact too
            pass
        killed += server.wait()[0] == -signal.SIGKILL
        code, out = server.run(["train", "--resume", run], root)
        if code != 0:  # killed before run.json existed: nothing to resume, nothing lost
            assert "not a zsrl run directory" in out, out
            continue
        _assert_exact(root, run)
    assert killed >= 1


@pytest.mark.parametrize(("sig", "point", "step"), [("TERM", "checkpoint:written@1", 10), ("INT", "metrics:row@2", 14)])
def test_sigterm_and_ctrl_c_save_the_current_step(lab, sig, point, step):
    root, server = lab
    run = f"stopped_{sig}"
    code, out = server.run(_train_argv(run), root, {"ZSRL_FAULT_POINT": point, "ZSRL_FAULT_SIGNAL": sig})
    assert code == 128 + getattr(signal, f"SIG{sig}"), out
    assert f"at step {step}" in out and f"zsrl train --resume {run}" in out and "Traceback" not in out
    assert checkpoint_step(root / run) == step
    code, out = server.run(["train", "--resume", run], root)
    assert code == 0, out
    _assert_exact(root, run)


def test_damaged_metric_rows_past_the_checkpoint(lab):
    """A torn last row is dropped and logged again; a garbled earlier row is a clear error."""
    root, server = lab
    code, _ = server.run(_train_argv("torn"), root, {"ZSRL_FAULT_POINT": "metrics:row@4"})
    assert code == -signal.SIGKILL
    metrics = root / "torn" / "metrics.csv"
    shutil.copy(metrics, root / "torn.csv")
    metrics.write_text(metrics.read_text()[:-25])  # the last row cut mid-write
    code, out = server.run(["train", "--resume", "torn"], root)
    assert code == 0, out
    _assert_exact(root, "torn")
    code, _ = server.run(_train_argv("garbled"), root, {"ZSRL_FAULT_POINT": "metrics:row@4"})
    lines = (root / "garbled" / "metrics.csv").read_text().splitlines(keepends=True)
    lines[1] = "garbage\n"
    (root / "garbled" / "metrics.csv").write_text("".join(lines))
    code, out = server.run(["train", "--resume", "garbled"], root)
    assert code == 2 and "metrics.csv is corrupt at line 2" in out and "Traceback" not in out


# ---- kills during collection -----------------------------------------------------------
COLLECT = ["collect", "--domain", "point_mass_maze", "--collector", "random", "--transitions", "100",
           "--num-envs", "2", "--no-progress", "--out"]


def test_killed_collect_leaves_nothing_that_loads_and_is_cleaned_up(lab):
    root, server = lab
    for point in ("collect:collected", "written:coll"):
        code, _ = server.run([*COLLECT, "coll"], root, {"ZSRL_FAULT_POINT": point})
        assert code == -signal.SIGKILL
        assert not (root / "coll").exists()
        with pytest.raises(DatasetError, match="does not exist"):
            OfflineDataset.load(root / "coll")
    assert list(root.glob(".coll.*.partial"))  # the debris of the second kill ...
    code, out = server.run([*COLLECT, "coll"], root)  # ... is removed by the next writer
    assert code == 0, out
    assert not list(root.glob(".coll.*")) and len(OfflineDataset.load(root / "coll")) == 100


def test_sigterm_during_collect_leaves_no_debris(lab):
    root, server = lab
    code, out = server.run([*COLLECT, "term"], root, {"ZSRL_FAULT_POINT": "written:term", "ZSRL_FAULT_SIGNAL": "TERM"})
    assert code == 143 and "terminated; nothing partial was left behind" in out, out
    assert not list(root.glob("*term*")) and not list(root.glob(".term*"))


def test_collect_overwrite_killed_between_renames_keeps_a_complete_copy(lab):
    root, server = lab
    code, out = server.run([*COLLECT, "over", "--seed", "1"], root)
    assert code == 0, out
    first = OfflineDataset.load(root / "over").data["observation"].clone()
    code, _ = server.run([*COLLECT, "over", "--overwrite", "--seed", "2"], root, {"ZSRL_FAULT_POINT": "swap:over"})
    assert code == -signal.SIGKILL and not (root / "over").exists()
    assert torch.equal(OfflineDataset.load(root / "over").data["observation"], first)  # the old copy
    code, out = server.run([*COLLECT, "over", "--overwrite", "--seed", "2"], root)
    assert code == 0, out
    assert not torch.equal(OfflineDataset.load(root / "over").data["observation"], first)
    assert not list(root.glob(".over.*"))


# ---- one writer per run ------------------------------------------------------------------
def test_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(lab):
    root, server = lab
    shutil.copytree(root / "ref", root / "busy")
    before = snapshot(root / "busy")
    pid = server.start([], root, hold_lock=str(root / "busy"))
    lock = root / ".busy.lock"
    try:
        for _ in range(200):
            if lock.is_file() and lock.read_text():
                break
            time.sleep(0.05)
        with pytest.raises(LockedError, match=f"being written by process {pid}"):
            start_run(PRESET, root / "ds", root / "busy", TINY, overwrite=True)
        with pytest.raises(LockedError):
            resume_run(root / "busy")
        assert snapshot(root / "busy") == before
    finally:
        os.kill(pid, signal.SIGKILL)
        server.wait()
    assert lock.exists()  # the dead writer's lock file is still there, and stale
    resume_run(root / "busy")  # "already complete": the lock was taken over
    assert not lock.exists()


# ---- every file of a run and of a dataset truncated or garbled ----------------------------
def _damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "truncate":
        file.write_bytes(data[: len(data) // 2])
    else:
        mid = len(data) // 2
        file.write_bytes(data[:mid] + b"\xff" * min(16, len(data) - mid) + data[mid + 16:])


def _run_files(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())


def test_every_run_file_damaged_gives_a_clear_error_or_an_intact_run(lab, tmp_path):
    root, _ = lab
    ref_params = _params(root / "ref")
    files = _run_files(root / "ref")
    assert {"config.json", "run.json", "metrics.csv", "checkpoint/training_state.pt", "model/model.safetensors",
            ".checkpoint.old/manifest.json"} <= set(files)
    outcomes = {}
    for rel in files:
        for how in ("truncate", "garble"):
            run = tmp_path / f"r{len(outcomes)}"
            shutil.copytree(root / "ref", run)
            _damage(run / rel, how)
            errors = []
            for action in (resume_run, load_run_model):
                try:
                    action(run)
                except UserError as exc:
                    errors.append(str(exc))
            if errors:  # a clear error, naming the damaged file
                assert any(Path(rel).name in e or "corrupt" in e for e in errors), (rel, how, errors)
            else:  # the damage did not matter: the run is intact
                assert rel in ("metrics.csv",) or rel.startswith(".checkpoint.old/"), (rel, how)
                model = load_run_model(run).state_dict()
                assert all(torch.equal(model[k], ref_params[k]) for k in ref_params)
            outcomes[(rel, how)] = "error" if errors else "intact"
    detected = {k for k, v in outcomes.items() if v == "error"}
    assert all((f, h) in detected for f in files for h in ("truncate", "garble")
               if f.startswith(("checkpoint/", "model/")) or f in ("config.json", "run.json"))


def test_every_dataset_file_damaged_is_a_clear_error(tmp_path):
    clean = _dataset(tmp_path / "clean")
    files = [p.relative_to(clean).as_posix() for p in clean.rglob("*") if p.is_file()]
    assert len(files) >= 8
    for rel in files:
        for how in ("truncate", "garble"):
            ds = tmp_path / "bad"
            shutil.rmtree(ds, ignore_errors=True)
            shutil.copytree(clean, ds)
            _damage(ds / rel, how)
            with pytest.raises(UserError, match="corrupt|truncated|not valid JSON|cannot be read|re-collect"):
                OfflineDataset.load(ds)


def test_random_bytes_in_training_state_never_suggest_unsafe_loading(lab, tmp_path):
    root, _ = lab
    run = shutil.copytree(root / "ref", tmp_path / "run")
    state = run / "checkpoint" / "training_state.pt"
    state.write_bytes(os.urandom(4096))
    manifest = json.loads((run / "checkpoint" / "manifest.json").read_text())
    manifest["sha256"]["training_state.pt"] = __import__("hashlib").sha256(state.read_bytes()).hexdigest()
    (run / "checkpoint" / "manifest.json").write_text(json.dumps(manifest))  # checksum forged too
    with pytest.raises(CheckpointError, match="training_state.pt is truncated or corrupt") as err:
        resume_run(run)
    assert "weights_only" not in str(err.value) and ".checkpoint.old" in str(err.value)


def test_model_config_without_obs_dim(lab, tmp_path):
    root, _ = lab
    run = shutil.copytree(root / "ref", tmp_path / "run")
    for sub in ("model", "checkpoint", ".checkpoint.old"):
        cfg = json.loads((run / sub / "config.json").read_text())
        del cfg["obs_dim"]
        (run / sub / "config.json").write_text(json.dumps(cfg))
        (run / sub / "manifest.json").unlink()  # as a model written by hand or by an old zsrl
    with pytest.raises(CheckpointError, match="lacks obs_dim"):
        load_run_model(run)


# ---- full disk, unreadable files ---------------------------------------------------------
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(lab, tmp_path, monkeypatch):
    root, _ = lab
    run = start_run(PRESET, root / "ds", tmp_path / "run", [*TINY, "train.steps=20"])
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["steps"] = 40
    (run / "config.json").write_text(json.dumps(cfg))
    import zsrl.agents.model_files
    import zsrl.checkpoint

    real = zsrl.checkpoint.atomic_write_bytes

    def full(path, data):
        if ".partial" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(zsrl.checkpoint, "atomic_write_bytes", full)
    monkeypatch.setattr(zsrl.agents.model_files, "atomic_write_bytes", full)
    with pytest.raises(StorageError, match="cannot write the checkpoint of step 30: no space left on device") as err:
        resume_run(run)
    assert "checkpoint of step 20 is intact" in str(err.value) and f"--resume {run}" in str(err.value)
    assert checkpoint_step(run) == 20 and not list(run.glob("*.partial"))
    monkeypatch.undo()
    resume_run(run)
    assert checkpoint_step(run) == 40


def test_disk_full_during_a_dataset_write(tmp_path, monkeypatch):
    import zsrl.data

    data = OfflineDataset.load(_dataset(tmp_path / "ds"))
    monkeypatch.setattr(zsrl.data.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1000))
    with pytest.raises(StorageError, match="only 0 MiB are free"):
        data.save(tmp_path / "new")
    monkeypatch.undo()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(data.data), "memmap", full)
    with pytest.raises(StorageError, match="cannot write the dataset .*no space left on device. Free some space"):
        data.save(tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no partial, no lock left


def test_unreadable_and_non_object_meta_json(tmp_path, monkeypatch):
    ds = _dataset(tmp_path / "ds")
    (ds / "meta.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="holds list JSON, not an object"):
        OfflineDataset.load(ds)
    real = Path.read_text

    def denied(self, *a, **k):
        if self.name == "meta.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(StorageError, match="cannot read .*meta.json: permission denied"):
        OfflineDataset.load(ds)


# ---- divergence ----------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["loss", "parameter"])
def test_divergence_stops_without_overwriting_the_good_checkpoint(tmp_path, monkeypatch, what):
    import zsrl.agents.fb

    ds = _dataset(tmp_path / "ds")
    real = zsrl.agents.fb.FBAgent.update
    calls = {"n": 0}

    def update(self, batch):
        calls["n"] += 1  # the first call only probes the metric names: step = calls - 1
        metrics = real(self, batch)
        if calls["n"] - 1 == (13 if what == "loss" else 14):  # 14: a log step, metrics still finite
            if what == "loss":
                metrics["loss/fb"] = metrics["loss/fb"] * float("nan")
            else:
                with torch.no_grad():
                    next(self.model.parameters()).fill_(float("inf"))
        return metrics

    monkeypatch.setattr(zsrl.agents.fb.FBAgent, "update", update)
    with pytest.raises(UserError, match="training diverged") as err:
        start_run(PRESET, ds, tmp_path / "run", TINY)
    expected = "loss/fb became non-finite" if what == "loss" else "parameter model.forward_map."
    assert expected in str(err.value) and f"at step {13 if what == 'loss' else 14}." in str(err.value)
    assert "last good checkpoint (step 10)" in str(err.value)
    assert checkpoint_step(tmp_path / "run") == 10 and not (tmp_path / "run" / "model").exists()
    assert all(torch.isfinite(p).all() for p in load_run_model(tmp_path / "run").parameters())


# ---- overwrite safety ------------------------------------------------------------------------
def test_overwrite_removes_only_what_zsrl_wrote(tmp_path, monkeypatch, capsys):
    data_root = tmp_path / "data"
    ds = _dataset(data_root / "maze")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("precious")
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    base = ["train", "--config", PRESET, "--dataset", str(ds), *TINY, "--overwrite", "--out"]
    cases = {
        ".": "working directory",
        str(data_root): "contains the dataset",
        str(ds): "is the dataset",
        str(ds / "run"): "lies inside the dataset",
        str(foreign): "not something zsrl wrote",
        str(tmp_path): "contains the dataset",
    }
    for out, message in cases.items():
        assert main([*base, out]) == 2, out
        err = capsys.readouterr().err
        assert message in " ".join(err.split()) and "Traceback" not in err, (out, err)
    collect = ["collect", "--domain", "point_mass_maze", "--transitions", "10", "--overwrite", "--out"]
    for out in (".", str(foreign), str(data_root)):
        assert main([*collect, out]) == 2
        assert "--overwrite will not remove" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    # a run zsrl wrote is replaced
    assert main([*base, str(tmp_path / "run")]) == 0
    assert main([*base, str(tmp_path / "run")]) == 0
    assert main([*collect, str(tmp_path / "run")]) == 2  # a run is not a dataset
    assert "it is a zsrl run" in " ".join(capsys.readouterr().err.split())


# ---- validation before any folder is created --------------------------------------------------
@pytest.mark.parametrize(("override", "key"), [
    ("train.batch_size=1", "train.batch_size"), ("train.batch_size=0", "train.batch_size"),
    ("agent.discount=1.5", "agent.discount"), ("agent.lr_f=-1", "agent.lr_f"), ("train.steps=-5", "train.steps"),
    ("train.log_every=0", "train.log_every"), ("train.checkpoint_every=0", "train.checkpoint_every"),
    ("agent.tau=.nan", "agent.tau"),
])
def test_bad_values_name_the_key_before_any_folder_exists(tmp_path, capsys, override, key):
    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "runs" / "r"
    assert main(["train", "--config", PRESET, "--dataset", str(ds), "--out", str(out), *TINY, override]) == 2
    err = capsys.readouterr().err
    assert f"{key} = " in err and "out of range" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_unknown_training_device_is_refused_before_any_folder_exists(tmp_path):
    with pytest.raises(UserError, match="device 'gpu0' is not a device torch knows"):
        start_run(PRESET, _dataset(tmp_path / "ds"), tmp_path / "run", [*TINY, "train.device=gpu0"])
    assert not (tmp_path / "run").exists()


def test_dataset_of_the_wrong_observation_size_is_refused(tmp_path):
    ds = _dataset(tmp_path / "ds", obs_dim=5)
    with pytest.raises(DatasetError, match="observations of size 5 .* domain 'point_mass_maze' has 4"):
        start_run(PRESET, ds, tmp_path / "run", TINY)
    assert not (tmp_path / "run").exists()


# ---- the dataset a run resumes on ---------------------------------------------------------------
def test_resume_checks_the_dataset_and_accepts_a_moved_one(lab, tmp_path, capsys):
    root, _ = lab
    ds = _dataset(tmp_path / "ds")
    run = start_run(PRESET, ds, tmp_path / "run", [*TINY, "train.steps=10"])
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["steps"] = 20
    (run / "config.json").write_text(json.dumps(cfg))
    moved = tmp_path / "moved"
    ds.rename(moved)
    assert main(["train", "--resume", str(run)]) == 2
    assert "--dataset NEW_PLACE" in " ".join(capsys.readouterr().err.split())
    _dataset(ds, seed=1)  # a different dataset at the old place
    with pytest.raises(DatasetError, match="is not the one run .* started on"):
        resume_run(run)
    with pytest.raises(DatasetError, match="is not the one"):
        resume_run(run, dataset=root / "ds")
    assert checkpoint_step(run) == 10
    assert main(["train", "--resume", str(run), "--dataset", str(moved)]) == 0
    assert checkpoint_step(run) == 20
    assert json.loads((run / "run.json").read_text())["dataset"] == str(moved.resolve())


def test_resume_without_its_checkpoint_stops_instead_of_restarting(lab, tmp_path):
    root, _ = lab
    run = shutil.copytree(root / "ref", tmp_path / "run")
    shutil.rmtree(run / "checkpoint")
    shutil.rmtree(run / ".checkpoint.old")
    rows = (run / "metrics.csv").read_text()
    with pytest.raises(UserError, match="has no complete checkpoint but trained before"):
        resume_run(run)
    assert (run / "metrics.csv").read_text() == rows


def test_files_follow_the_umask(lab):
    root, _ = lab
    mode = 0o777 & ~(umask := os.umask(0))
    os.umask(umask)
    for path in (root / "ref" / "checkpoint", root / "ref" / "model", root / "ds", root / "ds" / "tensors"):
        assert path.stat().st_mode & 0o777 == mode, path
    assert (root / "ref" / "checkpoint" / "training_state.pt").stat().st_mode & 0o777 == mode & 0o666


# ---- plug-ins and collection arguments that used to end in tracebacks ------------------------
PLUGIN = '''
import gymnasium
import numpy as np

from zsrl.envs.gym_domain import GymDomain


class NotADomain:
    pass


class UnknownEnv(GymDomain):
    env_id = "NoSuchEnv-v9"


class DiscreteActions(GymDomain):
    env_id = "CartPole-v1"


class _Faulty(gymnasium.Wrapper):
    """Pendulum that fails at its third step: by raising, by changing its observation's shape,
    or by returning NaN."""

    def __init__(self, env, how):
        super().__init__(env)
        self.how, self.steps = how, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == 3:
            if self.how == "raise":
                raise RuntimeError("the simulator broke")
            obs = np.full(4, 0.5, np.float32) if self.how == "shape" else obs * np.nan
        return obs, reward, terminated, truncated, info


class Raises(GymDomain):
    env_id = "Pendulum-v1"
    how = "raise"

    def _raw_env(self, render_mode, episode_length=None):
        return _Faulty(super()._raw_env(render_mode, episode_length), self.how)


class VaryingShape(Raises):
    how = "shape"


class NaNObservation(Raises):
    how = "nan"
'''


@pytest.mark.parametrize(("args", "message"), [
    (["--domain", "faulty_plugin:NotADomain"], "gives a NotADomain, not a zsrl Domain"),
    (["--domain", "faulty_plugin:UnknownEnv"], "gymnasium has no env 'NoSuchEnv-v9'"),
    (["--domain", "faulty_plugin:DiscreteActions"], "zsrl needs a bounded continuous (Box) action space; 'CartPole-v1' has Discrete(2)"),
    (["--domain", "faulty_plugin:Raises"], "the environment of domain 'Pendulum-v1' failed after 8 transitions: RuntimeError: the simulator broke"),
    (["--domain", "faulty_plugin:VaryingShape"], "the environment of domain 'Pendulum-v1' failed after 8 transitions: ValueError"),
    (["--domain", ":X"], "':X' is not of the form 'package.module:Name'"),
    (["--domain", "point_mass_maze", "--num-envs", "0"], "--num-envs must be a positive integer, got 0"),
    (["--domain", "point_mass_maze", "--transitions", "0"], "--transitions must be a positive integer, got 0"),
    (["--domain", "point_mass_maze", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--domain", "point_mass_maze", "--collector", "rnd", "--device", "gpu0"], "device 'gpu0' is not a device torch knows"),
])
def test_bad_collect_input_is_one_paragraph(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "faulty_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    argv = ["collect", "--collector", "random", "--transitions", "10", "--out", "ds", "--no-progress", *args]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["faulty_plugin.py"]


def test_unreadable_checkpoint_file(lab, tmp_path, monkeypatch):
    import zsrl.checkpoint

    root, _ = lab
    run = shutil.copytree(root / "ref", tmp_path / "run")
    real = zsrl.checkpoint.sha256_file

    def denied(path):
        if Path(path).name == "training_state.pt":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(zsrl.checkpoint, "sha256_file", denied)
    with pytest.raises(StorageError, match="cannot read .*training_state.pt: permission denied"):
        resume_run(run)


def test_debris_cleanup_spares_the_partial_of_a_similarly_named_directory(tmp_path):
    from zsrl.storage import make_temp_dir, remove_stale_partials

    mine, other = make_temp_dir(tmp_path / "maze"), make_temp_dir(tmp_path / "maze.v2")
    assert remove_stale_partials(tmp_path / "maze") == [mine]
    assert other.is_dir() and not mine.exists()


# ---- the pipeline run again -------------------------------------------------------------------
def test_a_pipeline_run_again_reuses_or_refuses_and_never_deletes(tmp_path, capsys):
    """Run again on the same --out, the pipeline continues its own run; a run trained on by
    hand (another config) or a dataset of another collection is refused, untouched."""
    out = tmp_path / "qs"
    tiny = [t for t in TINY if not t.startswith("train.progress")]
    args = ["pipeline", "--out", str(out), "--transitions", "2000", "--episodes", "1", "--no-progress", *tiny]
    assert main(args) == 0
    before = metric_rows(out / "run")
    assert main(args) == 0  # the same config: the finished run is evaluated again, not retrained
    assert "continuing the run" in capsys.readouterr().out and metric_rows(out / "run") == before
    assert main(["train", "--resume", str(out / "run"), "train.steps=50"]) == 0
    trained_on = metric_rows(out / "run")
    capsys.readouterr()
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds a run with another config: train.steps 50 (asked: 40)" in err and "Traceback" not in err
    assert metric_rows(out / "run") == trained_on and (out / "run" / "model").is_dir()
    assert main(["pipeline", "--out", str(out), "--transitions", "3000", "--seed", "1", "--episodes", "1", *tiny]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds another dataset than the one asked for: seed 0 (asked: 1), num_transitions 2000 (asked: 3000)" in err


# ---- evaluations: one writer, into their own folders only ------------------------------------
def _hold(server, root: Path, path: Path) -> int:
    """A child that holds ``path``'s writer lock until killed; its pid."""
    pid = server.start([], root, hold_lock=str(path))
    lock = path.parent / f".{path.name}.lock"
    for _ in range(200):
        if lock.is_file() and lock.read_text():
            break
        time.sleep(0.05)
    return pid


def test_an_evaluation_being_written_is_not_written_by_a_second(lab, tmp_path, capsys):
    """The existence check, the evaluation and its writes happen under the folder's lock:
    of two evaluations into one --out, the second is refused before it evaluates."""
    root, server = lab
    out = tmp_path / "e"
    pid = _hold(server, root, out)
    try:
        assert main(["eval", str(root / "ref"), "--out", str(out), "--episodes", "1", "--tasks", "reach_top_left"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"evaluation {out} is being written by process {pid}" in err
        assert not out.exists()
    finally:
        os.kill(pid, signal.SIGKILL)
        server.wait()
    pid = _hold(server, root, tmp_path / "r.json")
    try:
        argv = ["eval", str(root / "ref"), "--out", str(tmp_path / "e2"), "--json", str(tmp_path / "r.json"),
                "--episodes", "1", "--tasks", "reach_top_left"]
        assert main(argv) == 2
        assert "--json file" in capsys.readouterr().err and not (tmp_path / "e2").exists()
    finally:
        os.kill(pid, signal.SIGKILL)
        server.wait()


def test_eval_writes_neither_over_a_runs_or_datasets_files_nor_into_their_folders(lab, tmp_path, capsys):
    root, _ = lab
    run = shutil.copytree(root / "ref", tmp_path / "run")
    ds = shutil.copytree(root / "ds", tmp_path / "ds")
    before = snapshot(tmp_path)
    base = ["eval", str(run), "--episodes", "1", "--tasks", "reach_top_left"]
    for extra, message in [
        (["--json", str(run / "config.json"), "--overwrite"], "is not a result that zsrl eval wrote"),
        (["--json", str(ds / "meta.json"), "--overwrite"], "is not a result that zsrl eval wrote"),
        (["--json", str(tmp_path)], "is a folder"),
        (["--out", str(ds)], "is a dataset"),
        (["--out", str(run / "model")], "is a model or checkpoint folder"),
        (["--out", str(run / "checkpoint")], "is a model or checkpoint folder"),
        (["--out", str(run)], "is a run's own folder"),
    ]:
        assert main([*base, *extra]) == 2, extra
        err = " ".join(capsys.readouterr().err.split())
        assert message in err and "Traceback" not in err, (extra, err)
    assert snapshot(tmp_path) == before
    assert main([*base, "--json", str(tmp_path / "r.json")]) == 0  # a results file of its own may be replaced
    assert main([*base, "--json", str(tmp_path / "r.json"), "--overwrite"]) == 0


def test_overwrite_replaces_a_run_only_when_it_holds_nothing_else(lab, tmp_path, capsys):
    """A run folder with an evaluation, a nested run or files of the user's inside is not
    replaced: the error names them; without them --overwrite proceeds."""
    root, _ = lab
    run = shutil.copytree(root / "ref", tmp_path / "run")
    assert main(["eval", str(run), "--episodes", "1", "--tasks", "reach_top_left"]) == 0
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    with pytest.raises(UserError, match=r"besides the run it holds eval/, notes.txt .*Move them away"):
        start_run(PRESET, root / "ds", run, TINY, overwrite=True)
    assert snapshot(run) == before
    shutil.rmtree(run / "eval")
    (run / "notes.txt").unlink()
    start_run(PRESET, root / "ds", run, [*TINY, "train.steps=20"], overwrite=True)
    assert checkpoint_step(run) == 20
    ds = shutil.copytree(root / "ds", tmp_path / "ds")
    (ds / "mine.csv").write_text("1")
    assert main(["collect", "--domain", "point_mass_maze", "--collector", "random", "--transitions", "20",
                 "--out", str(ds), "--overwrite", "--no-progress"]) == 2
    assert "besides the dataset it holds mine.csv" in " ".join(capsys.readouterr().err.split())


def test_an_evaluation_of_a_run_replaced_meanwhile_is_refused(lab, tmp_path, monkeypatch):
    import zsrl.evaluation

    root, _ = lab
    run = shutil.copytree(root / "ref", tmp_path / "run")
    real = zsrl.evaluation.evaluate_goals

    def replaced_meanwhile(*args, **kwargs):
        data = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**data, "started": "later"}))
        return real(*args, **kwargs)

    monkeypatch.setattr(zsrl.evaluation, "evaluate_goals", replaced_meanwhile)
    with pytest.raises(CheckpointError, match="was replaced .* while it was being evaluated"):
        zsrl.evaluation.evaluate_run(run, tasks=["reach_top_left"], episodes=1)


def test_files_without_checksums_are_not_loaded_unverified(lab, tmp_path):
    """A dataset or checkpoint whose checksum table is gone, or misses a file, is refused:
    anyone can edit a JSON file, so a missing table is no licence to skip verification."""
    root, _ = lab
    ds = shutil.copytree(root / "ds", tmp_path / "ds")
    meta = json.loads((ds / "meta.json").read_text())
    (ds / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    with pytest.raises(DatasetError, match="cannot be verified .*no checksum table"):
        OfflineDataset.load(ds)
    (ds / "meta.json").write_text(json.dumps(meta))
    first = next(iter(meta["sha256"]))
    (ds / "meta.json").write_text(json.dumps({**meta, "sha256": {k: v for k, v in meta["sha256"].items() if k != first}}))
    with pytest.raises(DatasetError, match=f"cannot be verified \\({first} have no checksum"):
        OfflineDataset.load(ds)
    run = shutil.copytree(root / "ref", tmp_path / "run")
    manifest = json.loads((run / "checkpoint" / "manifest.json").read_text())
    (run / "checkpoint" / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "sha256"}))
    with pytest.raises(CheckpointError, match="cannot be verified .*no checksum table"):
        resume_run(run)
    (run / "checkpoint" / "manifest.json").write_text(json.dumps(manifest))
    (run / "checkpoint" / "extra.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="its files extra.pt have no checksum"):
        resume_run(run)


# ---- settings that would answer wrongly, silently, or not fit ----------------------------------
def test_settings_that_would_answer_wrongly_or_not_fit_are_refused(lab, tmp_path, capsys, monkeypatch):
    from conftest import make_arrays

    import zsrl.training
    from zsrl.data import from_numpy

    root, _ = lab
    ds = root / "ds"

    def refused(argv, message):
        assert main(argv) == 2, argv
        err = " ".join(capsys.readouterr().err.split())
        assert message in err and "Traceback" not in err, (argv, err)

    out = str(tmp_path / "r")
    train = ["train", "--config", PRESET, "--dataset", str(ds), "--out", out, *TINY]
    refused([*train, "task=reach_top_left"], "learns without rewards: task=reach_top_left is for a supervised agent")
    refused([*train, "train.batch_size=100000"], "train.batch_size=100000 is larger than the dataset")
    refused([*train, "train.steps=10000000000000"], "train.steps = 10000000000000 is out of range")
    monkeypatch.setattr(zsrl.training, "available_memory", lambda device: 2**10)
    refused(train, "train.batch_size=32 needs about")
    monkeypatch.undo()
    assert not Path(out).exists()
    collect = ["collect", "--domain", "point_mass_maze", "--transitions", "10", "--out", out, "--no-progress"]
    refused([*collect, "--collector", "random", "--hold", "10"], "--hold set the sticky collector, not 'random'")
    refused([*collect, "--num-envs", "3000"], "--num-envs 3000: at most 256")
    ev = ["eval", str(root / "ref"), "--out", str(tmp_path / "e"), "--episodes", "1"]
    refused([*ev, "--seeds", "0,0"], "repeat one; each seed counts once")
    refused([*ev, "--tasks", ""], "nothing to evaluate")
    refused([*ev, "--tasks", "reach_top_left", "--oracle", str(root / "ref")], "is a fb run, not a supervised oracle")
    oracle = tmp_path / "oracle"
    start_run("td3/point_mass_maze_cpu", ds, oracle, ["task=reach_top_left", "train.steps=4", "train.batch_size=32",
                                                      "train.progress=false", "agent.hidden_dim=16"])
    refused(["eval", str(oracle), "--goals", "all", "--out", str(tmp_path / "e2")], "cannot be prompted with")
    (tmp_path / "odd.py").write_text("def none(o, a, n):\n    return None\ndef cplx(o, a, n):\n    return 1j * o[:, 0]\n")
    monkeypatch.chdir(tmp_path)
    refused([*ev, "--tasks", "", "--task", "odd:none"], "returned None, not")
    refused([*ev, "--tasks", "", "--task", "odd:cplx"], "returned ndarray of complex64, not")
    arrays = make_arrays(n=64, episode_len=16)
    order = np.random.default_rng(0).permutation(64)
    with pytest.raises(DatasetError, match="not episodes stored in order .*were the rows shuffled"):
        from_numpy({k: v[order] for k, v in arrays.items()}, {"domain": "point_mass_maze"})


def test_tracebacks_of_the_probe_are_one_paragraph_errors(lab, tmp_path, monkeypatch, capsys):
    """What used to end in a traceback or a misleading message now says what is wrong."""
    import subprocess
    import sys

    from conftest import make_arrays

    from zsrl.agents.fb import FBConfig, FBModel
    from zsrl.data import from_numpy
    from zsrl.evaluation import rollout

    root, _ = lab

    def refused(argv, message):
        assert main(argv) == 2, argv
        err = " ".join(capsys.readouterr().err.split())
        assert message in err and "Traceback" not in err, (argv, err)

    long_name = tmp_path / ("r" * 250)
    refused(["train", "--config", PRESET, "--dataset", str(root / "ds"), "--out", str(long_name), *TINY],
            "is too long for the file system")
    refused(["eval", str(root / "ref"), "--tasks", "", "--task", ":f", "--out", str(tmp_path / "e")],
            "':f' is not of the form 'package.module:Name'")
    one = from_numpy(make_arrays(n=1, episode_len=1), {"domain": "point_mass_maze", "collector": "test"})
    one.save(tmp_path / "one")
    assert main(["data", "describe", str(tmp_path / "one")]) == 0
    arrays = make_arrays(n=256, episode_len=64, hold=32)
    for key in ("observation", "next_observation"):
        arrays[key][:] = 0.1
    from_numpy(arrays, {"domain": "point_mass_maze", "collector": "test"}).save(tmp_path / "still")
    refused(["train", "--config", PRESET, "--dataset", str(tmp_path / "still"), "--out", str(tmp_path / "r"),
             *TINY], "never change (every coordinate is constant)")
    # a moved dataset: eval says how to point at it, and takes it
    run = shutil.copytree(root / "ref", tmp_path / "run")
    data = json.loads((run / "run.json").read_text())
    moved = shutil.copytree(root / "ds", tmp_path / "moved")
    (run / "run.json").write_text(json.dumps({**data, "dataset": str(tmp_path / "gone")}))
    ev = ["eval", str(run), "--tasks", "reach_top_left", "--episodes", "1", "--out", str(tmp_path / "e")]
    refused(ev, f"If it moved, evaluate with `zsrl eval {run} --dataset NEW_PLACE`")
    assert main([*ev, "--dataset", str(moved)]) == 0
    # a metrics.csv that is not zsrl's: the report says so and is written
    (run / "metrics.csv").write_text("a,b\n1,2\n")
    assert main([*ev[:-1], str(tmp_path / "e3"), "--dataset", str(moved)]) == 0
    notes = json.loads((tmp_path / "e3" / "results.json").read_text())["notes"]
    assert any("no learning curves" in n and "no 'step' column" in n for n in notes)
    # a reward function that raises
    (tmp_path / "bad_rewards.py").write_text("def boom(o, a, n):\n    raise KeyError('oops')\n")
    monkeypatch.chdir(tmp_path)
    refused(["eval", str(root / "ref"), "--tasks", "", "--task", "bad_rewards:boom", "--out", str(tmp_path / "e4")],
            "the reward function <reward 'boom'> raised KeyError: 'oops'")
    # an environment that breaks, or returns NaN, in the middle of an evaluation
    (tmp_path / "faulty_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import faulty_plugin

    model = FBModel(3, 1, FBConfig(z_dim=4, hidden_dim=16, embedding_dim=8, backward_hidden_dim=16))
    with pytest.raises(UserError, match="failed at step 2 of an evaluation episode: RuntimeError: the simulator broke"):
        rollout(model, faulty_plugin.Raises(), model.sample_z(1), episodes=2, seed=0)
    with pytest.raises(UserError, match="returned NaN or inf observations at step 2 of an evaluation episode"):
        rollout(model, faulty_plugin.NaNObservation(), model.sample_z(1), episodes=2, seed=0)
    # a reader that stops early: no traceback
    proc = subprocess.run(f"{sys.executable} -c 'import sys; from zsrl.cli import main; sys.exit(main(sys.argv[1:]))' "
                          f"data describe {root / 'ds'} | head -1", shell=True, capture_output=True, text=True,
                          check=False)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_resume_refuses_a_config_edited_by_hand(lab, tmp_path):
    root, _ = lab
    run = shutil.copytree(root / "ref", tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    edited = {**cfg, "agent": {**cfg["agent"], "lr_f": 0.1}}
    (run / "config.json").write_text(json.dumps(edited))
    before = snapshot(run)
    with pytest.raises(UserError, match=r"was edited since the run started \(agent.lr_f: 0.0005 → 0.1\)"):
        resume_run(run, steps=60)
    assert snapshot(run) == before
    (run / "config.json").write_text(json.dumps(cfg))
    resume_run(run, steps=50)  # train.steps is the one change a resume takes
    assert checkpoint_step(run) == 50


def test_rewards_that_overflow_the_prompt_are_refused(lab, tmp_path, monkeypatch, capsys):
    """Finite rewards of 1e38 overflow float32 when FB sums them into z; instead of NaN
    actions (which the simulator rejects), the prompt is refused with what to do."""
    root, _ = lab
    (tmp_path / "huge.py").write_text("import numpy as np\ndef huge(o, a, n):\n    return np.full(len(o), 1e38)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(root / "ref"), "--tasks", "", "--task", "huge:huge", "--episodes", "1",
                 "--out", str(tmp_path / "e")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is not finite" in err and "up to 1e+38 in size" in err and "Traceback" not in err, err
