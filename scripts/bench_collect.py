"""Benchmark: collection throughput per collector, domain and number of processes, and where
its time goes.

    python scripts/bench_collect.py --domains walker --collectors random rnd --transitions 20000 --nprocs 1 2

For each (domain, collector) the first row collects ``--transitions`` transitions in this
process (in memory, nothing written) and splits its time into the explorer choosing actions
(``act``), the explorer learning from what it saw (``observe``: RND's DDPG and predictor
updates), and the rest (the simulators and the bookkeeping of episodes). Each ``--nprocs N``
above 1 then runs ``torchrun --nproc-per-node N -m zsrl collect`` on the same request (N
processes, each with its share of the transitions, its own explorer and environments, one
dataset written by rank 0) and reports the collection time the dataset records (the
slowest rank's, without process start-up) and the wall time of the whole command.
``OMP_NUM_THREADS`` is 1 in every process. RND's throughput depends on ``--transitions``
(4000 random seed transitions per explorer, then one update per 8 transitions). Prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from zsrl.collection import CollectorConfig, collect, make_explorer
from zsrl.data import env_dims
from zsrl.envs import make_domain
from zsrl.utils import versions


class TimedExplorer:
    """An explorer whose ``act`` and ``observe`` calls are timed."""

    def __init__(self, explorer: Any):
        self.explorer, self.name = explorer, getattr(explorer, "name", type(explorer).__name__)
        self.seconds = {"act": 0.0, "observe": 0.0}

    def act(self, obs: Any) -> Any:
        t = time.perf_counter()
        out = self.explorer.act(obs)
        self.seconds["act"] += time.perf_counter() - t
        return out

    def observe(self, *args: Any) -> None:
        t = time.perf_counter()
        self.explorer.observe(*args)
        self.seconds["observe"] += time.perf_counter() - t


def in_process(domain_name: str, collector: str, n: int, num_envs: int) -> dict[str, Any]:
    domain = make_domain(domain_name)
    obs_dim, act_dim = env_dims(domain)
    explorer = TimedExplorer(make_explorer(CollectorConfig(), collector, obs_dim, act_dim, n, seed=0))
    t0 = time.perf_counter()
    collect(domain, explorer, n, num_envs=num_envs, progress=False)
    total = time.perf_counter() - t0
    rest = total - sum(explorer.seconds.values())
    return {"nprocs": 1, "transitions_per_s": n / total, "seconds": total,
            "share": {"act": explorer.seconds["act"] / total, "observe": explorer.seconds["observe"] / total,
                      "envs_and_bookkeeping": rest / total}}


def with_torchrun(domain: str, collector: str, n: int, num_envs: int, nprocs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ds"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}", "-m",
               "zsrl", "collect", "--domain", domain, "--collector", collector, "--transitions", str(n),
               "--num-envs", str(num_envs), "--out", str(out), "--no-progress"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t0
        meta = json.loads((out / "meta.json").read_text())
    return {"nprocs": nprocs, "transitions_per_s": meta["transitions_per_second"],
            "seconds": meta["collection_seconds"], "wall_seconds": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", nargs="+", default=["point_mass_maze", "walker", "cheetah", "quadruped"])
    p.add_argument("--collectors", nargs="+", default=["random", "rnd"])
    p.add_argument("--transitions", dest="num_transitions", type=int, default=20_000)
    p.add_argument("--num-envs", type=int, default=CollectorConfig().num_envs, help="environments per process")
    p.add_argument("--nprocs", type=int, nargs="+", default=[1], help="process counts to compare (torchrun)")
    p.add_argument("--json", default="bench_collect.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"{'domain':<16} {'collector':<9} {'procs':>5} {'tr/s':>8} {'speed-up':>8}  time split (1 process) / wall")
    for name in args.domains:
        for collector in args.collectors:
            base = in_process(name, collector, args.num_transitions, args.num_envs)
            rows.append({"domain": name, "collector": collector, **base})
            split = "  ".join(f"{k} {v:.0%}" for k, v in base["share"].items())
            print(f"{name:<16} {collector:<9} {1:>5} {base['transitions_per_s']:>8.0f} {1.0:>8.2f}  {split}", flush=True)
            for n in (k for k in args.nprocs if k > 1):
                row = with_torchrun(name, collector, args.num_transitions, args.num_envs, n)
                rows.append({"domain": name, "collector": collector, **row})
                print(f"{name:<16} {collector:<9} {n:>5} {row['transitions_per_s']:>8.0f} "
                      f"{row['transitions_per_s'] / base['transitions_per_s']:>8.2f}  wall {row['wall_seconds']:.1f} s "
                      f"(collecting {row['seconds']:.1f} s)", flush=True)
    with open(args.json, "w") as f:
        json.dump({"results": rows, "transitions": args.num_transitions, "num_envs": args.num_envs,
                   "threads_per_process": 1, "versions": versions()}, f, indent=2)


if __name__ == "__main__":
    main()
