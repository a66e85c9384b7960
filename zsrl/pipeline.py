"""The whole pipeline in one call: collect → pretrain → prompt → report.

``zsrl pipeline`` (defaults: the point-mass maze, a self-collected sticky-random dataset,
FB with its CPU preset) is the project's main job; it writes::

    OUT/data/      the reward-free dataset (+ coverage.png)
    OUT/run/       the training run (config, metrics, checkpoints, model)
    OUT/report/    results.json, report.md, returns / learning-curve / trajectory pictures
"""

from __future__ import annotations

from pathlib import Path

from zsrl.collect import CollectorConfig, collect_to_disk
from zsrl.data import OfflineDataset
from zsrl.envs import make_domain
from zsrl.evaluate import Evaluation, evaluate_run
from zsrl.report import format_table, write_report
from zsrl.train import start_run


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
    """Collect (or reuse ``OUT/data``), pretrain with the CPU preset, evaluate every task and goal.

    ``collector``: how to collect (default :class:`~zsrl.collect.CollectorConfig`, the quick
    start's); ``seed`` seeds the collection and the training.
    """
    out = Path(out)
    dom = make_domain(domain)
    collector = collector or CollectorConfig()
    path = out / "data"
    if path.exists():
        print(f"[1/3] reusing the dataset in {path}")
        data = OfflineDataset.load(path, domain=dom.name)
    else:
        print(f"[1/3] collecting {num_transitions:,} reward-free transitions ({collector.collector_for(dom)}) "
              f"on {domain}")
        data = collect_to_disk(dom, collector, num_transitions, path, seed=seed, progress=progress,
                               domain_spec=domain)
    print(f"[2/3] pretraining {agent} with the preset {agent}/{domain}_cpu")
    run = start_run(f"{agent}/{domain}_cpu", data, out / "run",
                    [f"train.seed={seed}", f"train.progress={str(progress).lower()}", *(overrides or [])],
                    overwrite=True)
    print(f"[3/3] prompting on every task{' and goal' if dom.goals else ''}, {episodes} episodes each")
    evaluation = evaluate_run(run, goals=["all"] if dom.goals else [], episodes=episodes, dataset=data)
    write_report(evaluation, out / "report", overwrite=True)  # the run itself was just replaced
    print(format_table(evaluation))
    print(f"\nreport: {out / 'report' / 'report.md'}")
    return evaluation
