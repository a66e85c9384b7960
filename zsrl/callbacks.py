"""Hooks into a training run, for the user's own logger or early stop, and for trackers."""

from __future__ import annotations

from pathlib import Path


class Callback:
    """Hooks into a training run (``zsrl.train(..., callbacks=[...])``; override what you
    need). A hook that returns True stops training there: a checkpoint and the final model of
    that step are written, and the run can be trained on later with ``--resume``."""

    def on_log(self, run_dir: Path, step: int, row: dict[str, float]) -> bool | None:
        """A row of ``metrics.csv`` was written (every ``train.log_every`` updates)."""

    def on_evaluation(self, run_dir: Path, step: int, returns: dict[str, float]) -> bool | None:
        """A periodic zero-shot evaluation (``train.eval_every``) returned these mean returns."""

    def on_checkpoint(self, run_dir: Path, step: int) -> bool | None:
        """A checkpoint of ``step`` was written."""
