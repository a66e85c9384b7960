"""``zsrl eval``: evaluate a run on its domain's tasks, user reward functions and goals.

Writes ``results.json`` (config, seeds, versions, per-task and aggregate numbers) and
``report.md`` into ``--out`` (default ``RUN_DIR/eval``), and prints a table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from zsrl.checkpoint import load_run_model
from zsrl.config import run_config_from_dict
from zsrl.data import OfflineDataset
from zsrl.evaluate import evaluate_goals, evaluate_tasks, task_reward_fn
from zsrl.registry import RegistryError, import_object, make_domain
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
    try:
        fn = import_object(spec)
    except RegistryError as exc:
        raise UserError(f"--task {spec!r}: {exc}") from None
    if not callable(fn):
        raise UserError(f"--task {spec!r} is not a function")

    def reward(batch):
        return fn(batch.observation, batch.action, batch.next_observation)

    return reward


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def evaluate_run(
    run_dir: str | Path,
    *,
    tasks: list[str] | None = None,
    user_tasks: list[str] = (),
    goals: list[str] = (),
    episodes: int = 10,
    reward_samples: int | None = None,
    seeds: list[int] = (0,),
    device: str = "auto",
    trajectories: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a run directory on domain tasks, user reward functions and goals.

    ``tasks=None`` means every task of the domain unless only user tasks or goals are asked
    for. A supervised (oracle) run is evaluated on the task it was trained for.
    """
    run_dir = Path(run_dir)
    cfg = run_config_from_dict(read_json(run_dir / "config.json", f"run {run_dir}"))
    run = read_json(run_dir / "run.json", f"run {run_dir}")
    domain = make_domain(cfg.domain)
    dev = resolve_device(device)
    model = load_run_model(run_dir, domain, dev)
    dataset = OfflineDataset.load(run["dataset"], device=dev, domain=domain.name)
    if cfg.task:  # a supervised oracle knows one task only
        tasks, user_tasks, goals = [cfg.task], [], []
    elif tasks is None:
        tasks = [] if (user_tasks or goals) else list(domain.tasks)
    fns: dict[str, Any] = {}
    for name in tasks:
        fns[name] = task_reward_fn(domain, name)
    for spec in user_tasks:
        fns[spec] = user_reward_function(spec)
    if list(goals) == ["all"]:
        goals = list(domain.goals)
    for g in goals:
        domain.goal(g)  # validates the name

    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        trajs = trajectories if seed == seeds[0] else None
        try:
            task_results = evaluate_tasks(model, domain, dataset, fns, episodes=episodes,
                                          reward_samples=reward_samples, seed=seed, trajectories=trajs) if fns else {}
        except ValueError as exc:
            raise UserError(str(exc)) from None
        goal_results = evaluate_goals(model, domain, list(goals), episodes=episodes, seed=seed,
                                      trajectories=trajs) if goals else {}
        per_seed.append({"seed": seed, "tasks": task_results, "goals": goal_results})
    results = _combine(per_seed, fns, list(goals))
    results.update({
        "run_dir": str(run_dir), "agent": cfg.agent.name, "domain": domain.name, "task": cfg.task,
        "episodes": episodes, "seeds": list(seeds), "created": now_iso(), "versions": versions(),
        "config": read_json(run_dir / "config.json", "run config"), "dataset": run["dataset"],
    })
    results["_model"], results["_domain"] = model, domain  # for pictures; stripped before saving
    return results


#: "% of oracle" is only defined when the oracle's mean return reaches this (a near-zero
#: denominator — an oracle that failed too — would make any ratio meaningless)
MIN_ORACLE_RETURN = 1.0


def pct_of_oracle(value: float, oracle: float) -> float | None:
    """``100 · value / oracle``, or None when the oracle return is below MIN_ORACLE_RETURN."""
    return 100.0 * value / oracle if oracle >= MIN_ORACLE_RETURN else None


