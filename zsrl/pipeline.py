"""The whole pipeline in one call: collect → pretrain → prompt → report.

``zsrl pipeline`` (defaults: the point-mass maze, a self-collected sticky-random dataset,
FB with its CPU preset) is the project's main job; it writes::

    OUT/data/      the reward-free dataset (+ coverage.png)
    OUT/run/       the training run (config, metrics, checkpoints, model)
    OUT/report/    results.json, report.md, returns / learning-curve / trajectory pictures

Run again on the same ``OUT`` it reuses what is there and never deletes it: the dataset if it
is the collection asked for, the run if its config is the one asked for (an unfinished run
resumes; a finished one is evaluated again). Anything else is refused with what differs.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from zsrl.collection import CollectorConfig, collect_to_disk, make_explorer
from zsrl.config import config_differences, load_run_config
from zsrl.data import OfflineDataset, env_dims
from zsrl.envs import Domain, make_domain
from zsrl.envs.pomdp import split_variant
from zsrl.errors import UserError
from zsrl.evaluation import Evaluation, evaluate_run
from zsrl.report import format_table, write_report
from zsrl.storage import is_run_dir, read_json_object
from zsrl.training import resume_run, start_run


def run_pipeline(
    out: str | Path,
    *,
    domain: str = "point_mass_maze",
    agent: str = "fb",
    collector: CollectorConfig | None = None,
    num_transitions: int = 200_000,
    seed: int = 0,
    overrides: list[str] | None = None,
    episodes: int = 10,
    progress: bool = True,
) -> Evaluation:
    """Collect (or reuse ``OUT/data``), pretrain with the CPU preset (or continue ``OUT/run``),
    evaluate every task and goal, write the report.

    ``collector``: how to collect (default :class:`~zsrl.collection.CollectorConfig`, the quick
    start's); ``seed`` seeds the collection and the training.
    """
    out = Path(out)
    dom = make_domain(domain)
    collector = collector or CollectorConfig()
    base, settings = split_variant(domain)
    preset = f"{agent}/{base}_cpu"
    variant = [f"domain={domain}"] if settings else []  # a partially observed variant of the preset's domain
    overrides = [*variant, f"train.seed={seed}", f"train.progress={str(progress).lower()}", *(overrides or [])]
    cfg = load_run_config(preset, overrides)  # a bad override fails before any work
    path, run = out / "data", out / "run"
    if path.exists():
        print(f"[1/3] reusing the dataset in {path}")
        data = OfflineDataset.load(path, domain=dom.name)
        _check_same_collection(path, data.meta, _collection(dom, collector, num_transitions, seed))
    else:
        print(f"[1/3] collecting {num_transitions:,} reward-free transitions ({collector.collector_for(dom)}) "
              f"on {domain}")
        data = collect_to_disk(dom, collector, num_transitions, path, seed=seed, progress=progress,
                               domain_spec=domain)
    if is_run_dir(run):
        _check_same_config(run, asdict(cfg))
        print(f"[2/3] continuing the run in {run} (the preset {preset})")
        resume_run(run)
    else:
        print(f"[2/3] pretraining {agent} with the preset {preset}")
        start_run(cfg, data, run)
    print(f"[3/3] prompting on every task{' and goal' if dom.goals else ''}, {episodes} episodes each")
    evaluation = evaluate_run(run, goals=["all"] if dom.goals else [], episodes=episodes, dataset=data)
    write_report(evaluation, out / "report", overwrite=True)  # the pipeline's own report of this run
    print(format_table(evaluation))
    print(f"\nreport: {out / 'report' / 'report.md'}")
    return evaluation


def _collection(domain: Domain, cfg: CollectorConfig, num_transitions: int, seed: int) -> dict[str, Any]:
    """What a dataset collected with these settings records in its ``meta.json``."""
    obs_dim, action_dim = env_dims(domain, seed)
    explorer = make_explorer(cfg, cfg.collector_for(domain), obs_dim, action_dim, num_transitions, seed)
    length = cfg.episode_length or domain.collection_episode_length or domain.episode_length
    return {"collector": explorer.name, "seed": seed, "num_transitions": num_transitions,
            "num_envs": cfg.num_envs, "episode_length": length}


def _check_same_collection(path: Path, meta: dict[str, Any], asked: dict[str, Any]) -> None:
    differ = [f"{k} {meta.get(k)!r} (asked: {v!r})" for k, v in asked.items() if meta.get(k) != v]
    if differ:
        raise UserError(
            f"{path} holds another dataset than the one asked for: {', '.join(differ)}. The pipeline "
            "reuses a dataset only if it is the same collection; choose another --out, or ask for "
            "what it holds."
        )


def _check_same_config(run: Path, asked: dict[str, Any]) -> None:
    saved = read_json_object(run / "config.json", f"run {run}")
    differ = [f"{key} {value!r} (asked: {asked_value!r})" for key, value, asked_value in config_differences(saved, asked)
              if key != "train.progress"]  # the progress bar changes nothing
    if differ:
        raise UserError(
            f"{run} holds a run with another config: {', '.join(differ[:5])}{' …' if len(differ) > 5 else ''}. "
            f"The pipeline never replaces a run; continue that one with `zsrl train --resume {run}` "
            "and evaluate it with `zsrl eval`, or choose another --out."
        )
