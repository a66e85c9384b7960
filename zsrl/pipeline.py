"""The whole pipeline in one call: collect → pretrain → prompt → report.

``zsrl pipeline`` (defaults: the point-mass maze, a self-collected sticky-random dataset,
FB with its CPU preset) is the project's main job; it writes::

    OUT/data/      the reward-free dataset (+ coverage.png)
    OUT/run/       the training run (config, metrics, checkpoints, model)
    OUT/report/    results.json, report.md, returns / learning-curve / trajectory pictures
"""

from __future__ import annotations

from pathlib import Path

from zsrl.collect import STICKY_DEFAULTS, collect_to_disk
from zsrl.data import OfflineDataset
from zsrl.evaluate import Evaluation, evaluate_run
from zsrl.registry import make_domain
from zsrl.report import format_table, write_report
from zsrl.train import start_run


def _sticky_settings(**given: float | None) -> dict[str, float | None]:
    return {**STICKY_DEFAULTS, **{key: value for key, value in given.items() if value is not None}}


def run_pipeline(
    out: str | Path,
    *,
    domain: str = "point_mass_maze",
    agent: str = "fb",
    collector: str = "sticky",
    hold: int | None = None,
    hold_max: int | None = None,
    rest: float | None = None,
    num_transitions: int = 200_000,
    episode_length: int | None = None,
    seed: int = 0,
    overrides: list[str] | None = None,
    episodes: int = 10,
    progress: bool = True,
) -> Evaluation:
    """Collect (or reuse ``OUT/data``), pretrain with the CPU preset, evaluate every task and goal.

    ``episode_length``: steps per collected episode (default: the domain's
    ``collection_episode_length``); ``seed`` seeds the collection and the training;
    ``hold``, ``hold_max``, ``rest``: the sticky collector's settings, each one not given taken
    from :data:`~zsrl.collect.STICKY_DEFAULTS`.
    """
    out = Path(out)
    dom = make_domain(domain)
    data = out / "data"
    if data.exists():
        print(f"[1/3] reusing the dataset in {data}")
        OfflineDataset.load(data, domain=dom.name)
    else:
        print(f"[1/3] collecting {num_transitions:,} reward-free transitions ({collector}) on {domain}")
        collect_to_disk(dom, collector, num_transitions, data, seed=seed, progress=progress,
                        **_sticky_settings(hold=hold, hold_max=hold_max, rest=rest),
                        domain_spec=domain, episode_length=episode_length)
    print(f"[2/3] pretraining {agent} with the preset {agent}/{domain}_cpu")
    run = start_run(f"{agent}/{domain}_cpu", data, out / "run",
                    [f"train.seed={seed}", f"train.progress={str(progress).lower()}", *(overrides or [])],
                    overwrite=True)
    print(f"[3/3] prompting on every task{' and goal' if dom.goals else ''}, {episodes} episodes each")
    evaluation = evaluate_run(run, goals=["all"] if dom.goals else [], episodes=episodes)
    write_report(evaluation, out / "report", overwrite=True)  # the run itself was just replaced
    print(format_table(evaluation))
    print(f"\nreport: {out / 'report' / 'report.md'}")
    return evaluation
