"""zsrl's Python API: collect, train, load, prompt and evaluate from a script.

    import zsrl

    data = zsrl.collect("point_mass_maze", transitions=50_000, out="data/maze")
    run = zsrl.train("fb/point_mass_maze_cpu", data, out="runs/maze", overrides={"train.steps": 5000})
    policy = run.model.prompt(goal=[0.15, -0.15, 0.0, 0.0])       # or rewards= / reward_fn= with dataset=
    action = policy.act(observation)                              # numpy or torch, one or a batch
    report = zsrl.evaluate(run, goals=["all"])

These are the functions the ``zsrl`` command line runs; they validate their input the same way
and raise the same one-paragraph :class:`~zsrl.errors.UserError`. Training accepts callbacks
(:class:`~zsrl.callbacks.Callback`) at metric rows, evaluations and checkpoints; one that returns
True stops the run there (a user's own early stop or logger).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsrl.agents.base import Model
from zsrl.callbacks import Callback
from zsrl.checkpoint import (
    find_checkpoint,
    find_final_model,
    load_model_dir,
    load_run_model,
    read_manifest,
)
from zsrl.collection import CollectorConfig, collect_to_disk
from zsrl.config import RunConfig, run_config_from_dict
from zsrl.data import OfflineDataset
from zsrl.envs import make_domain
from zsrl.errors import UserError
from zsrl.evaluation import Evaluation, evaluate_run
from zsrl.storage import is_run_dir, read_json_object
from zsrl.training import resume_run, start_run

__all__ = ["Callback", "Run", "collect", "evaluate", "export_minari", "import_dataset", "load", "load_dataset",
           "train"]


def collect(
    domain: str, *, out: str | Path, transitions: int = 200_000, collector: str | None = None, seed: int = 0,
    overwrite: bool = False, progress: bool = True, **settings: Any,
) -> OfflineDataset:
    """Collect ``transitions`` reward-free transitions on ``domain`` into the dataset folder
    ``out`` and return the dataset. ``collector`` (default: the domain's) and ``settings``
    (``hold``, ``hold_max``, ``rest``, ``num_envs``, ``episode_length``, ``policy``, …) are
    those of :class:`~zsrl.collection.CollectorConfig`, as ``zsrl collect`` takes them."""
    try:
        cfg = CollectorConfig(collector=collector, **settings)
    except TypeError as exc:
        raise UserError(f"zsrl.collection: {exc}; the settings are those of zsrl.collection.CollectorConfig") from None
    return collect_to_disk(make_domain(domain), cfg, transitions, out, seed=seed, overwrite=overwrite,
                           progress=progress, domain_spec=domain)


def import_dataset(
    kind: str, source: str | Path, domain: str, out: str | Path, *, episodes: int | None = None,
    overwrite: bool = False,
) -> OfflineDataset:
    """Bring a dataset of the field into zsrl's format at ``out`` (:mod:`zsrl.importers`):
    ``kind="exorl"``, an ExORL episode folder of ``domain``; ``kind="minari"``, a local Minari
    dataset id (``domain`` may be ``gym:ENV_ID`` for any gymnasium env)."""
    from zsrl.importers import import_exorl, import_minari

    importers = {"exorl": import_exorl, "minari": import_minari}
    if kind not in importers:
        raise UserError(f"unknown dataset format {kind!r}; zsrl imports: {', '.join(importers)}")
    if episodes is not None and episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    return importers[kind](source, make_domain(domain), out, episodes=episodes, overwrite=overwrite,
                           domain_spec=domain)


def export_minari(dataset: OfflineDataset | str | Path, dataset_id: str) -> Any:
    """Write a zsrl dataset as the local Minari dataset ``dataset_id`` (:func:`zsrl.importers.export_minari`)."""
    from zsrl.importers import export_minari as export

    data = dataset if isinstance(dataset, OfflineDataset) else OfflineDataset.load(dataset)
    return export(data, dataset_id, make_domain(data.meta.get("domain_spec", data.domain),
                                                source=f"dataset {data.path}"))


def load_dataset(path: str | Path, device: str = "cpu") -> OfflineDataset:
    """The dataset folder ``path``, validated (shapes, dtypes, checksums, finiteness)."""
    return OfflineDataset.load(path, device=device)


@dataclass
class Run:
    """A training run's folder: its config, metrics and model; :meth:`resume` trains it on."""

    path: Path

    @property
    def config(self) -> RunConfig:
        return run_config_from_dict(read_json_object(self.path / "config.json", f"run {self.path}"),
                                    source=f"run {self.path}")

    @property
    def metrics(self) -> list[dict[str, float]]:
        """The rows of ``metrics.csv``."""
        import csv

        with (self.path / "metrics.csv").open(newline="") as f:
            return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]

    @property
    def step(self) -> int:
        """Updates behind the run's latest model (the final one, else the checkpoint)."""
        found = find_final_model(self.path) or find_checkpoint(self.path)
        return 0 if found is None else int(read_manifest(found).get("step", 0))

    @property
    def model(self) -> Model:
        """The final model, else the latest checkpoint's, on the CPU."""
        return load_run_model(self.path)

    def resume(self, steps: int | None = None, callbacks: Sequence[Callback] = ()) -> Run:
        """Continue the run from its checkpoint (to ``steps`` updates if given)."""
        resume_run(self.path, steps=steps, callbacks=callbacks)
        return self


def train(
    config: str | Path | RunConfig, dataset: str | Path | OfflineDataset, *, out: str | Path,
    overrides: Mapping[str, Any] | Sequence[str] | None = None, overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> Run:
    """Train a preset, YAML file or :class:`~zsrl.config.RunConfig` on a dataset (its folder or
    a loaded one) into the run folder ``out``. ``overrides``: ``{"agent.z_dim": 100}`` or
    ``["agent.z_dim=100"]``."""
    if isinstance(overrides, Mapping):
        overrides = [f"{key}={_yaml(value)}" for key, value in overrides.items()]
    return Run(start_run(config, dataset, out, list(overrides or []), overwrite=overwrite, callbacks=callbacks))


def _yaml(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load(path: str | Path, device: str = "cpu") -> Model:
    """The model of a run folder (final, else latest checkpoint) or of a model folder."""
    path = Path(path)
    return load_run_model(path, device=device) if is_run_dir(path) else load_model_dir(path, device=device)


def evaluate(
    run: Run | str | Path, *, tasks: Sequence[str] | None = None, reward_fns: Sequence[str] = (),
    goals: Sequence[str] = (), episodes: int = 10, seeds: Sequence[int] = (0,), reward_samples: int | None = None,
    device: str = "auto", dataset: OfflineDataset | str | Path | None = None, domain: str | None = None,
) -> Evaluation:
    """Prompt a run's model with the domain's tasks (``tasks``; None: all), reward functions
    named ``module:function`` (``reward_fns``) and goals (``["all"]``: every goal), as ``zsrl
    eval`` does, in the run's domain or another variant of it (``domain="walker+dynamics=2"``);
    :func:`zsrl.report.write_report` writes the report."""
    path = run.path if isinstance(run, Run) else Path(run)
    return evaluate_run(path, tasks=tasks, user_tasks=reward_fns, goals=goals, episodes=episodes, seeds=seeds,
                        reward_samples=reward_samples, device=device, dataset=dataset, domain=domain)
