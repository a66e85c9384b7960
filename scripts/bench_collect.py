"""Benchmark: collection throughput (transitions/s) per collector and domain.

    python scripts/bench_collect.py --domains point_mass_maze walker cheetah quadruped \
        --collectors random rnd --transitions 20000 --json bench_collect.json

Each cell collects ``--transitions`` transitions with ``--num-envs`` synchronous environments
(in memory, nothing written). RND includes its online learning (4000 random seed
transitions, then one DDPG+RND update per 8 transitions), so its throughput depends on
``--transitions``. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from zsrl.collection import CollectorConfig, collect, make_explorer
from zsrl.envs import make_domain
from zsrl.utils import versions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", nargs="+", default=["point_mass_maze", "walker", "cheetah", "quadruped"])
    p.add_argument("--collectors", nargs="+", default=["random", "rnd"])
    p.add_argument("--transitions", dest="num_transitions", type=int, default=20_000)
    p.add_argument("--num-envs", type=int, default=CollectorConfig().num_envs)
    p.add_argument("--json", default="bench_collect.json")
    args = p.parse_args()
    rows = []
    for name in args.domains:
        domain = make_domain(name)
        env = domain.make_env(seed=0)
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        env.close()
        for collector in args.collectors:
            explorer = make_explorer(CollectorConfig(), collector, obs_dim, act_dim, args.num_transitions, seed=0)
            t0 = time.perf_counter()
            collect(domain, explorer, args.num_transitions, num_envs=args.num_envs, progress=False)
            rate = args.num_transitions / (time.perf_counter() - t0)
            rows.append({"domain": name, "collector": collector, "transitions": args.num_transitions,
                         "num_envs": args.num_envs, "transitions_per_s": rate})
            print(f"{name:<16} {collector:<8} {rate:>10.0f} transitions/s", flush=True)
    with open(args.json, "w") as f:
        json.dump({"results": rows, "threads": torch.get_num_threads(), "versions": versions()}, f, indent=2)


if __name__ == "__main__":
    main()
