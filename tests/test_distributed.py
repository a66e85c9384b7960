"""Data-parallel training (zsrl/distributed.py): 2 ranks × b rows = 1 process × 2b rows, for
every agent's update; the global-batch collectives; torchrun runs of ``zsrl train`` (their
files, an exact resume after a kill, a dead rank, the world size a run is resumed with).

Ranks are real processes on gloo, started by ``torchrun --standalone`` (torch's launcher).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dp_cases
import pytest
import torch
from conftest import save_maze_dataset

from zsrl import distributed

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


PRESET = "fb/point_mass_maze_cpu"
TINY = ["agent.z_dim=8", "agent.hidden_dim=32", "agent.embedding_dim=16", "agent.backward_hidden_dim=32",
        "train.batch_size=32", "train.log_every=7", "train.checkpoint_every=10", "train.progress=false",
        "train.steps=40", "train.compile=false"]


def torchrun_command(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def run_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), **extra}
    env.pop("ZSRL_FAULT_POINT", None)
    return {**env, **extra}


def torchrun(*args: str, nproc: int = 2, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(*args, nproc=nproc), env=env or run_env(), capture_output=True, text=True,
                          timeout=600, check=False)


def train(out: Path, ds: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return torchrun("-m", "zsrl", "train", "--config", PRESET, "--dataset", str(ds), "--out", str(out), *TINY, *extra,
                    env=env)


def training_state(run: Path) -> dict:
    return torch.load(run / "checkpoint" / "training_state.pt", weights_only=True)


def metric_rows(run: Path) -> list[list[str]]:
    """metrics.csv without its timing columns (wall time, updates/s)."""
    lines = (run / "metrics.csv").read_text().splitlines()
    return [[f for i, f in enumerate(line.split(",")) if i not in (1, 2)] for line in lines]


def test_one_process_collectives_are_the_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.gather_rows(x) is x and distributed.row_offset(3) == 0
    assert torch.equal(distributed.global_mean(x), x) and not distributed.global_mean(x).requires_grad
    assert distributed.agree(True, False) == (True, False)
    assert distributed.rank_seed(7) == 7  # rank 0's stream is a one-process run's


def test_two_ranks_update_as_one_process_on_the_whole_batch(tmp_path):
    """Losses (metric means over ranks), averaged gradients (Adam's first moments) and the
    buffers after one update agree to float32 rounding: rtol 1e-5 on losses, 1e-4 (atol 1e-6
    of the case's largest) on gradients; every rank holds the same state (checked in the
    worker)."""
    cases = list(dp_cases.CASES)
    done = torchrun(str(HERE / "dp_worker.py"), str(tmp_path), *cases)
    assert done.returncode == 0, done.stderr[-3000:]
    for case in cases:
        agent, batch = dp_cases.build(case)
        want = dp_cases.one_update(agent, batch)
        got = torch.load(tmp_path / f"{case}.pt")
        assert got["metrics"].keys() == want["metrics"].keys()
        for k, v in want["metrics"].items():
            assert got["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (case, k)
        scale = max(m.abs().max().item() for m in want["moments"].values())
        assert got["moments"].keys() == want["moments"].keys() and want["moments"]
        for k, m in want["moments"].items():
            torch.testing.assert_close(got["moments"][k], m, rtol=1e-4, atol=1e-6 * scale, msg=f"{case} {k}")
        for k, b in want["buffers"].items():
            torch.testing.assert_close(got["buffers"][k], b, rtol=1e-5, atol=1e-6, msg=f"{case} {k}")


def test_a_torchrun_run_writes_one_run_and_resumes_exactly_after_a_kill(tmp_path):
    """Rank 0 writes the run (world size in run.json, every rank's stream in the checkpoint);
    killed at its 4th metric row (step 28, after the checkpoint of step 20) and resumed, the
    2-process run reaches the uninterrupted run's state and metric rows bit for bit."""
    ds = save_maze_dataset(tmp_path / "ds")
    done = train(tmp_path / "full", ds)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["world_size"] == 2 and json.loads((tmp_path / "full" / "config.json").read_text())["train"][
        "batch_size"] == 32
    full = training_state(tmp_path / "full")
    assert full["world_size"] == 2 and len(full["peers"]) == 1 and full["step"] == 40
    assert not torch.equal(full["rng"]["torch"], full["peers"][0]["rng"]["torch"])  # a stream per rank
    assert [r[0] for r in metric_rows(tmp_path / "full")] == ["step", "7", "14", "21", "28", "35", "40"]
    assert (tmp_path / "full" / "model" / "manifest.json").is_file()

    killed = train(tmp_path / "cut", ds, env=run_env(ZSRL_FAULT_POINT="metrics:row@4"))
    assert killed.returncode != 0 and training_state(tmp_path / "cut")["step"] == 20
    resumed = torchrun("-m", "zsrl", "train", "--resume", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    cut = training_state(tmp_path / "cut")
    for key, tensor in _tensors(full["agent"]):
        assert torch.equal(tensor, dict(_tensors(cut["agent"]))[key]), key
    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "full")


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            yield from _tensors(v, f"{prefix}.{i}")


def test_a_run_resumes_only_on_its_world_size_and_splits_its_batch_evenly(tmp_path):
    ds = save_maze_dataset(tmp_path / "ds")
    assert train(tmp_path / "r", ds, "train.steps=10").returncode == 0
    one = subprocess.run([sys.executable, "-m", "zsrl", "train", "--resume", str(tmp_path / "r"), "train.steps=20"],
                         env=run_env(), capture_output=True, text=True, timeout=300, check=False)
    said = " ".join(one.stderr.split())
    assert one.returncode == 2 and "trained on 2 processes and this resume has 1" in said
    assert "torchrun --nproc-per-node 2 -m zsrl train --resume" in said
    odd = train(tmp_path / "odd", ds, "train.batch_size=33")
    assert odd.returncode != 0 and "must split evenly over the 2 processes" in " ".join(odd.stderr.split())
    assert not (tmp_path / "odd").exists()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_a_rank_killed_with_sigkill_stops_the_others_with_a_message(tmp_path):
    ds = save_maze_dataset(tmp_path / "ds")
    argv = torchrun_command("-m", "zsrl", "train", "--config", PRESET, "--dataset", str(ds), "--out",
                            str(tmp_path / "r"), *TINY, "train.steps=1000000", "train.log_every=5")
    proc = subprocess.Popen(argv, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "r" / "metrics.csv").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        rank1 = next(p for p in _children(proc.pid) if _rank_of(p) == 1)
        os.kill(rank1, 9)
        killed_at = time.time()
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0 and time.time() - killed_at < 120
    assert "another process of this run stopped" in out and "--resume" in out, out[-3000:]


def test_parallel_collection_writes_the_ranks_shares_as_one_reproducible_dataset(tmp_path):
    """Under torchrun each rank collects half with environments seeded ``seed + rank · num_envs
    + i``; rank 0 writes one dataset: its part, then rank 1's with episode ids after its own.
    The same command gives the same dataset again."""
    from zsrl.collection import CollectorConfig, collect_arrays, make_explorer
    from zsrl.data import OfflineDataset
    from zsrl.envs import make_domain

    args = ["-m", "zsrl", "collect", "--domain", "point_mass_maze", "--collector", "random", "--transitions", "2000",
            "--episode-length", "300", "--no-progress", "--out"]
    for name in ("a", "b"):
        done = torchrun(*args, str(tmp_path / name))
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = OfflineDataset.load(tmp_path / "a"), OfflineDataset.load(tmp_path / "b")
    assert a.meta["world_size"] == 2 and len(a) == 2000
    for key in a.data.keys(True, True):
        assert torch.equal(a.data[key], b.data[key]), key
    domain = make_domain("point_mass_maze")
    parts = []
    for rank in (0, 1):
        explorer = make_explorer(CollectorConfig(), "random", 4, 2, 1000, seed=4 * rank)
        parts.append(collect_arrays(domain, explorer, 1000, seed=4 * rank, progress=False, episode_length=300)[0])
    assert torch.equal(a.data["observation"], torch.cat([torch.as_tensor(p["observation"]) for p in parts]))
    episodes = a.data["episode"]
    assert episodes[:1000].max() < episodes[1000:].min()  # rank 1's episodes follow rank 0's
