"""Benchmark: gradient updates per second of an agent preset, on random data of the right size.

    python scripts/bench_updates.py --presets fb/point_mass_maze_cpu fb/point_mass_maze \
        --batch-size 1024 --device cpu --steps 50 --json bench_updates.json

Only the update speed is measured (the sampler draws from a device-resident random dataset
of the domain's observation/action sizes), so the numbers compare agents, network sizes and
devices, not data quality. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from zsrl.config import load_run_config
from zsrl.data import from_numpy
from zsrl.registry import make_domain
from zsrl.train import build_agent
from zsrl.utils import resolve_device, seed_everything, versions


def random_dataset(obs_dim: int, action_dim: int, n: int, device: torch.device):
    rng = np.random.default_rng(0)
    arrays = {
        "observation": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
        "next_observation": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "terminated": np.zeros(n, dtype=bool),
        "episode": np.arange(n) // 1000,
        "step": np.arange(n) % 1000,
    }
    return from_numpy(arrays, {"domain": "bench"}).to(device)


def bench(preset: str, overrides: list[str], steps: int, warmup: int) -> dict:
    cfg = load_run_config(preset, overrides)
    device = resolve_device(cfg.train.device)
    domain = make_domain(cfg.domain)
    env = domain.make_env(seed=0)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    seed_everything(0)
    data = random_dataset(obs_dim, action_dim, 100_000, device)
    agent = build_agent(cfg, obs_dim, action_dim, device)
    if agent.needs_task:
        raise SystemExit(f"{preset}: bench_updates measures reward-free agents on random data; "
                         "a supervised agent needs a dataset it can relabel")
    agent.setup(data, domain)
    agent.setup_compile(cfg.train.compile, cfg.train.cudagraphs)
    for _ in range(warmup):
        metrics = agent.update(agent.sample_batch(data, cfg.train.batch_size))
    float(next(iter(metrics.values())))  # sync
    t0 = time.perf_counter()
    for _ in range(steps):
        metrics = agent.update(agent.sample_batch(data, cfg.train.batch_size))
    float(next(iter(metrics.values())))
    elapsed = time.perf_counter() - t0
    params = sum(p.numel() for p in agent.model.parameters())
    return {
        "preset": preset, "overrides": overrides, "device": str(device), "batch_size": cfg.train.batch_size,
        "compile": cfg.train.compile, "cudagraphs": cfg.train.cudagraphs, "parameters": params,
        "updates_per_s": steps / elapsed, "steps": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["fb/point_mass_maze_cpu", "fb/point_mass_maze"])
    p.add_argument("--batch-size", type=int, help="override every preset's batch size")
    p.add_argument("--device", default=None, help="override every preset's device (cpu, cuda, auto)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cudagraphs", action="store_true")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", default="bench_updates.json")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every preset")
    args = p.parse_args()
    overrides = list(args.overrides)
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.compile:
        overrides.append("train.compile=true")
    if args.cudagraphs:
        overrides.append("train.cudagraphs=true")
    rows = [bench(preset, overrides, args.steps, args.warmup) for preset in args.presets]
    print(f"{'preset':<28} {'device':<7} {'batch':>6} {'params':>10} {'compile':>8} {'graphs':>7} {'updates/s':>10}")
    for r in rows:
        print(f"{r['preset']:<28} {r['device']:<7} {r['batch_size']:>6} {r['parameters']:>10,} "
              f"{r['compile']!s:>8} {r['cudagraphs']!s:>7} {r['updates_per_s']:>10.1f}")
    with open(args.json, "w") as f:
        json.dump({"results": rows, "versions": versions(), "threads": torch.get_num_threads()}, f, indent=2)


if __name__ == "__main__":
    main()
