"""Goal sets shipped with a domain and their distance.

A domain's goals are named goal observations. Built-in MuJoCo domains other than the maze
ship five of them in ``envs/assets/goals/<domain>.json``, chosen once, reproducibly, from the
states an exploratory dataset reaches — FRE's ExORL protocol (Frans et al. 2024), where the
goals are fixed rows of the RND dataset. The file also stores ``σ``, the per-coordinate
standard deviation of that dataset's observations, which defines the distance:

    d(s, g) = sqrt( mean_{i ∈ dims} ((s_i − g_i) / σ_i)² )        (standardised RMS)

over the domain's goal coordinates ``dims`` (all of them by default). A goal counts as
reached when ``d ≤ threshold``; FRE's code uses ``‖(s − g)/σ‖₂ / D`` with ``D`` the full
width of its state (27 for walker, 18 for cheetah, counting three or one auxiliary physics
coordinates that its σ of 100 switches off), so its thresholds 0.2 (walker) and 0.08
(cheetah) are RMS thresholds of ``0.2·27/√24 = 1.10`` and ``0.08·18/√17 = 0.35`` here.

Each goal ``g`` also defines a dense task, ``dense_<g>`` (:class:`zsrl.envs.base.DenseGoalReward`).

Make a goal file for any domain from one of its datasets with ``zsrl data goals DATASET``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsrl.errors import UserError

#: where the built-in domains' goal files live
GOALS_DIR = Path(__file__).parent / "assets" / "goals"
#: σ below this (a constant coordinate in the dataset) is raised to it, so d stays finite
MIN_SCALE = 1e-3
GOALS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class GoalSet:
    """Named goal observations with the σ of the standardised distance (module docstring).

    Attributes:
        observations: goal name → observation ``(obs_dim,)`` float32.
        scale: ``σ``, ``(obs_dim,)`` float64, every entry ≥ :data:`MIN_SCALE`.
        physics: goal name → the MuJoCo state of that observation (for pictures), if known.
        source: where the goals come from (dataset, collector, seed, rows, command).
    """

    observations: dict[str, np.ndarray]
    scale: np.ndarray
    physics: dict[str, np.ndarray] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def distance(self, observation: np.ndarray, goal: np.ndarray, dims: Sequence[int] | None) -> np.ndarray:
        """Standardised RMS distance over ``dims`` (broadcast over leading dimensions)."""
        diff = (np.asarray(observation, np.float64) - np.asarray(goal, np.float64)) / self.scale
        if dims is not None:
            diff = diff[..., list(dims)]
        return np.sqrt(np.mean(diff * diff, axis=-1))

    # ---- files ---------------------------------------------------------------------------
    def to_dict(self, domain: str) -> dict[str, Any]:
        return {
            "format_version": GOALS_FORMAT_VERSION,
            "domain": domain,
            "source": self.source,
            "scale": self.scale.tolist(),
            "goals": {
                name: {"observation": obs.tolist(),
                       **({"physics": self.physics[name].tolist()} if name in self.physics else {})}
                for name, obs in self.observations.items()
            },
        }

    @classmethod
    def load(cls, path: str | Path, domain: str) -> GoalSet:
        """Read and check a goal file written by ``zsrl data goals`` (goals and σ of one width)."""
        path = Path(path)
        what = f"goal file {path}"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{what} does not exist; make it with `zsrl data goals DATASET`") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{what} is unreadable ({exc}); rebuild it with `zsrl data goals DATASET`") from None
        if raw.get("domain") != domain:
            raise UserError(f"{what} holds goals of domain {raw.get('domain')!r}, not {domain!r}")
        try:
            scale = np.asarray(raw["scale"], np.float64)
            observations = {n: np.asarray(g["observation"], np.float32) for n, g in raw["goals"].items()}
            physics = {n: np.asarray(g["physics"], np.float64) for n, g in raw["goals"].items() if "physics" in g}
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{what} is malformed ({exc!r}); rebuild it with `zsrl data goals DATASET`") from None
        bad = [n for n, o in observations.items() if o.shape != scale.shape or not np.isfinite(o).all()]
        if scale.ndim != 1 or bad or not observations or not (scale >= MIN_SCALE).all():
            raise UserError(
                f"{what} is inconsistent (goals must be finite observations as wide as σ, σ ≥ {MIN_SCALE})"
                f"{': bad goals ' + ', '.join(bad) if bad else ''}; rebuild it with `zsrl data goals DATASET`"
            )
        return cls(observations, scale, physics, dict(raw.get("source", {})))


def choose_goals(
    observations: np.ndarray,
    physics: np.ndarray | None = None,
    count: int = 5,
    source: dict[str, Any] | None = None,
    seed: int = 0,
) -> GoalSet:
    """``count`` goals from a dataset's reached states, one from each of ``count`` equal slices.

    Goal ``k`` (``goal_1`` … ``goal_<count>``) is a row drawn uniformly (generator ``seed``)
    from the ``k``-th of ``count`` equal slices of the ``N`` observations. Datasets are stored
    in collection order, so the goals sample exploration from its early to its late phase;
    drawing inside each slice (rather than taking, say, its middle row) keeps the goals from
    all landing on the same step of an episode — for fixed-length episodes an evenly spaced
    row is often an initial state. ``σ`` is the per-coordinate standard deviation of all ``N``
    observations. Deterministic: the same dataset and seed give the same goals.
    """
    observations = np.asarray(observations, np.float64)
    n = observations.shape[0]
    if n < count or count < 1:
        raise UserError(f"cannot choose {count} goals from {n} states")
    edges = [k * n // count for k in range(count + 1)]
    rng = np.random.default_rng(seed)
    rows = [int(rng.integers(edges[k], edges[k + 1])) for k in range(count)]
    names = [f"goal_{k + 1}" for k in range(count)]
    scale = np.maximum(observations.std(0), MIN_SCALE)
    return GoalSet(
        observations={name: observations[row].astype(np.float32) for name, row in zip(names, rows)},
        scale=scale,
        physics={} if physics is None else {name: np.asarray(physics[row], np.float64) for name, row in zip(names, rows)},
        source={**(source or {}), "rows": rows, "states": n, "seed": seed},
    )
