"""``zsrl eval``: evaluate a run on its domain's tasks, user reward functions and goals.

Writes ``results.json`` (config, seeds, versions, per-task and aggregate numbers) and
``report.md`` into ``--out`` (default ``RUN_DIR/eval``), and prints a table.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from zsrl.checkpoint import load_run_model
from zsrl.config import run_config_from_dict
from zsrl.data import OfflineDataset
from zsrl.evaluate import evaluate_goals, evaluate_tasks
from zsrl.registry import RegistryError, make_domain
from zsrl.stats import aggregate
from zsrl.utils import (
    UserError,
    atomic_write_bytes,
    atomic_write_json,
    now_iso,
    read_json,
    resolve_device,
    versions,
)


def user_reward_function(spec: str):
    """Import ``module:function`` — ``f(obs, action, next_obs) -> rewards`` over numpy batches."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise UserError(f"--task {spec!r} must be 'module:function'")
    if "" not in sys.path:
        sys.path.insert(0, "")  # allow modules in the current directory
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"--task {spec!r}: cannot import it ({exc})") from None
    if not callable(fn):
        raise UserError(f"--task {spec!r} is not a function")

    def reward(batch):
        return fn(batch.observation, batch.action, batch.next_observation)

    return reward


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def run_evaluation(args: Any) -> dict[str, Any]:
    run_dir = Path(args.run_dir)
    cfg = run_config_from_dict(read_json(run_dir / "config.json", f"run {run_dir}"))
    run = read_json(run_dir / "run.json", f"run {run_dir}")
    try:
        domain = make_domain(cfg.domain)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    device = resolve_device(args.device)
    model = load_run_model(run_dir, domain, device)
    dataset = OfflineDataset.load(run["dataset"], device=device, domain=domain.name)

    tasks: dict[str, Any] = {}
    names = _split(args.tasks) if args.tasks else ([] if (args.task or args.goals) else list(domain.tasks))
    for name in names:
        if name not in domain.tasks:
            raise UserError(f"domain {domain.name!r} has no task {name!r}; its tasks are: {', '.join(domain.tasks)}")
        tasks[name] = (lambda batch, n=name: domain.reward(n, batch))
    for spec in args.task:
        tasks[spec] = user_reward_function(spec)
    goals = list(domain.goals) if args.goals == "all" else _split(args.goals)
    for g in goals:
        domain.goal(g)  # validates the name

    seeds = [int(s) for s in _split(args.seeds)] or [0]
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        entry: dict[str, Any] = {"seed": seed}
        try:
            entry["tasks"] = evaluate_tasks(
                model, domain, dataset, tasks, episodes=args.episodes,
                reward_samples=args.reward_samples, seed=seed,
            ) if tasks else {}
        except ValueError as exc:
            raise UserError(str(exc)) from None
        entry["goals"] = evaluate_goals(model, domain, goals, episodes=args.episodes, seed=seed) if goals else {}
        per_seed.append(entry)

    results = _combine(per_seed, tasks, goals)
    results.update({
        "run_dir": str(run_dir),
        "agent": cfg.agent.name,
        "domain": domain.name,
        "episodes": args.episodes,
        "seeds": seeds,
        "created": now_iso(),
        "versions": versions(),
        "config": read_json(run_dir / "config.json", "run config"),
    })
    table = format_table(results)
    print(table)
    if args.json_path:
        atomic_write_json(args.json_path, results)
    out = Path(args.out) if args.out else run_dir / "eval"
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "report.md", (f"# zsrl eval — {cfg.agent.name} on {domain.name}\n\n{table}\n").encode())
    return results


def _combine(per_seed: list[dict[str, Any]], tasks: dict[str, Any], goals: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"tasks": {}, "goals": {}, "per_seed": per_seed}
    for name in tasks:
        returns = [r for s in per_seed for r in s["tasks"][name]["returns"]]
        per_seed_means = [s["tasks"][name]["mean_return"] for s in per_seed]
        out["tasks"][name] = {
            "mean_return": float(np.mean(returns)),
            "returns": returns,
            "per_seed_mean": per_seed_means,
            "reward_samples": per_seed[0]["tasks"][name]["reward_samples"],
            "label_seconds": float(np.mean([s["tasks"][name]["label_seconds"] for s in per_seed])),
        }
    for name in goals:
        out["goals"][name] = {
            k: float(np.mean([s["goals"][name][k] for s in per_seed]))
            for k in ("success", "final_distance", "min_distance", "threshold")
        }
    if tasks:
        scores = np.array([[s["tasks"][t]["mean_return"] for t in tasks] for s in per_seed])  # (seeds, tasks)
        out["aggregate"] = aggregate(scores)
    return out


def format_table(results: dict[str, Any]) -> str:
    lines = []
    if results["tasks"]:
        lines += ["| task | mean return | std | episodes | reward samples |", "|---|---:|---:|---:|---:|"]
        for name, r in results["tasks"].items():
            lines.append(
                f"| {name} | {r['mean_return']:.1f} | {np.std(r['returns']):.1f} | {len(r['returns'])} | {r['reward_samples']} |"
            )
        agg = results.get("aggregate")
        if agg:
            lines.append(
                f"\nmean {agg['mean']:.1f} [{agg['mean_ci'][0]:.1f}, {agg['mean_ci'][1]:.1f}]  ·  "
                f"IQM {agg['iqm']:.1f} [{agg['iqm_ci'][0]:.1f}, {agg['iqm_ci'][1]:.1f}]  (95% bootstrap CI over tasks × seeds)"
            )
    if results["goals"]:
        lines += ["", "| goal | success | final distance | min distance | threshold |", "|---|---:|---:|---:|---:|"]
        for name, r in results["goals"].items():
            lines.append(
                f"| {name} | {r['success']:.0%} | {r['final_distance']:.3f} | {r['min_distance']:.3f} | {r['threshold']} |"
            )
    return "\n".join(lines)