def add_oracle(results: dict[str, Any], oracle_runs: list[str], episodes: int, seeds: list[int]) -> None:
    """Evaluate supervised oracle runs and add "% of oracle" to each matching task."""
    for oracle_dir in oracle_runs:
        oracle = evaluate_run(oracle_dir, episodes=episodes, seeds=seeds)
        for task, r in oracle["tasks"].items():
            if task in results["tasks"]:
                denom = r["mean_return"]
                results["tasks"][task].update({
                    "oracle_return": denom,
                    "oracle": f"{oracle['agent']} run {oracle_dir} (same dataset, task reward)",
                    "pct_of_oracle": pct_of_oracle(results["tasks"][task]["mean_return"], denom),
                })
    pct = [r["pct_of_oracle"] for r in results["tasks"].values() if r.get("pct_of_oracle") is not None]
    if pct:
        results["pct_of_oracle_mean"] = float(np.mean(pct))


def write_report(results: dict[str, Any], out: Path, run_dir: Path, trajectories: dict[str, Any], video: bool) -> list[Path]:
    """results.json, report.md and pictures (bars, learning curves, maze paths, videos)."""
    from zsrl import plots

    model, domain = results.pop("_model"), results.pop("_domain")
    pictures: list[Path] = []
    if results["tasks"]:
        oracle = {t: r["oracle_return"] for t, r in results["tasks"].items() if "oracle_return" in r}
        pictures.append(plots.task_bars(results, out / "returns.png", oracle=oracle or None))
    if (run_dir / "metrics.csv").is_file():
        pictures.append(plots.learning_curves(run_dir, out / "learning_curves.png"))
    if trajectories and hasattr(domain, "draw_layout"):
        pictures.append(plots.maze_trajectories(domain, trajectories, out / "trajectories.png"))
    if video:
        for name, r in results["tasks"].items():
            try:
                pictures.append(plots.policy_video(domain, model, r["z"], out / f"video_{_slug(name)}.mp4",
                                                   task=name if name in domain.tasks else None))
            except RuntimeError as exc:
                print(f"no video: {exc}", file=sys.stderr)
                break
    atomic_write_json(out / "results.json", results)
    md = [f"# zsrl eval — {results['agent']} on {results['domain']}", "",
          f"Run `{run_dir}`, {results['episodes']} episodes × seeds {results['seeds']}; dataset `{results['dataset']}`.",
          "", format_table(results), ""]
    md += [f"![{p.stem}]({p.name})" if p.suffix == ".png" else f"[{p.name}]({p.name})" for p in pictures]
    atomic_write_bytes(out / "report.md", ("\n".join(md) + "\n").encode())
    return pictures


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def run_evaluation(args: Any) -> dict[str, Any]:
    """``zsrl eval`` entry point."""
    trajectories: dict[str, Any] = {}
    seeds = [int(s) for s in _split(args.seeds)] or [0]
    results = evaluate_run(
        args.run_dir, tasks=_split(args.tasks) if args.tasks else None, user_tasks=args.task,
        goals=_split(args.goals), episodes=args.episodes, reward_samples=args.reward_samples,
        seeds=seeds, device=args.device, trajectories=trajectories,
    )
    if args.oracle:
        add_oracle(results, args.oracle, args.episodes, seeds)
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "eval"
    write_report(results, out, run_dir, trajectories, args.video)
    print(format_table(results))
    print(f"\nwrote {out / 'report.md'}, {out / 'results.json'} and pictures")
    if args.json_path:
        atomic_write_json(args.json_path, results)
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
        oracle = any("oracle_return" in r for r in results["tasks"].values())
        extra_head = " oracle return | % of oracle |" if oracle else ""
        lines += [f"| task | mean return | std | episodes | reward samples |{extra_head}",
                  "|---|---:|---:|---:|---:|" + ("---:|---:|" if oracle else "")]
        for name, r in results["tasks"].items():
            row = f"| {name} | {r['mean_return']:.1f} | {np.std(r['returns']):.1f} | {len(r['returns'])} | {r['reward_samples']} |"
            if oracle:
                pct = r.get("pct_of_oracle")
                row += f" {r.get('oracle_return', float('nan')):.1f} | {'–' if pct is None else f'{pct:.0f}%'} |"
            lines.append(row)
        if oracle:
            names = sorted({r["oracle"] for r in results["tasks"].values() if r.get("oracle")})
            lines.append(f"\noracle: {'; '.join(names)} (% shown only where its return ≥ {MIN_ORACLE_RETURN})")
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
