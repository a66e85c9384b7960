"""Experiment trackers beside ``metrics.csv``: TensorBoard and Weights & Biases.

``train.loggers: [tensorboard, wandb]`` sends every metric row of a run (the same as
``metrics.csv``) and its periodic evaluations to the trackers named, and ``zsrl eval`` of the
run sends its result tables and videos:

* ``tensorboard`` — an event file in ``RUN_DIR/tb`` (``pip install "zsrl[tensorboard]"``);
  scalars per metric, the result tables as text;
* ``wandb`` — a Weights & Biases run (``pip install "zsrl[wandb]"``) under ``RUN_DIR/wandb``,
  whose id is fixed by the run folder, so a resumed run and its evaluations continue it;
  ``WANDB_MODE=offline`` keeps it on disk, ``WANDB_PROJECT`` names the project (default zsrl).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from zsrl.callbacks import Callback
from zsrl.errors import UserError
from zsrl.storage import read_json_object

#: the trackers, each also the name of the extra that installs its package
TRACKERS = ("tensorboard", "wandb")


def check_trackers(names: list[str]) -> None:
    """A paragraph naming the extra to install for a tracker whose package is missing."""
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"train.loggers: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        try:
            __import__("torch.utils.tensorboard" if name == "tensorboard" else "wandb")
        except ImportError:
            raise UserError(f"train.loggers=[{name}] needs its package: pip install \"zsrl[{name}]\"") from None


class Tracker(Callback):
    """A tracker is a training callback: it logs metric rows and periodic evaluations."""

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_report(self, markdown: str, tables: dict[str, list[list[Any]]], videos: list[Path], step: int) -> None:
        """An evaluation's result tables (``name → rows``, the first row the header) and videos."""

    def close(self) -> None:
        pass

    def on_log(self, run_dir: Path, step: int, row: dict[str, float]) -> None:
        self.log({k: v for k, v in row.items() if k != "step"}, step)

    def on_evaluation(self, run_dir: Path, step: int, returns: dict[str, float]) -> None:
        self.log({f"eval/return/{task}": value for task, value in returns.items()}, step)


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_report(self, markdown: str, tables: dict[str, list[list[Any]]], videos: list[Path], step: int) -> None:
        self.writer.add_text("evaluation", markdown, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import wandb

        info = read_json_object(run_dir / "run.json", f"run {run_dir}")
        identity = f"{run_dir.resolve()}|{info.get('started')}".encode()
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "zsrl"), name=run_dir.name, dir=str(run_dir), config=config,
            id=f"zsrl-{hashlib.sha1(identity).hexdigest()[:12]}", resume="allow", reinit="create_new",
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_report(self, markdown: str, tables: dict[str, list[list[Any]]], videos: list[Path], step: int) -> None:
        report: dict[str, Any] = {f"eval/{name}": self.wandb.Table(columns=rows[0], data=rows[1:])
                                  for name, rows in tables.items() if len(rows) > 1}
        report.update({f"eval/video/{video.stem}": self.wandb.Video(str(video)) for video in videos})
        self.run.log(report, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(names: list[str], run_dir: Path, config: dict[str, Any]) -> list[Tracker]:
    """The trackers of ``train.loggers`` for the run in ``run_dir``."""
    check_trackers(names)
    return [TensorBoardTracker(run_dir) if name == "tensorboard" else WandbTracker(run_dir, config) for name in names]
