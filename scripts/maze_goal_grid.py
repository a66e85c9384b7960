"""Benchmark: how precisely trained maze runs reach goals all over the maze.

    python scripts/maze_goal_grid.py runs/quickstart runs/other --episodes 2 --json goal_grid.json

The four goal prompts of ``zsrl eval --goals all`` are four samples of a run's quality, and
they swing from run to run. This prompts each run with ``z`` inferred from each of 24 goals,
six per room (``x ∈ {0.07, 0.15, 0.23}``, ``y ∈ {0.08, 0.22}`` m from the centre, mirrored into
every room), for ``--episodes`` episodes each from the domain's start states, and reports the
fraction of episodes that end within 3 cm of their goal (the maze's success radius), within 5
and 8 cm (in the right place but short of it), the median final distance and the 3 cm
fraction per room. A RUN is a ``zsrl train`` output directory or a ``zsrl pipeline`` one
(holding ``run/``). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from zsrl.checkpoint import load_run_model
from zsrl.envs import make_domain
from zsrl.envs.point_mass_maze import PointMassMaze
from zsrl.errors import UserError
from zsrl.evaluation import rollout
from zsrl.storage import atomic_write_json
from zsrl.utils import versions

ROOMS = {"top_left": (-1, 1), "top_right": (1, 1), "bottom_left": (-1, -1), "bottom_right": (1, -1)}
OFFSETS = [(x, y) for x in (0.07, 0.15, 0.23) for y in (0.08, 0.22)]
RADII = (PointMassMaze.goal_threshold, 0.05, 0.08)  # the success radius (3 cm), then nearer misses


def goal_grid() -> list[tuple[str, np.ndarray]]:
    """``(room, observation)`` of the 24 goals: position, zero velocity."""
    return [(room, np.array([sx * x, sy * y, 0.0, 0.0], dtype=np.float32))
            for room, (sx, sy) in ROOMS.items() for x, y in OFFSETS]


def run_dir(path: Path) -> Path:
    """``path`` itself (a ``zsrl train`` output), or the ``run/`` of a ``zsrl pipeline`` output."""
    return path / "run" if (path / "run").is_dir() else path


def final_distances(run: Path, episodes: int, seed: int, max_steps: int | None) -> dict[str, np.ndarray]:
    """Final distance (m) of every episode, ``{room: (6 · episodes,)}``."""
    domain = make_domain("point_mass_maze")
    model = load_run_model(run_dir(run), domain)
    model.eval()
    out: dict[str, list[np.ndarray]] = {room: [] for room in ROOMS}
    for room, goal in goal_grid():
        z = model.infer_z_from_goal(torch.as_tensor(goal))
        traj = rollout(model, domain, z, episodes, seed=seed, goal=goal, max_steps=max_steps)
        out[room].append(domain.goal_distance(traj.next_observation[-1], goal))
    return {room: np.concatenate(d) for room, d in out.items()}


def summarise(dist: dict[str, np.ndarray]) -> dict:
    every = np.concatenate(list(dist.values()))
    row = {f"within_{round(r * 100)}cm": float(np.mean(every <= r)) for r in RADII}
    row["median_distance"] = float(np.median(every))
    row["within_3cm_per_room"] = {room: float(np.mean(d <= RADII[0])) for room, d in dist.items()}
    row["final_distances"] = {room: d.round(4).tolist() for room, d in dist.items()}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--episodes", type=int, default=2, help="episodes per goal (default 2)")
    p.add_argument("--seed", type=int, default=11, help="seed of the start states (default 11)")
    p.add_argument("--max-steps", type=int, default=None, help="episode length (default: the domain's)")
    p.add_argument("--json", type=Path, default=Path("goal_grid.json"))
    args = p.parse_args(argv)
    rows = []
    rooms = "/".join(ROOMS)
    print(f"{'run':<40} {'≤3cm':>6} {'≤5cm':>6} {'≤8cm':>6} {'median':>8}  ≤3cm per room ({rooms})")
    for run in args.runs:
        try:
            row = {"run": str(run), **summarise(final_distances(run, args.episodes, args.seed, args.max_steps))}
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        rows.append(row)
        per_room = " / ".join(f"{v:.2f}" for v in row["within_3cm_per_room"].values())
        print(f"{run!s:<40} {row['within_3cm']:>6.2f} {row['within_5cm']:>6.2f} {row['within_8cm']:>6.2f} "
              f"{row['median_distance']:>8.3f}  {per_room}", flush=True)
    atomic_write_json(args.json, {"episodes_per_goal": args.episodes, "seed": args.seed, "goals": len(goal_grid()),
                                  "results": rows, "versions": versions()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
