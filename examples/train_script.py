"""A training script on zsrl's Python API: collect → train with a callback → prompt → roll out.

    python examples/train_script.py --out runs/script            # a few minutes on a laptop CPU

Collects a reward-free point-mass-maze dataset, pretrains FB with a callback that logs and
stops once the FB loss has settled, then prompts the model two ways — with a reward function
of your own over dataset states, and with a goal state — and rolls each policy out in a plain
gymnasium loop, as you would in your own code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import zsrl
from zsrl.agents.base import Policy
from zsrl.envs import make_domain


class StopWhenSettled(zsrl.Callback):
    """Print each metric row; stop once ``loss/fb`` has moved by less than ``tolerance`` over
    the last ``window`` rows (at the earliest after ``min_steps`` updates)."""

    def __init__(self, min_steps: int, window: int = 3, tolerance: float = 0.05):
        self.min_steps, self.window, self.tolerance = min_steps, window, tolerance
        self.losses: list[float] = []

    def on_log(self, run_dir: Path, step: int, row: dict[str, float]) -> bool:
        self.losses.append(row["loss/fb"])
        print(f"step {step:>6}  loss/fb {row['loss/fb']:8.3f}  {row['updates_per_s']:6.0f} upd/s")
        recent = self.losses[-self.window:]
        settled = len(recent) == self.window and max(recent) - min(recent) < self.tolerance * abs(recent[-1])
        return step >= self.min_steps and settled


def near_left_doorway(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """A reward the agent never trained for: 1 within 5 cm of the doorway between the left rooms."""
    return (np.linalg.norm(next_obs[:, :2] - [-0.24, 0.0], axis=-1) < 0.05).astype(np.float32)


def roll_out(policy: Policy, steps: int, seed: int = 0) -> np.ndarray:
    """One episode in a plain gymnasium loop; returns the ball's positions."""
    env = make_domain("point_mass_maze").make_env(seed=seed)
    obs, _ = env.reset(seed=seed)
    policy.reset()
    path = [obs[:2]]
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(policy.act(obs))
        path.append(obs[:2])
        if terminated or truncated:
            break
    env.close()
    return np.array(path)


def main(out: str | Path, transitions: int = 200_000, steps: int = 45_000, episode_steps: int = 1000,
         extra: dict | None = None) -> dict[str, float]:
    out = Path(out)
    data = zsrl.collect("point_mass_maze", transitions=transitions, out=out / "data", progress=False)
    run = zsrl.train("fb/point_mass_maze_cpu", data, out=out / "run",
                     overrides={"train.steps": steps, "train.progress": False, **(extra or {})},
                     callbacks=[StopWhenSettled(min_steps=steps // 2)])
    print(f"trained {run.step:,} of {run.config.train.steps:,} updates")
    model = zsrl.load(out / "run")
    ends = {}
    for name, policy in (("left doorway (reward)", model.prompt(reward_fn=near_left_doorway, dataset=data)),
                         ("top-right room (goal)", model.prompt(goal=[0.15, 0.15, 0.0, 0.0]))):
        path = roll_out(policy, episode_steps)
        ends[name] = float(np.linalg.norm(path[-1] - ([-0.24, 0.0] if "doorway" in name else [0.15, 0.15])))
        print(f"{name}: ends {100 * ends[name]:.1f} cm from the target after {len(path) - 1} steps")
    return ends


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/script")
    parser.add_argument("--transitions", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=45_000)
    args = parser.parse_args()
    main(args.out, args.transitions, args.steps)
