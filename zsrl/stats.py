"""Aggregate scores across tasks and seeds: mean, IQM and bootstrap confidence intervals.

Following Agarwal et al., "Deep RL at the Edge of the Statistical Precipice" (NeurIPS 2021):
the interquartile mean (IQM) averages the middle 50% of all (run, task) scores, and the
95% confidence interval comes from a stratified bootstrap — runs are resampled with
replacement *within* each task. With a single run per task the tasks themselves are
resampled instead.
"""

from __future__ import annotations

import numpy as np


def iqm(x: np.ndarray) -> float:
    """Mean of the scores between the 25th and 75th percentiles (trimmed 25% each side)."""
    flat = np.sort(np.asarray(x, dtype=np.float64).reshape(-1))
    n = flat.size
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return float(flat[lo:hi].mean()) if hi > lo else float(flat.mean())


def bootstrap_ci(scores: np.ndarray, stat, reps: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of ``stat`` over a (runs, tasks) score matrix (see the module doc)."""
    scores = np.asarray(scores, dtype=np.float64)
    runs, tasks = scores.shape
    rng = np.random.default_rng(seed)
    if runs > 1:
        idx = rng.integers(0, runs, size=(reps, runs, tasks))
        samples = np.take_along_axis(scores[None].repeat(reps, 0), idx, axis=1)
    else:
        idx = rng.integers(0, tasks, size=(reps, 1, tasks))
        samples = np.take_along_axis(scores[None].repeat(reps, 0), idx, axis=2)
    values = np.array([stat(s) for s in samples])
    return float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))


def aggregate(scores: np.ndarray, seed: int = 0) -> dict[str, object]:
    """Mean and IQM with 95% bootstrap CIs of a (runs, tasks) score matrix."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    return {
        "mean": float(scores.mean()),
        "mean_ci": bootstrap_ci(scores, np.mean, seed=seed),
        "iqm": iqm(scores),
        "iqm_ci": bootstrap_ci(scores, iqm, seed=seed),
        "runs": int(scores.shape[0]),
        "tasks": int(scores.shape[1]),
    }
