"""Benchmark: data-parallel training, N processes against one at the same global batch, and a
communication model for 1–8 GPUs.

    python scripts/bench_scaling.py --preset fb/walker_cpu --dataset data/walker_rnd --nprocs 1 2 \
        --steps 300 --rounds 3 --threads 2
    python scripts/bench_scaling.py --preset fb/walker --model-only --gpu-update-ms 1.93

**Measured.** Each round runs ``torchrun --nproc-per-node N -m zsrl train`` for every N in
``--nprocs`` in turn (interleaved, so a shared machine's drift hits all alike), with
``--threads / N`` threads per process (the same cores in all), and reads the run's
``metrics.csv``: updates/s over the rows after the first (compilation and warm-up excluded).
Ratios against one process are taken round by round.

**Modelled.** Per update and rank, data parallelism adds: (a) the all-reduce of every trained
parameter's gradient — a ring sends and receives ``2 (w − 1)/w · 4P`` bytes for ``P`` float32
parameters; (b) for FB and its variants, the all-gather of ``B(s')`` and of the target's
``B̄(s')`` and the reduce-scatter of ``B``'s gradient — ``3 (w − 1)/w · 4 N d`` bytes for a
global batch ``N`` and ``d = z_dim``; (c) a latency per collective (one gradient all-reduce
per optimiser step, three for the gathers). With one GPU's update time ``t₁``
(``--gpu-update-ms``; default: fb/walker on an H100, docs/results.md) and the compute split
evenly, ``t_w ≈ t₁ / w + bytes / bandwidth + collectives · latency``: an upper bound on the
speed-up, since small per-rank batches use a GPU less well. Prints tables and writes JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from zsrl.config import load_run_config
from zsrl.data import env_dims
from zsrl.envs import make_domain
from zsrl.training import build_agent
from zsrl.utils import versions

#: links: (name, all-reduce bus bandwidth in GB/s, latency per collective in µs)
LINKS = [("NVLink (H100 SXM)", 350.0, 20.0), ("PCIe 4.0 x16", 20.0, 30.0), ("100 Gb/s network", 10.0, 50.0)]


def measured_rate(run: Path) -> float:
    """Updates/s over the metric rows after the first."""
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    if len(rows) < 2:
        raise SystemExit(f"{run}/metrics.csv has {len(rows)} rows; raise --steps or lower train.log_every")
    first, last = rows[0], rows[-1]
    return (int(last["step"]) - int(first["step"])) / (float(last["time"]) - float(first["time"]))


def train_rate(preset: str, dataset: str, nprocs: int, threads: int, steps: int, overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}", "-m",
               "zsrl", "train", "--config", preset, "--dataset", dataset, "--out", str(out),
               f"train.steps={steps}", f"train.log_every={max(1, steps // 6)}", f"train.checkpoint_every={steps}",
               "train.progress=false", "train.eval_every=0", *overrides]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // nprocs))}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        return measured_rate(out)


def comm_model(preset: str, overrides: list[str], t1_ms: float) -> dict[str, Any]:
    cfg = load_run_config(preset, overrides)
    obs_dim, act_dim = env_dims(make_domain(cfg.domain))
    agent = build_agent(cfg, obs_dim, act_dim, torch.device("cpu"))
    params = sum(p.numel() for o in agent.optimizers().values() for g in o.param_groups for p in g["params"])
    contrastive = hasattr(agent, "fb_loss")
    # optimiser steps per update, one gradient all-reduce each
    steps = (1 if cfg.agent.joint_update else 2) if contrastive else len(agent.optimizers())
    n, d = cfg.train.batch_size, int(getattr(cfg.agent, "z_dim", 0))
    rows = []
    for name, gbps, lat_us in LINKS:
        for w in range(1, 9):
            frac = (w - 1) / w
            grad_bytes = 2 * frac * 4 * params
            gather_bytes = 3 * frac * 4 * n * d if contrastive else 0.0
            collectives = (steps + (3 if contrastive else 0)) if w > 1 else 0
            comm_ms = (grad_bytes + gather_bytes) / (gbps * 1e9) * 1e3 + collectives * lat_us / 1e3
            t_ms = t1_ms / w + comm_ms
            rows.append({"link": name, "gpus": w, "grad_MB": grad_bytes / 1e6, "gather_MB": gather_bytes / 1e6,
                         "comm_ms": comm_ms, "update_ms": t_ms, "updates_per_s": 1e3 / t_ms,
                         "speedup_bound": t1_ms / t_ms})
    return {"preset": preset, "params": params, "global_batch": n, "z_dim": d, "optimizer_steps": steps,
            "t1_ms": t1_ms, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fb/walker_cpu")
    p.add_argument("--dataset", help="dataset directory (for the measured part)")
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in all, split over processes")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model-only", action="store_true", help="only the communication model")
    p.add_argument("--gpu-update-ms", type=float, default=1000 / 518, help="one GPU's update time, ms")
    p.add_argument("--json", default="bench_scaling.json")
    p.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.batch_size=1024")
    args = p.parse_args()
    out: dict[str, Any] = {"versions": versions()}
    if not args.model_only:
        if not args.dataset:
            p.error("--dataset is needed for the measured part (or pass --model-only)")
        rounds = []
        for r in range(args.rounds):
            rates = {n: train_rate(args.preset, args.dataset, n, args.threads, args.steps, args.overrides)
                     for n in args.nprocs}
            rounds.append(rates)
            print(f"round {r + 1}: " + "  ".join(f"{n} proc {v:.2f} upd/s" for n, v in rates.items()), flush=True)
        base = args.nprocs[0]
        print(f"\n{'processes':>9} {'threads each':>12} {'upd/s (median)':>15} {'ratio to ' + str(base):>12}")
        summary = []
        for n in args.nprocs:
            ratios = [rd[n] / rd[base] for rd in rounds]
            med = statistics.median(rd[n] for rd in rounds)
            summary.append({"nprocs": n, "threads_each": max(1, args.threads // n), "updates_per_s": med,
                            "ratios": ratios, "ratio_median": statistics.median(ratios)})
            print(f"{n:>9} {max(1, args.threads // n):>12} {med:>15.2f} {statistics.median(ratios):>12.3f}")
        out["measured"] = {"preset": args.preset, "dataset": args.dataset, "steps": args.steps,
                           "overrides": args.overrides, "threads": args.threads, "rounds": rounds, "summary": summary}
    model = comm_model(args.preset, args.overrides, args.gpu_update_ms)
    out["model"] = model
    print(f"\nmodel: {args.preset}, {model['params'] / 1e6:.2f}M trained parameters, global batch "
          f"{model['global_batch']}, d={model['z_dim']}, t1={model['t1_ms']:.2f} ms")
    print(f"{'link':<20} {'GPUs':>4} {'grad MB':>8} {'gather MB':>9} {'comm ms':>8} {'upd/s':>8} {'speed-up ≤':>10}")
    for row in model["rows"]:
        if row["gpus"] in (1, 2, 4, 8):
            print(f"{row['link']:<20} {row['gpus']:>4} {row['grad_MB']:>8.1f} {row['gather_MB']:>9.2f} "
                  f"{row['comm_ms']:>8.3f} {row['updates_per_s']:>8.0f} {row['speedup_bound']:>10.2f}")
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
