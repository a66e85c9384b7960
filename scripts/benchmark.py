"""The CPU benchmark protocol: collect → train → evaluate, agents × domains, fixed seeds.

    python scripts/benchmark.py --agents fb fre --domains point_mass_maze walker \\
        --out bench [--steps 20000] [--oracle] [--episodes 5] [--seeds 0]

For each domain a reward-free dataset is collected once (``--collector``: sticky random
actions held 100 steps for the maze, RND elsewhere; ``--transitions``) and cached under
``OUT/data``. Each agent trains its CPU preset ``configs/<agent>/<domain>_cpu.yaml`` on it
(``--steps`` overrides the preset's budget), then is prompted with ``--reward-samples``
labelled dataset states per task and rolled out for ``--episodes`` episodes per seed.
With ``--oracle``, an offline TD3 (``configs/td3/<domain>_cpu.yaml``) is trained per task on
the same dataset with the task reward and the same update budget; "% of oracle" divides by
its mean return (tasks where the oracle scores below ``MIN_ORACLE_RETURN`` are left out of
the ratio). Prints one table per domain and writes ``OUT/benchmark.json`` and
``OUT/benchmark.png``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from zsrl import plots
from zsrl.collect import collect_to_disk
from zsrl.data import OfflineDataset
from zsrl.evaluate import evaluate_run, pct_of_oracle
from zsrl.registry import make_domain
from zsrl.train import start_run
from zsrl.utils import atomic_write_json, versions

DEFAULT_COLLECTOR = {"point_mass_maze": "sticky"}


def dataset_for(domain_name: str, args: argparse.Namespace) -> Path:
    collector = args.collector or DEFAULT_COLLECTOR.get(domain_name, "rnd")
    path = args.out / "data" / f"{domain_name}_{collector}_{args.num_transitions}_s{args.seed}"
    if not path.exists():
        collect_to_disk(make_domain(domain_name), collector, args.num_transitions, path, seed=args.seed,
                        num_envs=8, hold=100, progress=not args.quiet)
    else:
        OfflineDataset.load(path, domain=domain_name)  # validate the cache
    return path


def train_and_eval(preset: str, data: Path, run_dir: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    overrides = [f"train.seed={args.seed}", f"train.progress={str(not args.quiet).lower()}", *extra]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    t0 = time.perf_counter()
    start_run(preset, data, run_dir, overrides, overwrite=True)
    wall = time.perf_counter() - t0
    with (run_dir / "metrics.csv").open() as f:
        ups = [float(r["updates_per_s"]) for r in csv.DictReader(f)]
    evaluation = evaluate_run(run_dir, episodes=args.episodes, seeds=args.seeds, reward_samples=args.reward_samples)
    return {"evaluation": evaluation, "train_seconds": wall, "updates_per_s": float(np.median(ups))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", nargs="+", default=["fb"])
    p.add_argument("--domains", nargs="+", default=["point_mass_maze", "walker"])
    p.add_argument("--collector", help="override the per-domain default collector")
    p.add_argument("--transitions", dest="num_transitions", type=int, default=200_000)
    p.add_argument("--steps", type=int, help="override every preset's train.steps")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--reward-samples", type=int, default=None, help="default: each agent's inference_samples")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="evaluation seeds")
    p.add_argument("--seed", type=int, default=0, help="collection and training seed")
    p.add_argument("--oracle", action="store_true", help="train a TD3 oracle per task for '%% of oracle'")
    p.add_argument("--set", action="append", default=[], metavar="AGENT:KEY=VALUE",
                   help="a config override for one agent, e.g. fre:agent.encoder_steps=2000 (repeatable)")
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()

    report: dict = {"protocol": vars(args) | {"out": str(args.out)}, "domains": {}, "versions": versions()}
    for domain_name in args.domains:
        data = dataset_for(domain_name, args)
        tasks = list(make_domain(domain_name).tasks)
        entry: dict = {"dataset": str(data), "tasks": tasks, "agents": {}}
        oracle: dict[str, float] = {}
        if args.oracle:
            for task in tasks:
                r = train_and_eval(f"td3/{domain_name}_cpu", data, args.out / "runs" / domain_name / f"td3_{task}",
                                   args, [f"task={task}"])
                oracle[task] = r["evaluation"].tasks[task].mean_return
                entry["agents"].setdefault("td3 (oracle)", {"tasks": {}, "train_seconds": 0.0,
                                                             "updates_per_s": r["updates_per_s"]})
                entry["agents"]["td3 (oracle)"]["tasks"][task] = oracle[task]
                entry["agents"]["td3 (oracle)"]["train_seconds"] += r["train_seconds"]
            entry["oracle"] = {"agent": "td3", "returns": oracle}
        for agent in args.agents:
            extra = [o.split(":", 1)[1] for o in args.set if o.split(":", 1)[0] == agent]
            r = train_and_eval(f"{agent}/{domain_name}_cpu", data, args.out / "runs" / domain_name / agent, args, extra)
            res = r["evaluation"]
            returns = {t: res.tasks[t].mean_return for t in tasks}
            pct = [p for t in tasks if t in oracle and (p := pct_of_oracle(returns[t], oracle[t])) is not None]
            entry["agents"][agent] = {
                "tasks": returns, "aggregate": res.aggregate, "scored": str(res.scored),
                "reward_samples": res.tasks[tasks[0]].reward_samples,
                "pct_of_oracle": float(np.mean(pct)) if pct else None,
                "train_seconds": r["train_seconds"], "updates_per_s": r["updates_per_s"],
            }
        report["domains"][domain_name] = entry
        print_table(domain_name, entry)
        atomic_write_json(args.out / "benchmark.json", report)
    table = {d: {a: v["tasks"] for a, v in e["agents"].items()} for d, e in report["domains"].items()}
    plots.benchmark_bars(table, args.out / "benchmark.png")
    print(f"\nwrote {args.out / 'benchmark.json'} and {args.out / 'benchmark.png'}")


def print_table(domain: str, entry: dict) -> None:
    tasks = entry["tasks"]
    head = ["agent", *tasks, "mean", "% oracle", "IQM [95% CI]", "upd/s", "train s"]
    rows = []
    for agent, r in entry["agents"].items():
        returns = [r["tasks"].get(t, float("nan")) for t in tasks]
        agg = r.get("aggregate")
        rows.append([
            agent, *[f"{x:.1f}" for x in returns], f"{np.nanmean(returns):.1f}",
            "-" if r.get("pct_of_oracle") is None else f"{r['pct_of_oracle']:.0f}%",
            "-" if agg is None else f"{agg['iqm']:.1f} [{agg['iqm_ci'][0]:.1f}, {agg['iqm_ci'][1]:.1f}]",
            f"{r['updates_per_s']:.0f}", f"{r['train_seconds']:.0f}",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print(f"\n## {domain} (dataset {entry['dataset']})")
    for row in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


if __name__ == "__main__":
    main()
